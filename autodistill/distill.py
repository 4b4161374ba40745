"""`autodistill distill`: run one KD pipeline end to end and export the student with its report."""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence


from . import ENGINE_VERSION
from .augmentation import AugmentationResources, build_augmentation_pipeline
from .augmented_pool import PoolBuilder
from .batching import EncodedSplit, encode_texts
from .callbacks import Callback, EventLogCallback
from .config import ConfigError, PipelineConfig, check_against_models, check_against_task, check_runnable
from .data import TaskData, overlap_warning
from .evaluation import cpu_latency_ms, evaluate
from .losses import build_intermediate, build_representation
from .metrics import majority_baseline
from .models import build_student, count_parameters, hidden_size, num_layers
from .objective import KDObjective
from .prepare import prepare_task, prepare_teachers, teacher_outputs
from .progress import EventLog
from .teacher import outputs_cache
from .teacher.fine_tuned import TeacherResult
from .teacher.outputs import estimate_cache_bytes
from .teacher.source import TeacherSource
from .trainer import TrainArgs, Trainer, set_seed

if TYPE_CHECKING:
    from .shipping import Given

log = logging.getLogger(__name__)
MAX_CACHED_FEATURE_BYTES = 2 * 1024 ** 3


@dataclass
class DistillResult:
    student: Any
    tokenizer: Any
    metrics: dict[str, Any]
    config: PipelineConfig
    task: TaskData
    teachers: list[TeacherResult] = field(default_factory=list)


def _hold_out_meta(cfg: PipelineConfig, n: int) -> tuple[list[int], list[int]]:
    """RW-KD's meta set: a seeded held-out slice of train (never the validation set)."""
    order = list(range(n))
    if cfg.weighting.strategy != "rw_kd":
        return order, []
    random.Random(cfg.optim.seed).shuffle(order)
    n_meta = max(1, int(round(cfg.weighting.meta_fraction * n)))
    return sorted(order[n_meta:]), sorted(order[:n_meta])


def _check_shared_vocab(tokenizer, teachers: list[TeacherResult]) -> None:
    size = len(tokenizer)
    for k, t in enumerate(teachers):
        if t.model.config.vocab_size < size:
            raise ConfigError(f"teachers[{k}]: vocabulary ({t.model.config.vocab_size}) differs from the "
                              f"first teacher's tokenizer ({size}); teachers must share a tokenizer")


def _teacher_sources(teachers: list[TeacherResult], train: EncodedSplit, layers: set[int], feature,
                     mode: str, share: bool, pad_id: int, device, given_outputs=None) -> list[TeacherSource]:
    """Each teacher with its outputs on ``train`` (:func:`~autodistill.prepare.teacher_outputs`: given by
    the search's driver, loaded from the shared disk cache or computed here), or none when the teacher
    runs online. Only the first teacher serves hidden features."""
    sources = []
    for k, t in enumerate(teachers):
        t_layers = layers if k == 0 else set()
        cached = None if mode != "cached" else teacher_outputs(
            t, train, pad_id=pad_id, device=device, layers=t_layers, feature=feature, share=share, given=given_outputs)
        sources.append(TeacherSource(t.model, cached, t_layers, feature))
    return sources


