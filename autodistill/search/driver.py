"""The search driver: Ray Tune + Optuna (TPE, define-by-run) + ASHA over a :class:`SearchSpace`.

The driver fine-tunes the teacher once (the on-disk teacher cache makes every trial load it) and
computes its logits once into the shared teacher-outputs cache; trials (:mod:`.trial`) only train
students. Ray runs in-process by default (loopback, no dashboard, no usage stats) or connects to a
cluster (``address``). Each finished trial appends one :class:`~autodistill.records.RunRecord` to the
meta-dataset store (driver side), with the dataset's meta-features the caller's
``SearchRequest.meta_features`` computes (the search itself knows nothing of the meta-model); the
best student is exported to ``out_dir/best`` (:mod:`.export`). An interrupted search resumes with
``Tuner.restore`` (``resume=True``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from ..callbacks import EventLogCallback
from ..config import DataConfig, PipelineConfig, deep_merge, with_pipeline
from ..data import TaskData, overlap_warning
from ..files import write_json_atomic
from ..metrics import resolve_metric
from ..prepare import prepare
from ..progress import EventLog, fmt_score
from ..records import RecordStore, RunRecord, config_hash
from ..resources import GIB, ResourceError, concurrent_trials, trial_resources
from ..shipping import SearchInputs, pack
from ..teacher.fine_tuned import FINE_TUNES
from .export import (EXPERIMENT_NAME, PROGRESS_FILE, Storage, checkpoint_uri, export_best, make_storage, publish,
                     restore_published, student_seconds_spent, write_progress)
from .space import Budget, SearchSpace, SpaceError, encode_points, load_space, load_warm_start
from .trial import METRIC, distill_trainable

log = logging.getLogger(__name__)

ANCHOR_ID = "anchor"          # the trial id of the pipeline trained to completion before the search
ENV_FORWARD = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "OMP_NUM_THREADS_PER_TRIAL")

#: ``(the search's base config, its task data, the teacher's validation score) -> the dataset's
#: meta-features``, stored in every record of the search (the interfaces pass
#: :func:`autodistill.meta.features.search_meta_features`)
MetaFeatures = Callable[[PipelineConfig, TaskData, float | None], Mapping[str, Any]]


# --------------------------------------------------------------------------- the request
@dataclass(frozen=True)
class SearchRequest:
    """What to search, with which budget, where the results go and where the trials run.

    ``data`` is a dataset path or a (partial) DataConfig; ``overrides`` is a partial PipelineConfig merged
    into the space's base (e.g. a different teacher backbone); ``warm_start`` is a YAML/JSON file or a
    list of param dicts in the space's names (entering the search as ``points_to_evaluate``), and
    ``seed_labels`` says where each came from (e.g. "recommendation #1: vanilla_kd").

    Budgets: ``trials`` counts students (the anchor included); ``time_budget`` is wall-clock seconds for
    training students (the anchor, then the search); the teacher's fine-tune is not counted - it is
    timed and reported apart (``teacher_seconds``). With ``anchor`` the first warm-start point is trained
    to completion before the search, outside ASHA, so that a student exists whatever the budget does
    to the search; the best *completed* student (anchor or trial) is exported to ``out_dir/best``.
    ``anchor_pipeline`` = (a KD pipeline, its label) anchors on that pipeline exactly, run at the
    space's budget on the user's data, even where the space cannot express it (``auto``: the top
    recommendation); the warm-start points are then all for the search. ``meta_features`` computes the
    dataset's meta-features the records carry (none without it).

    On a cluster: the trials get the dataset, the teachers and their logits through Ray's object store
    (nothing from this machine's disk), ask for ``cpus_per_trial``, ``gpus_per_trial`` (default: one
    GPU where the cluster has GPUs) and any custom ``trial_resources``; Tune writes results and
    checkpoints to ``storage_path`` (a URI all nodes reach, e.g. ``s3://bucket/searches``; default
    ``out_dir``, which serves one machine), and the best student is fetched from there.
    """

    data: str | Path | Mapping[str, Any] | DataConfig
    space: str | Path | SearchSpace | Mapping
    out_dir: str | Path
    # what is searched, and for how long
    trials: int | None = None
    time_budget: float | None = None
    overrides: Mapping[str, Any] | None = None
    warm_start: str | Path | Sequence[Mapping[str, Any]] | None = None
    seed_labels: Sequence[str] | None = None
    anchor: bool = False
    anchor_pipeline: tuple[Mapping[str, Any], str] | None = None
    seed: int | None = None
    resume: bool = False
    meta_features: MetaFeatures | None = None
    # where the results go
    records_path: str | Path | None = None
    export_best: bool = True
    storage_path: str | None = None
    # where and how the trials run
    address: str | None = None
    num_cpus: int | None = None
    max_concurrent_trials: int | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    trial_resources: Mapping[str, float] | None = None
    memory_gb_per_trial: float | None = None
    reuse_actors: bool | None = None
    max_failures: int | None = None
    # what it says
    quiet: bool = False
    verbose: bool = False


# --------------------------------------------------------------------------- driver-side bookkeeping
class Best(NamedTuple):
    """The best completed student so far: chosen by its dev score (the dev slice held out of train), shown
    with its validation score, which is never used to choose (choosing on it would inflate it)."""

    dev: float
    validation: float | None
    trial_id: str

    def __str__(self) -> str:
        return f"{self.trial_id} (dev {fmt_score(self.dev)}, validation {fmt_score(self.validation)})"


@dataclass
class SearchContext:
    """What the driver knows about the search, shared by the callback and the final reconciliation."""

    space: SearchSpace
    store: RecordStore
    dataset_fingerprint: str
    meta_features: dict[str, Any]
    teacher_score: float | None
    trials_total: int
    search_info: dict[str, Any] = field(default_factory=dict)
    progress_path: Path | None = None   # progress.json for watchers (the REST service)
    events: EventLog = field(default_factory=lambda: EventLog(quiet=True))
    seeds: list[tuple[dict[str, Any], str]] = field(default_factory=list)   # (decoded point, where it came from)
    best_before: Best | None = None   # the anchor: the student to beat
    budget_note: Callable[[float], None] | None = None  # told the first completed trial's wall time
    metric: str = "score"
    inputs: SearchInputs | None = None   # the dataset, teachers and logits the trials get through Ray
    storage: Storage | None = None
    students_started: float | None = None   # perf_counter() at which the student budget began (resumes included)
    scheduler_in_driver: bool = True   # False under Ray Client (ray://): Tune, ASHA included, runs in a remote actor

    def student_seconds(self) -> float | None:
        """Student time spent so far, before a resume included: what the time budget counts."""
        return None if self.students_started is None else time.perf_counter() - self.students_started

    def origin(self, params: Mapping[str, Any]) -> str:
        """Which warm-start seed a trial's params are (e.g. a recommendation), or 'TPE'."""
        decoded = self.space.decode(params)
        for point, label in self.seeds:
            if point and all(decoded.get(k) == v for k, v in point.items()):
                return label
        return "TPE"


