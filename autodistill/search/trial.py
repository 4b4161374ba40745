"""The Ray trial of a search: one sampled point of the space, distilled and reported to Tune.

The trial reports each evaluation (``score``, the metric Tune maximises: a score on the dev slice held out
of train) and finishes with a report that carries its best dev score, its validation score apart
(``validation_score``: reported, never used to choose) and the exported student as a checkpoint. So TPE,
ASHA and the choice of the best student all compare dev scores, and the validation score of the chosen
student is not inflated by the choice. It reads nothing from the driver's disk when the driver ships its
inputs (dataset, teachers, logits) through Ray's object store.
"""
from __future__ import annotations

import json
import tempfile
import time
from typing import Any

from ..callbacks import MemoryLimitCallback, MetricsReporterCallback
from ..resources import reset_peak_rss
from ..shipping import SearchInputs, materialize
from .space import SearchSpace

METRIC = "score"


def distill_trainable(config: dict[str, Any], space_dict: dict[str, Any] | None = None,
                      inputs: "SearchInputs | None" = None) -> None:
    """One trial: build the config from the sampled params, distil, report each evaluation to Tune,
    and finish with a report carrying the exported student as a checkpoint (uploaded by Tune to the
    run's storage_path). ``inputs`` (from the object store) holds the dataset, the teachers and their
    logits: with it the trial reads nothing from the driver's disk."""
    import ray
    from ray import tune

    from ..distill import export, run_distillation
    from ..teacher.cache import cache_root
    from ..teacher.fine_tuned import FINE_TUNES

    started = time.perf_counter()
    reset_peak_rss()   # the memory limit judges this trial's own peak, not an earlier one's in a reused actor
    fine_tunes_before = FINE_TUNES[0]
    given = materialize(inputs) if inputs is not None else None
    space = SearchSpace.from_dict(space_dict, validate=False)
    cfg = space.to_config(config)

    def report(metrics: dict[str, Any]) -> None:
        name = next(k for k in metrics if k not in ("epoch", "step") and not k.startswith("best_"))
        tune.report({METRIC: float(metrics[name]), "best_score": float(metrics[f"best_{name}"]),
                     "epoch": float(metrics["epoch"]), "step": int(metrics["step"]), "final": False})

    t0, cpu0 = time.perf_counter(), time.process_time()
    callbacks: list = [MetricsReporterCallback(report)]
    if space.budget.memory_gb_per_trial:
        callbacks.append(MemoryLimitCallback(space.budget.memory_gb_per_trial))
    result = run_distillation(cfg, callbacks=callbacks, share_teacher_outputs=True, given=given)
    distill_seconds = time.perf_counter() - t0
    m = result.metrics
    m["distill_cpu_seconds"] = time.process_time() - cpu0     # CPU time this trial's process got
    m["teacher_fine_tunes_in_trial"] = FINE_TUNES[0] - fine_tunes_before
    m["inputs_from_object_store"] = given is not None
    m["node_id"] = ray.get_runtime_context().get_node_id()
    m["trial_cache_root"] = str(cache_root())     # the node-local cache this trial could use
    m["device"] = str(next(result.student.parameters()).device)
    m["distill_seconds"] = distill_seconds
    m["trial_seconds_in_process"] = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="autodistill-trial-") as tmp:
        export(result, tmp)
        tune.report({METRIC: float(m["best_dev_score"]), "best_score": float(m["best_dev_score"]),
                     "validation_score": float(m["student_score"]), "final": True, "distill_seconds": distill_seconds,
                     "student_parameters": int(m["student_parameters"]),
                     "teacher_score": float(m["teacher_score"]),
                     "dataset_fingerprint": m["dataset_fingerprint"],
                     "metrics_json": json.dumps(m, default=float)},
                    checkpoint=tune.Checkpoint.from_directory(tmp))