def run_distillation(cfg: PipelineConfig, callbacks: Sequence[Callback] = (),
                     teacher_outputs_mode: str | None = None,
                     share_teacher_outputs: bool | None = None, events: EventLog | None = None,
                     given: "Given | None" = None) -> DistillResult:
    """Teacher and student are trained by the training rule (config.TrainingRule): early stopping on
    the dev slice of train, best checkpoint restored; the student is then scored on validation.

    ``share_teacher_outputs`` (default: $AUTODISTILL_SHARE_TEACHER_OUTPUTS) keeps computed teacher
    outputs in a disk cache shared by later runs (the search's trials); ``events`` gets one line per
    evaluation of the teacher (when it is fine-tuned here) and of the student.

    ``given`` (a search trial's :class:`~autodistill.shipping.Given`, sent by the driver through Ray)
    replaces every read from disk: the loaded dataset, the tokenizer, the fine-tuned teachers and their
    cached logits; nothing is read from ``data.train``, the backbone folder or ``$AUTODISTILL_CACHE``."""
    check_runnable(cfg)
    prepared = prepare_task(cfg, given=given)
    task, tokenizer, metric, device = prepared.task, prepared.tokenizer, prepared.metric, prepared.device
    check_against_task(cfg, is_regression=task.task_type == "regression")
    pad_id, max_length, fit_rows = prepared.pad_id, prepared.max_length, prepared.fit_rows
    train_all, dev, validation = prepared.train, prepared.dev, prepared.validation
    teachers = prepare_teachers(cfg, prepared, given=given, events=events)
    _check_shared_vocab(tokenizer, teachers)
    primary = teachers[0].model
    # everything initialised at random below (a fresh student, critics, projections, RW-KD's weight net)
    # is a function of the config alone, not of what this process drew before (meta build, Ray actors)
    set_seed(cfg.optim.seed)
    student = build_student(primary, cfg.student).to(device)
    check_against_models(cfg, num_layers(primary), num_layers(student))

    train_idx, meta_idx = _hold_out_meta(cfg, len(train_all))
    train = train_all.take(train_idx)
    text_a = [task.train.text_a[fit_rows[i]] for i in train_idx]
    text_b = [task.train.text_b[fit_rows[i]] for i in train_idx] if task.train.text_b is not None else None

    inter_cfg = cfg.loss.intermediate
    intermediate = build_intermediate(inter_cfg, num_layers(student), num_layers(primary), hidden_size(student),
                                      hidden_size(primary), cfg.optim.seed)
    representation = build_representation(inter_cfg, num_layers(student), num_layers(primary), hidden_size(student),
                                          hidden_size(primary), cfg.optim.seed) \
        if cfg.dynamic.objective_adaptation else None
    layers, feature = set(), None
    for module in (intermediate, representation):  # at most one of them (the config forbids both)
        if module is not None:
            layers, feature = set(module.teacher_layers_needed()), module.teacher_feature

    mode = teacher_outputs_mode or cfg.optim.teacher_outputs
    if share_teacher_outputs is None:
        share_teacher_outputs = outputs_cache.enabled_by_env()
    if mode == "auto":
        too_big = estimate_cache_bytes(train, len(layers), hidden_size(primary), feature) > MAX_CACHED_FEATURE_BYTES
        mode = "online" if too_big else "cached"
    sources = _teacher_sources(teachers, train, layers, feature, mode, share_teacher_outputs, pad_id, device,
                               given.outputs if given is not None else None)
    base_outputs = [source.cached for source in sources]

    resources = AugmentationResources(tokenizer, primary.get_input_embeddings().weight.detach().cpu(), device)
    augmenter = build_augmentation_pipeline(cfg.augmentation, resources)
    pool_builder = PoolBuilder(original=train, text_a=text_a, text_b=text_b, augmenter=augmenter,
                               copies=cfg.augmentation.copies, reaugment_every=cfg.augmentation.reaugment_every,
                               tokenizer=tokenizer, max_length=max_length, task_type=task.task_type,
                               teachers=sources, base_outputs=base_outputs, pad_id=pad_id, device=device,
                               seed=cfg.optim.seed)
    objective = KDObjective(cfg, pool_builder=pool_builder, teachers=sources, task_type=task.task_type,
                            intermediate=intermediate, representation=representation, num_labels=task.num_labels,
                            meta_split=train_all.take(meta_idx) if meta_idx else None, pad_id=pad_id)
    o = cfg.optim
    args = TrainArgs.from_rule(o, learning_rate=o.learning_rate, epochs=o.epochs, batch_size=o.batch_size,
                               metric=metric, task_type=task.task_type, eval_batch_size=o.eval_batch_size,
                               warmup_ratio=o.warmup_ratio, weight_decay=o.weight_decay,
                               max_grad_norm=o.max_grad_norm, seed=o.seed, mixed_precision=o.mixed_precision,
                               evaluate_per=o.evaluate_per)
    if events:
        callbacks = [EventLogCallback("student", metric, events), *callbacks]
    result = Trainer(student, objective, dev, args, pad_id, device, callbacks, desc="student").train()

    student_score = evaluate(student, validation, metric, task.task_type, o.eval_batch_size, pad_id, device)
    metrics = {
        "engine_version": ENGINE_VERSION,
        "metric": metric,
        "task_type": task.task_type,
        "dataset_fingerprint": task.fingerprint,
        "train_examples": len(train), "dev_examples": len(dev), "validation_examples": len(validation),
        "validation_in_train": task.report.validation_in_train,
        "teacher_score": teachers[0].score,
        "teacher_scores": [t.score for t in teachers],
        "teacher_from_cache": [t.from_cache for t in teachers],
        "student_score": student_score,
        "majority_baseline": majority_baseline(task.train.labels, validation.labels.numpy(), metric,
                                               task.task_type),
        "score_ratio": student_score / teachers[0].score if teachers[0].score else None,
        "teacher_parameters": count_parameters(primary),
        "student_parameters": count_parameters(student),
        "teacher_outputs": mode,
        "data_report": task.report.summary(),
        "teacher_training": teachers[0].training,
        **{k: v for k, v in result.items() if k != "best_score"},
        "best_dev_score": result["best_score"],
    }
    return DistillResult(student, tokenizer, metrics, cfg, task, teachers)