_STOPPED_BY_SCHEDULER: set[str] = set()   # trial ids ASHA stopped (the scheduler runs in the driver)


class RecordingASHA(ASHAScheduler):
    """ASHA that remembers which trials it stopped, so records can tell them from interrupted ones."""

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and not result.get("final"):
            _STOPPED_BY_SCHEDULER.add(trial.trial_id)
        return decision


def _trial_status(last: Mapping[str, Any] | None, stopped_early: bool) -> str | None:
    if last and last.get("final"):
        return "completed"
    return "stopped_early" if stopped_early else None


def record_for(ctx: SearchContext, trial_id: str, params: Mapping[str, Any], last: Mapping[str, Any] | None,
               wall_seconds: float | None, iterations: int | None, stopped_early: bool
               ) -> RunRecord | None:
    last = dict(last or {})
    status = _trial_status(last, stopped_early)
    if METRIC not in last or status is None:
        return None  # never reported, or cut short by an interrupt/budget: not a finished trial
    cfg = ctx.space.to_config(params)
    if status == "completed" and last.get("metrics_json"):
        metrics = json.loads(last["metrics_json"])
        metrics.pop("history", None) if len(json.dumps(metrics.get("history", []))) > 200_000 else None
    else:
        # stopped before validation: only dev scores exist
        metrics = {"best_dev_score": last.get("best_score"), "last_dev_score": last.get(METRIC),
                   "epochs": last.get("epoch"), "steps": last.get("step")}
    metrics["evaluations_reported"] = iterations
    return RunRecord.create(
        dataset_fingerprint=last.get("dataset_fingerprint") or ctx.dataset_fingerprint,
        meta_features=ctx.meta_features, config=cfg, metrics=metrics,
        teacher_score=last.get("teacher_score", ctx.teacher_score), wall_seconds=wall_seconds,
        student_parameters=last.get("student_parameters"), status=status,
        search={**ctx.search_info, "trial_id": trial_id, "finished_at": time.time()},
        params=ctx.space.decode(params))


def _make_callback(ctx: SearchContext):
    from ray import tune

    class DriverCallback(tune.Callback):
        """Writes a record per finished trial, prints one line per trial event and keeps the live bar."""

        def __init__(self) -> None:
            self.started: dict[str, float] = {}
            self.running: set[str] = set()
            self.done = 0
            self.stopped = 0
            self.errors = 0
            self.best: Best | None = ctx.best_before
            recorded = [r for r in ctx.store.read()
                        if (r.search or {}).get("experiment") == ctx.search_info.get("experiment")
                        and (r.search or {}).get("trial_id") != ANCHOR_ID]
            self.done = sum(r.status == "completed" for r in recorded)
            self.stopped = sum(r.status == "stopped_early" for r in recorded)
            for r in recorded:
                if r.status == "completed" and r.metrics.get("best_dev_score") is not None:
                    self._consider(Best(float(r.metrics["best_dev_score"]), r.metrics.get("student_score"),
                                        r.search.get("trial_id", "?")))
            self.events = ctx.events
            self.events.open_bar(ctx.trials_total, "search")
            self.timed = False

        def __reduce__(self):  # pickled with the tuner state: keep it stateless on restore
            return (_NullCallback, ())

        def _consider(self, candidate: Best) -> None:
            if self.best is None or candidate.dev > self.best.dev:
                self.best = candidate

        def on_trial_start(self, iteration, trials, trial, **info):
            if trial.trial_id in self.started:
                self.running.add(trial.trial_id)
                self._event(trial, "restarted")
                return
            self.started[trial.trial_id] = time.time()
            self.running.add(trial.trial_id)
            params = ", ".join(f"{n.split('.')[-1]}={_short(v)}" for n, v in ctx.space.decode(trial.config or {}).items())
            self._event(trial, f"started ({ctx.origin(trial.config or {})}): {params}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if not result.get("final"):
                self._event(trial, f"reported dev {_fmt(result.get(METRIC))} at epoch {result.get('epoch', 0):.2f} "
                                   f"(step {result.get('step', '-')}, report {result.get('training_iteration', '-')})")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.running.discard(trial.trial_id)
            last = trial.last_result or {}
            wall = time.time() - self.started[trial.trial_id] if trial.trial_id in self.started else None
            status = _trial_status(last, trial.trial_id in _STOPPED_BY_SCHEDULER)
            rec = record_for(ctx, trial.trial_id, trial.config, last, wall, last.get("training_iteration"),
                             stopped_early=status == "stopped_early")
            if rec is not None:
                ctx.store.append(rec)
            took = f" in {wall:.0f} s" if wall else ""
            if status == "completed":
                self.done += 1
                finished = Best(float(last[METRIC]), last.get("validation_score"), trial.trial_id)
                self._consider(finished)
                self._event(trial, f"finished{took}: dev {_fmt(finished.dev)}, validation {_fmt(finished.validation)}")
                if not self.timed and wall and ctx.budget_note is not None:
                    self.timed = True
                    ctx.budget_note(wall)
            elif status == "stopped_early":
                self.stopped += 1
                self._event(trial, f"stopped early by ASHA{took} at dev {_fmt(last.get(METRIC))} "
                                   f"after {last.get('training_iteration', 0)} reports")
            else:
                self._event(trial, f"cut short by the budget or an interrupt{took}")

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.running.discard(trial.trial_id)
            self._event(trial, f"failed, will be retried: {_first_error_line(trial)}")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.running.discard(trial.trial_id)
            self.errors += 1
            self._event(trial, f"failed: {_first_error_line(trial)} (see {trial.local_path or 'its trial dir'})")

        def on_experiment_end(self, trials, **info):
            self.events.close_bar()

        def _event(self, trial, text: str) -> None:
            self.events.emit("search", f"trial {trial.trial_id} {text}; best so far {self.best or '-'}")
            self.events.update_bar(self.done + self.stopped + self.errors,
                                   f"{len(self.running)} running, best dev {_fmt(self.best.dev if self.best else None)}")
            self._write_progress()

        def _write_progress(self) -> None:
            if ctx.progress_path is None:
                return
            write_progress(ctx.progress_path, phase="trials", trials_total=ctx.trials_total,
                           student_seconds=ctx.student_seconds(), finished=self.done,
                           stopped_early=self.stopped, failed=self.errors, running=len(self.running),
                           best_score=self.best.validation if self.best else None,
                           best_dev_score=self.best.dev if self.best else None,
                           best_trial=self.best.trial_id if self.best else None)
            try:
                publish(ctx.storage, ctx.progress_path.parent, (PROGRESS_FILE, "records.jsonl"))
            except OSError as err:   # the storage is unreachable for a moment: the next event retries
                log.warning("publishing progress to %s failed: %s", ctx.storage.root, err)

    return DriverCallback()


def _most_common_error(errors: Sequence[str | None]) -> str:
    """'; most often: <type> (n of m trials), e.g. <one of them>', grouping errors by their exception type
    (what precedes the first ':'), since their messages differ (a step, an amount held)."""
    known = [e for e in errors if e and e != "an error"]
    if not known:
        return ""
    kinds = Counter(e.split(":", 1)[0] for e in known)
    kind, n = kinds.most_common(1)[0]   # ties: the first seen, i.e. the best-ranked trial's
    example = next(e for e in known if e.split(":", 1)[0] == kind)
    return f"; most often: {kind} ({n} of {len(errors)} trials), e.g. {example}"


def _first_error_line(trial) -> str:
    """The last line of the trial's error (the exception), if Ray kept one."""
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1][:300]
    return "an error"


class _NullCallback:
    """What a pickled DriverCallback becomes (the restored run gets a fresh one)."""

    def __getattr__(self, name):
        if name.startswith("on_") or name in ("setup", "get_state", "set_state"):
            return lambda *a, **k: None
        raise AttributeError(name)


_fmt = fmt_score


# --------------------------------------------------------------------------- results
@dataclass
class SearchResult:
    out_dir: Path
    experiment_path: Path
    records_path: Path
    trials: list[dict[str, Any]]            # leaderboard rows, best dev score first (the anchor included)
    best: dict[str, Any] | None
    best_dir: Path | None
    interrupted: bool
    wall_seconds: float
    teacher_score: float | None
    dataset_fingerprint: str
    teacher_seconds: float = 0.0
    teacher: "PreparedTeacher | None" = None
    anchor: dict[str, Any] | None = None     # the leaderboard row of the pipeline trained first, if any
    failure: str | None = None              # why no student exists, naming the option to change
    budget: dict[str, Any] = field(default_factory=dict)   # trials / time asked and used, per phase

    @property
    def best_score(self) -> float | None:
        return self.best["score"] if self.best else None


def _grid_trials(grid) -> list[Any]:
    analysis = getattr(grid, "_experiment_analysis", None)
    return list(analysis.trials) if analysis is not None else []


def _earlier_trials(storage: Storage) -> list[Any]:
    """The trials an earlier run of this search left, read from its experiment state without running any."""
    from ray import tune
    if not tune.Tuner.can_restore(storage.experiment):
        return []
    try:
        return list(tune.ExperimentAnalysis(storage.experiment).trials)
    except ValueError:   # interrupted after Tune set up the run, before its first snapshot: no trial ran
        return []


def _stopped_by_scheduler(ctx: SearchContext) -> set[str]:
    """The trials ASHA stopped: in this process (the scheduler runs in the driver), or before a resume (their
    records say so). Any other trial that ended without its final report was cut short by the time budget or
    an interrupt: Ray marks those TERMINATED too, without calling ``on_trial_complete``."""
    earlier = {(r.search or {}).get("trial_id") for r in ctx.store.read()
               if r.status == "stopped_early" and (r.search or {}).get("experiment") == ctx.search_info.get("experiment")}
    return _STOPPED_BY_SCHEDULER | earlier