def add_latency(result: DistillResult, n: int = 32) -> None:
    """CPU latency per example (batch 1) of the teacher and the student, on validation examples."""
    task, tok = result.task, result.tokenizer
    validation = encode_texts(tok, task.validation.text_a, task.validation.text_b, task.validation.labels,
                              result.config.data.max_length, task.task_type)
    pad_id = tok.pad_token_id or 0
    result.metrics["teacher_cpu_ms_per_example"] = cpu_latency_ms(result.teachers[0].model, validation, pad_id, n)
    result.metrics["student_cpu_ms_per_example"] = cpu_latency_ms(result.student, validation, pad_id, n)
    result.metrics["speedup"] = (result.metrics["teacher_cpu_ms_per_example"]
                                 / max(result.metrics["student_cpu_ms_per_example"], 1e-9))


def export(result: DistillResult, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    (out / "student").mkdir(parents=True, exist_ok=True)
    result.student.to("cpu").save_pretrained(out / "student", safe_serialization=True)
    result.tokenizer.save_pretrained(out / "student")
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2, default=float), encoding="utf-8")
    result.config.save(out / "config.yaml")
    return out


def format_curve(history: Sequence[dict[str, Any]], limit: int = 12) -> str:
    """A learning curve as ``step:score`` pairs (the last ``limit`` evaluations)."""
    rows = list(history)[-limit:]
    more = f"... ({len(history) - limit} earlier) " if len(history) > limit else ""
    return more + " ".join(f"{r['step']}:{r['score']:.3f}" for r in rows)


def format_training(t: dict[str, Any]) -> str:
    """Budget used and why training stopped: ``540 steps (6.0 epochs), 182 s, plateau; best dev 0.8712``."""
    if not t:
        return "-"
    best = f"; best dev {t['best_score']:.4f} at step {t['best_step']}" if t.get("best_score") is not None else ""
    return (f"{t['steps']} steps ({t['epochs']:.1f} epochs), {t['train_seconds']:.0f} s, "
            f"stopped: {t.get('stop_reason') or '-'}{best}")


def format_report(metrics: dict[str, Any]) -> str:
    m = metrics
    teacher_t = m.get("teacher_training") or {}
    student_t = {k: m.get(k) for k in ("steps", "epochs", "train_seconds", "stop_reason", "best_step")}
    student_t["best_score"] = m.get("best_dev_score")
    lines = [
        f"dataset       {m['train_examples']} train / {m.get('dev_examples', '-')} dev (early stopping) / "
        f"{m['validation_examples']} validation ({m['task_type']})",
        f"metric        {m['metric']} (scores below on validation)",
        f"teacher       {m['teacher_score']:.4f}  ({m['teacher_parameters'] / 1e6:.1f} M params"
        + (f", {m['teacher_cpu_ms_per_example']:.1f} ms/example on CPU" if "teacher_cpu_ms_per_example" in m else "")
        + ")",
        f"student       {m['student_score']:.4f}  ({m['student_parameters'] / 1e6:.1f} M params"
        + (f", {m['student_cpu_ms_per_example']:.1f} ms/example on CPU" if "student_cpu_ms_per_example" in m else "")
        + ")",
        f"majority      {m['majority_baseline']:.4f}",
        f"kept          {100 * (m['score_ratio'] or 0):.1f} % of the teacher's score",
        f"teacher fit   " + (format_training(teacher_t) if teacher_t else "(from the cache)"),
        f"student fit   {format_training(student_t)}, {m['train_examples_per_second']:.1f} examples/s",
    ]
    if teacher_t.get("history"):
        lines.append(f"teacher curve {format_curve(teacher_t['history'])}  (step:dev score)")
    if m.get("history"):
        lines.append(f"student curve {format_curve(m['history'])}  (step:dev score)")
    if "speedup" in m:
        lines.append(f"speed-up      {m['speedup']:.2f}x faster than the teacher per example")
    if m.get("validation_in_train"):
        lines.append(f"warning       {overlap_warning(m['validation_in_train'], m['validation_examples'])}")
    return "\n".join(lines)