def _was_stopped_early(ctx: SearchContext, trial_id: str, last: Mapping[str, Any], stopped: set[str]) -> bool:
    """Whether a TERMINATED trial without its final report was stopped by ASHA. Under Ray Client the scheduler
    runs in a remote actor, so what it stopped is not known here: there every such trial with a score counts
    as stopped early, as a budget cut cannot be told apart."""
    if trial_id in stopped:
        return True
    return not ctx.scheduler_in_driver and METRIC in last and not last.get("final")


def _leaderboard(trials: Sequence[Any], ctx: SearchContext) -> list[dict[str, Any]]:
    stopped = _stopped_by_scheduler(ctx)
    rows = []
    for t in trials:
        last = t.last_result or {}
        if t.status == "ERROR":
            status = "error"
        elif t.status == "TERMINATED" and last.get("final"):
            status = "completed"
        elif t.status == "TERMINATED" and _was_stopped_early(ctx, t.trial_id, last, stopped):
            status = "stopped_early"
        elif t.status == "TERMINATED" and METRIC not in last:
            status = "no result"
        else:
            status = "unfinished"   # cut short (time budget, interrupt) or still running: a resume continues it
        ckpt = t.checkpoint
        rows.append({
            "trial_id": t.trial_id, "status": status,
            "dev_score": last.get("best_score", last.get(METRIC)),   # what the search chooses by
            "score": last.get("validation_score") if last.get("final") else None,   # reported, never chosen by
            "reports": last.get("training_iteration"),
            "seconds": last.get("time_total_s"),
            "distill_seconds": last.get("distill_seconds"),
            "params": ctx.space.decode(t.config or {}), "origin": ctx.origin(t.config or {}),
            "checkpoint": checkpoint_uri(ckpt) if ckpt is not None and last.get("final") else None,
            "path": getattr(t, "path", None),
            **({"error": _first_error_line(t)} if status == "error" else {}),
        })
    rows.sort(key=_rank, reverse=True)
    return rows


def format_leaderboard(rows: Sequence[dict[str, Any]], limit: int = 15) -> str:
    lines = [f"{'#':>3}  {'trial':<14} {'status':<14} {'dev':>7} {'valid.':>7} {'reports':>7} {'secs':>7}  params"]
    for k, row in enumerate(rows[:limit], 1):
        params = ", ".join(f"{name.split('.')[-1] if len(name) > 30 else name}={_short(v)}"
                           for name, v in row["params"].items())
        secs = row["seconds"]
        lines.append(f"{k:>3}  {row['trial_id']:<14} {row['status']:<14} {_fmt(row.get('dev_score')):>7} "
                     f"{_fmt(row['score']):>7} "
                     f"{row['reports'] if row['reports'] is not None else '-':>7} "
                     f"{(f'{secs:.1f}' if secs is not None else '-'):>7}  {params}")
    if len(rows) > limit:
        lines.append(f"... and {len(rows) - limit} more trials")
    return "\n".join(lines)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    text = json.dumps(v, separators=(",", ":")) if not isinstance(v, str) else v
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------- preparing the teacher
@dataclass
class PreparedTeacher:
    task: Any                     # TaskData
    score: float | None           # the first teacher's validation score
    path: Path | None             # the first teacher's cache folder
    training: dict[str, Any]      # its training rule's record: steps, seconds, stop reason, dev curve
    from_cache: bool
    seconds: float                # wall time of this step (fine-tune or cache load, teacher outputs; the
                                  # driver adds the meta-features' time)
    fine_tunes: int = 0           # teachers fine-tuned by this step (0 when all came from the cache)
    inputs: SearchInputs | None = None   # what the trials get through the object store


def prepare_teacher(base: PipelineConfig, events: EventLog | None = None) -> PreparedTeacher:
    """Fine-tune (or load) the base config's teachers once, by the training rule, and cache the
    teacher's logits on the training rows (the dev slice held out): the one builder of every run."""
    started = time.perf_counter()
    fine_tunes_before = FINE_TUNES[0]
    prepared = prepare(base, events=events, teacher_logits=True)
    first = prepared.teachers[0]
    inputs = pack(base, prepared.task, prepared.tokenizer, prepared.teachers, prepared.outputs)
    return PreparedTeacher(prepared.task, first.score, first.path, first.training, first.from_cache,
                           time.perf_counter() - started, FINE_TUNES[0] - fine_tunes_before, inputs)


def release_gpu_cache() -> None:
    """Give back the GPU memory the driver's allocator keeps after the teacher and the anchor: the trials
    share that GPU (nothing where there is none)."""
    import gc

    import torch
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- the anchor
def train_anchor(ctx: SearchContext, cfg: PipelineConfig, out: Path, label: str, resume: bool = False
                 ) -> dict[str, Any]:
    """Train one pipeline (``cfg``, whole: it need not be a point of the space) to completion in this
    process, outside the scheduler's reach, export it to ``out`` and record it: the student the search
    must beat, and the one the user keeps whatever the budget does to the search. Returns its
    leaderboard row (reused as it is on resume)."""
    from ..distill import export, run_distillation

    saved = out / "anchor.json"
    decoded = ctx.space.params_from_config(cfg)   # the space's view, for the leaderboard
    tag = config_hash(cfg)
    if resume and saved.is_file():
        row = json.loads(saved.read_text(encoding="utf-8"))
        if (row.get("config_hash") == tag and row.get("dataset_fingerprint") == ctx.dataset_fingerprint
                and "dev_score" in row):
            ctx.events.emit("anchor", f"reusing the completed {label}: validation {row['score']:.4f} ({out})")
            return row
    ctx.events.emit("anchor", f"training the {label} to completion first (outside ASHA), the student to beat")
    started = time.perf_counter()
    result = run_distillation(cfg, callbacks=[EventLogCallback("anchor", ctx.metric, ctx.events)],
                              share_teacher_outputs=True)
    seconds = time.perf_counter() - started
    m = result.metrics
    if out.exists():
        shutil.rmtree(out)
    export(result, out)
    rec = RunRecord.create(dataset_fingerprint=m["dataset_fingerprint"], meta_features=ctx.meta_features,
                           config=cfg, metrics=m, teacher_score=m["teacher_score"], wall_seconds=seconds,
                           student_parameters=m["student_parameters"], status="completed",
                           search={**ctx.search_info, "trial_id": ANCHOR_ID, "origin": label,
                                   "finished_at": time.time()},
                           params=decoded)
    ctx.store.append(rec)
    row = {"trial_id": ANCHOR_ID, "status": "completed", "dev_score": float(m["best_dev_score"]),
           "score": float(m["student_score"]),
           "reports": len(m.get("history", [])), "seconds": seconds, "distill_seconds": seconds,
           "params": decoded, "checkpoint": str(out), "path": str(out), "origin": label,
           "dataset_fingerprint": m["dataset_fingerprint"], "config_hash": tag}
    write_json_atomic(saved, row, default=str, sort_keys=False)
    ctx.events.emit("anchor", f"finished in {seconds:.0f} s: validation {m['metric']} {m['student_score']:.4f} "
                              f"({100 * (m['score_ratio'] or 0):.1f} % of the teacher), exported to {out}")
    return row


def pace_note(first_seconds: float, budget: Budget, used: float, students_left: int, alone: bool = True
              ) -> str | None:
    """A warning when one student takes much longer than the time budget assumes per student.
    ``alone``: the first student had the machine to itself (the anchor); trials that share it
    (``max_concurrent_trials`` at a time, a CPU or so each) take about twice as long each."""
    if not budget.time_budget_s or students_left <= 0:
        return None
    per_student = budget.time_budget_s * budget.max_concurrent_trials / budget.trials
    ratio = first_seconds / per_student
    if ratio < 1.5:
        return None
    remaining = max(0.0, budget.time_budget_s - used)
    shared = first_seconds * (2 if alone and budget.max_concurrent_trials > 1 else 1)   # one trial beside others
    fit = int(remaining / shared * budget.max_concurrent_trials)
    need = shared * budget.trials / budget.max_concurrent_trials
    return (f"this machine is slower than the budget assumes: the first student took {first_seconds:.0f} s, "
            f"{ratio:.1f}x the {per_student:.0f} s per student that --time-budget {budget.time_budget_s:.0f} s for "
            f"--trials {budget.trials} ({budget.max_concurrent_trials} at a time) allows; at this pace about "
            f"{fit} of the {students_left} other students fit. For all of them give --time-budget "
            f"{need:.0f} or fewer --trials")


# --------------------------------------------------------------------------- ray
def _runtime_env() -> dict[str, Any]:
    # no AUTODISTILL_CACHE: a trial gets its inputs through the object store, and any cache it keeps
    # (e.g. hidden features an objective needs) is its own node's
    env = {"AUTODISTILL_SHARE_TEACHER_OUTPUTS": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1"}
    for name in ENV_FORWARD:
        if os.environ.get(name):
            env[name] = os.environ[name]
    return {"env_vars": env}


def _ray_client_address(address: str | None) -> str | None:
    """The ray:// address the search will connect through (Ray Client), if any: ``address``, or RAY_ADDRESS
    when it is unset or "auto" (as ``ray.init`` reads it)."""
    effective = os.environ.get("RAY_ADDRESS") if address in (None, "auto") else address
    return effective if (effective or "").startswith("ray://") else None


def _connected_through_ray_client() -> bool:
    import ray
    return ray.util.client.ray.is_connected()


def _init_ray(address: str | None, num_cpus: int | None, verbose: bool) -> bool:
    """Start Ray in-process (or connect to ``address``); returns whether we started/connected it here."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")       # the legacy reporter honours verbose=0
    # a snapshot after every finished trial is what makes resume lose nothing: don't warn about it
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not verbose:
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)   # our own lines report failed trials
        # in-process Ray on loopback turns token auth on by default and says so on every run
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    if ray.is_initialized():
        return False
    common = dict(runtime_env=_runtime_env(), log_to_driver=verbose, configure_logging=True,
                  logging_level=logging.INFO if verbose else logging.WARNING)
    if address:
        ray.init(address=address, **common)
    else:
        from ..device import available_cpus
        ray.init(num_cpus=num_cpus or available_cpus(), include_dashboard=False,
                 _node_ip_address="127.0.0.1", **common)
    return True


# --------------------------------------------------------------------------- the search
def run_search(request: SearchRequest, events: EventLog | None = None) -> SearchResult:
    """Run (or resume) a KD search and return its leaderboard; see :class:`SearchRequest` and the module
    docstring. ``events`` receives what the search says (a quiet or verbose log of its own by default)."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    r = request
    t_start = time.perf_counter()
    events = events or EventLog(quiet=r.quiet)
    out = Path(r.out_dir).resolve()
    client_address = _ray_client_address(r.address)
    if r.resume and client_address:
        # under Ray Client, Tune runs in a remote actor: a restored run's callbacks and budget cannot be set
        raise ResourceError(f"--resume through Ray Client ({client_address}) is not supported: "
                            "run the resume on a node of the cluster, with --address auto and RAY_ADDRESS unset")
    out.mkdir(parents=True, exist_ok=True)
    exp_path = out / EXPERIMENT_NAME
    storage = make_storage(out, r.storage_path)
    if not r.resume and (exp_path.exists() or (out / "anchor" / "anchor.json").exists()
                       or storage.remote and tune.Tuner.can_restore(storage.experiment)):
        raise FileExistsError(f"{out} holds a previous search: pass resume=True (--resume) to continue it, "
                              "or choose another output folder")

    sp = load_space(r.space)
    data_part = r.data.model_dump(mode="json", exclude_unset=True) if isinstance(r.data, DataConfig) \
        else dict(r.data) if isinstance(r.data, Mapping) else {"train": str(r.data)}
    merged = {"data": data_part}
    if r.overrides:
        merged = deep_merge(dict(r.overrides), merged)
    sp = sp.with_base(merged)
    sp = sp.with_budget(trials=r.trials, time_budget_s=r.time_budget, max_concurrent_trials=r.max_concurrent_trials,
                        cpus_per_trial=r.cpus_per_trial, gpus_per_trial=r.gpus_per_trial,
                        reuse_actors=r.reuse_actors, resources=dict(r.trial_resources) if r.trial_resources else None,
                        max_failures=r.max_failures, seed=r.seed, memory_gb_per_trial=r.memory_gb_per_trial)
    b = sp.budget
    (out / "space.yaml").write_text(_yaml_dump(sp.to_dict()), encoding="utf-8")

    points = None
    if r.warm_start is not None:
        points = load_warm_start(r.warm_start, sp) if isinstance(r.warm_start, (str, Path)) \
            else encode_points(sp, r.warm_start)
    labels = list(r.seed_labels or []) + [f"warm-start point #{k + 1}" for k in range(len(r.seed_labels or []),
                                                                                      len(points or []))]
    if r.anchor and not points and r.anchor_pipeline is None:
        raise SpaceError("an anchor needs a warm-start point (the pipeline to train first)")
    anchor = r.anchor or r.anchor_pipeline is not None

    base_cfg = sp.to_config({})
    if r.resume and r.records_path is None:
        restore_published(storage, out, "records.jsonl")   # which trials ASHA stopped, kept as they were
    spent_before = student_seconds_spent(storage, out) if r.resume else 0.0   # read before progress is rewritten
    write_progress(out / PROGRESS_FILE, phase="teacher", trials_total=b.trials, student_seconds=spent_before)
    publish(storage, out, (PROGRESS_FILE,))
    events.emit("teacher", f"fine-tuning {base_cfg.teacher.backbone} (or loading it from the cache); not "
                           "counted in the time budget")
    try:
        teacher = prepare_teacher(base_cfg, events)
    except KeyboardInterrupt:
        _save_interrupted_progress(storage, out, b, spent_before)
        raise
    release_gpu_cache()
    meta: dict[str, Any] = {}
    if r.meta_features is not None:
        # the dataset's meta-features, so that search records can join the meta-dataset as they are
        t_features = time.perf_counter()
        meta = dict(r.meta_features(base_cfg, teacher.task, teacher.score))
        teacher = dataclasses.replace(teacher, seconds=teacher.seconds + time.perf_counter() - t_features)
    events.emit("teacher", f"ready in {teacher.seconds:.0f} s{' (from the cache)' if teacher.from_cache else ''}: "
                           f"validation {fmt_score(teacher.score)}")
    if teacher.task.report.validation_in_train:
        events.emit("data", "warning: " + overlap_warning(teacher.task.report.validation_in_train,
                                                          len(teacher.task.validation)))
    store = RecordStore(r.records_path or out)
    ctx = SearchContext(sp, store, teacher.task.fingerprint, meta, teacher.score, b.trials,
                        {"experiment": str(exp_path), "space": sp.name}, out / PROGRESS_FILE, events,
                        [(sp.decode(p), label) for p, label in zip(points or [], labels)],
                        metric=resolve_metric(base_cfg.optim.metric, teacher.task.task_type),
                        inputs=teacher.inputs, storage=storage,
                        scheduler_in_driver=not client_address)
    if teacher.inputs is not None:
        events.emit("teacher", f"{teacher.fine_tunes} teacher fine-tune(s) in this run; the trials get the dataset, "
                               f"teacher(s) and logits through Ray's object store "
                               f"({teacher.inputs.nbytes() / 1e6:.1f} MB, sent once)")

    t_students = ctx.students_started = time.perf_counter() - spent_before
    if spent_before:
        events.emit("budget", f"{spent_before:.0f} s of student time were spent before the interruption"
                              + (f"; {max(b.time_budget_s - spent_before, 0):.0f} s of the time budget are left"
                                 if b.time_budget_s is not None else ""))
    anchor_row, anchor_error, interrupted = None, None, False
    if anchor:
        write_progress(out / PROGRESS_FILE, phase="anchor", trials_total=b.trials, student_seconds=spent_before)
        if r.anchor_pipeline is not None:
            anchor_cfg, anchor_label = with_pipeline(base_cfg, r.anchor_pipeline[0]), r.anchor_pipeline[1]
        else:
            anchor_cfg, anchor_label = sp.to_config(points[0]), labels[0]
            points, ctx.seeds = points[1:], ctx.seeds[1:]
        try:
            anchor_row = train_anchor(ctx, anchor_cfg, out / "anchor", anchor_label, r.resume)
            release_gpu_cache()
        except KeyboardInterrupt:   # the anchor's time was spent: a resume counts it
            _save_interrupted_progress(storage, out, b, ctx.student_seconds())
            raise
        except Exception as err:  # noqa: BLE001 - the search may still produce a student: say so, go on
            anchor_error = f"{type(err).__name__}: {err}"
            events.emit("anchor", f"FAILED: {anchor_error}")
        if anchor_row:
            ctx.best_before = Best(anchor_row["dev_score"], anchor_row["score"], ANCHOR_ID)
            note = pace_note(anchor_row["seconds"], b, time.perf_counter() - t_students, b.trials - 1)
            if note:
                events.emit("budget", note)
    search_trials = b.trials - (1 if anchor else 0)
    remaining = None if b.time_budget_s is None else b.time_budget_s - (time.perf_counter() - t_students)
    if not anchor_row:
        ctx.budget_note = lambda wall: _note_pace(events, wall, b, time.perf_counter() - t_students)

    rows: list[dict[str, Any]] = []
    owns_ray = False
    # a trial shares the machine, so it takes at least as long as the anchor did alone: less time than
    # that left cannot finish one
    too_short = remaining is not None and remaining < (anchor_row["seconds"] if anchor_row else 0) + 1
    if search_trials <= 0 or too_short:
        events.emit("search", "skipped: " + (
            "--trials leaves no trial after the anchor" if search_trials <= 0 else
            f"{max(remaining, 0):.0f} s of the time budget are left, less than one student takes "
            f"(the anchor took {anchor_row['seconds']:.0f} s)" if anchor_row else
            "no time budget left"))
        if r.resume:   # the earlier run's trials stay on the leaderboard
            rows = _reconcile(ctx, _earlier_trials(storage))
    else:
        ctx.trials_total = search_trials
        owns_ray = _init_ray(r.address, r.num_cpus, r.verbose)
        ctx.scheduler_in_driver = not _connected_through_ray_client()
        try:
            rows, interrupted = _tune(ctx, sp, storage, search_trials, remaining, points, r.resume, tune,
                                      OptunaSearch, optuna)
        finally:
            if owns_ray:
                import ray
                ray.shutdown()
    if anchor_row:
        rows = sorted([anchor_row, *rows], key=_rank, reverse=True)

    best_row = next((row for row in rows if row["status"] == "completed" and row["checkpoint"]), None)
    best_dir = export_best(best_row, out) if best_row and r.export_best else None
    student_seconds = time.perf_counter() - t_students
    result = SearchResult(out, exp_path, store.path, rows,
                          {"trial_id": best_row["trial_id"], "score": best_row["score"],
                           "dev_score": best_row["dev_score"], "params": best_row["params"],
                           "origin": best_row.get("origin")}
                          if best_row else None,
                          best_dir, interrupted, time.perf_counter() - t_start, teacher.score,
                          teacher.task.fingerprint, teacher.seconds, teacher, anchor_row,
                          budget={"trials": b.trials, "time_budget_s": b.time_budget_s,
                                  "teacher_fine_tunes": teacher.fine_tunes, "storage_path": storage.root,
                                  "student_seconds": student_seconds, "teacher_seconds": teacher.seconds,
                                  "search_trials": max(0, search_trials), "max_concurrent_trials": b.max_concurrent_trials})
    if best_row is None:
        result.failure = _why_no_student(rows, anchor_error, b, interrupted)
    write_json_atomic(out / "leaderboard.json",
                      {"interrupted": interrupted, "teacher_score": teacher.score, "best": result.best,
                       "failure": result.failure, "budget": result.budget, "trials": rows}, default=str, sort_keys=False)
    write_progress(out / PROGRESS_FILE, phase="interrupted" if interrupted else "finished", trials_total=b.trials,
                   student_seconds=student_seconds,
                   finished=sum(row["status"] == "completed" for row in rows),
                   stopped_early=sum(row["status"] == "stopped_early" for row in rows),
                   failed=sum(row["status"] == "error" for row in rows), running=0,
                   best_score=result.best_score, best_dev_score=result.best["dev_score"] if result.best else None,
                   best_trial=result.best["trial_id"] if result.best else None)
    publish(storage, out, best=True)
    return result


def _save_interrupted_progress(storage: Storage, out: Path, b: Budget, student_seconds: float | None) -> None:
    """progress.json after a Ctrl-C before the trials, with the student time spent so far (a resume counts it),
    published for a resubmitted job that reads it from the storage folder."""
    write_progress(out / PROGRESS_FILE, phase="interrupted", trials_total=b.trials, student_seconds=student_seconds)
    publish(storage, out, (PROGRESS_FILE,))


def _note_pace(events: EventLog, wall: float, b: Budget, used: float) -> None:
    note = pace_note(wall, b, used, b.trials - 1, alone=False)
    if note:
        events.emit("budget", note)


def _rank(row: Mapping[str, Any]) -> tuple[int, float]:
    """Completed trials first, then by dev score: the validation score never decides."""
    order = {"completed": 2, "stopped_early": 1}
    dev = row.get("dev_score")
    return order.get(row["status"], 0), dev if dev is not None else -math.inf


def _why_no_student(rows: Sequence[Mapping[str, Any]], anchor_error: str | None, b: Budget,
                    interrupted: bool) -> str:
    """Why no student completed, and which option to change."""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("stopped_early", "error", "no result", "unfinished")}
    seen = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items() if n) or "no trial ran"
    if anchor_error:
        return (f"no student could be trained: the first pipeline failed ({anchor_error}) and the search "
                f"produced none ({seen}). Fix the setting the error names in the search space (--space) or "
                "the config (--config), or the data (--data)")
    if counts["error"] and counts["error"] == len(rows):
        said = _most_common_error([r.get("error") for r in rows])
        return (f"no student could be trained: every trial failed ({seen}){said}; the trials' error files say why "
                "(fix the setting they name in --space or --config)")
    if interrupted:
        return f"interrupted before any student completed ({seen}): continue with --resume"
    budget = f"the time budget ({b.time_budget_s:.0f} s, --time-budget)" if b.time_budget_s else "the budget"
    return (f"no trial completed within {budget} ({seen}): raise --time-budget, lower --trials, or use "
            "`autodistill auto`, which trains the recommended pipeline to completion before searching")


def _tune(ctx: SearchContext, sp: SearchSpace, storage: Storage, trials: int,
          time_budget: float | None, points: list[dict[str, Any]] | None, resume: bool, tune, OptunaSearch, optuna
          ) -> tuple[list[dict[str, Any]], bool]:
    """The Ray Tune search proper: (leaderboard rows, interrupted)."""
    import ray

    b = sp.budget
    started = time.perf_counter()
    cluster = ray.cluster_resources()
    request = trial_resources(b.cpus_per_trial, b.gpus_per_trial, b.resources, cluster, b.memory_gb_per_trial)
    fits = concurrent_trials(request, cluster)
    asked = [f"{v / GIB:g} GiB of memory (its limit)" if k == "memory" else f"{v:g} {k}" for k, v in request.items() if v]
    ctx.events.emit("search", "each trial asks Ray for " + ", ".join(asked)
                    + f" (the cluster holds {fits} such trial{'s' if fits != 1 else ''} at a time)")
    # the dataset, the teachers and their logits go to the trials through the object store (once)
    trainable = tune.with_resources(
        tune.with_parameters(distill_trainable, space_dict=sp.to_dict(), inputs=ctx.inputs), request)
    callback = _make_callback(ctx)
    interrupted = False
    exp_uri = storage.experiment
    if resume and tune.Tuner.can_restore(exp_uri):
        tuner = _restored_tuner(tune, exp_uri, trainable, callback, time_budget, ctx.events)
        ctx.events.emit("search", f"resuming {exp_uri}")
    else:
        searcher = OptunaSearch(space=sp, metric=METRIC, mode="max", points_to_evaluate=points or None,
                                sampler=optuna.samplers.TPESampler(seed=b.seed))
        scheduler = RecordingASHA(time_attr="training_iteration", max_t=b.max_t,
                                  grace_period=b.grace_period, reduction_factor=b.reduction_factor)
        ctx.events.emit("search", f"{trials} trials, {b.max_concurrent_trials} at a time"
                        + (f", {time_budget:.0f} s left of the time budget" if time_budget is not None else ""))
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", search_alg=searcher, scheduler=scheduler,
                                        num_samples=trials, max_concurrent_trials=b.max_concurrent_trials,
                                        time_budget_s=time_budget, reuse_actors=b.reuse_actors),
            run_config=tune.RunConfig(name=EXPERIMENT_NAME, storage_path=storage.root, verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=b.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                      callbacks=[callback]))
    try:
        grid = tuner.fit()
    except KeyboardInterrupt:
        interrupted = True
        grid = tune.Tuner.restore(exp_uri, trainable).get_results() \
            if tune.Tuner.can_restore(exp_uri) else None
    finally:
        ctx.events.close_bar()
    rows = _reconcile(ctx, _grid_trials(grid)) if grid is not None else []
    finished = sum(r["status"] in ("completed", "stopped_early", "error") for r in rows)
    if finished < trials and (time_budget is None or time.perf_counter() - started < time_budget):
        interrupted = True
    return rows, interrupted


def _restored_tuner(tune, exp_uri: str, trainable, callback, time_budget: float | None, events: EventLog):
    """The interrupted run, with a fresh callback and what is left of the time budget (the restored TuneConfig
    holds the first run's whole budget). Tune offers no public way to change either on restore, so both are
    set on its TunerInternal; a Ray whose layout differs is said, not silently ignored."""
    import ray
    tuner = tune.Tuner.restore(exp_uri, trainable, resume_unfinished=True, resume_errored=False,
                               restart_errored=True)
    local = getattr(tuner, "_local_tuner", None)
    if local is None or not hasattr(local, "get_run_config"):
        raise RuntimeError(f"Ray {ray.__version__} restores a search in a way this version of autodistill cannot "
                           "continue (its callbacks cannot be set); start a new search in another --out")
    local.get_run_config().callbacks = [callback]
    tune_config = getattr(local, "_tune_config", None)
    if tune_config is not None and hasattr(tune_config, "time_budget_s"):
        tune_config.time_budget_s = time_budget
    elif time_budget is not None:
        events.emit("budget", f"Ray {ray.__version__} keeps a restored run's first time budget: this resume "
                              f"may spend it again, not only the {time_budget:.0f} s left")
    return tuner


def _reconcile(ctx: SearchContext, trials: Sequence[Any]) -> list[dict[str, Any]]:
    """Records for finished trials the callback did not write (e.g. after a crash); the leaderboard."""
    recorded = {(r.search or {}).get("trial_id") for r in ctx.store.read()}
    stopped = _stopped_by_scheduler(ctx)
    for t in trials:
        last = t.last_result or {}
        if t.status != "TERMINATED" or t.trial_id in recorded or METRIC not in last:
            continue
        rec = record_for(ctx, t.trial_id, t.config or {}, last, None, last.get("training_iteration"),
                         stopped_early=_was_stopped_early(ctx, t.trial_id, last, stopped))
        if rec is not None:
            ctx.store.append(rec)
    return _leaderboard(trials, ctx)


def _yaml_dump(data: Any) -> str:
    import yaml
    return yaml.safe_dump(data, sort_keys=False)