"""The search runner: Ray Tune + Optuna (TPE, define-by-run) + ASHA over a :class:`SearchSpace`.

The driver fine-tunes the teacher once (the on-disk teacher cache makes every trial load it) and
computes its logits once into the shared teacher-outputs cache; trials only train students. Ray runs
in-process by default (loopback, no dashboard, no usage stats) or connects to a cluster (``address``).
Each finished trial appends one record to the meta-dataset store (driver side); the best student is
exported to ``out_dir/best``. An interrupted search resumes with ``Tuner.restore`` (``resume=True``).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from ..config import DataConfig, PipelineConfig
from .records import RecordStore, make_record
from .space import SearchSpace, encode_points, load_space, load_warm_start

log = logging.getLogger(__name__)

METRIC = "score"
EXPERIMENT_NAME = "search"
PROGRESS_FILE = "progress.json"
ENV_FORWARD = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "OMP_NUM_THREADS_PER_TRIAL")


# --------------------------------------------------------------------------- the trial
def distill_trainable(config: dict[str, Any], space_dict: dict[str, Any] | None = None) -> None:
    """One trial: build the config from the sampled params, distil, report each evaluation to Tune,
    and finish with a report carrying the exported student as a checkpoint."""
    from ray import tune

    from ..callbacks import MetricsReporterCallback
    from ..distill import export, run_distillation

    started = time.perf_counter()
    space = SearchSpace.from_dict(space_dict, validate=False)
    cfg = space.to_config(config)

    def report(metrics: dict[str, Any]) -> None:
        name = next(k for k in metrics if k not in ("epoch", "step") and not k.startswith("best_"))
        tune.report({METRIC: float(metrics[name]), "best_score": float(metrics[f"best_{name}"]),
                     "epoch": float(metrics["epoch"]), "step": int(metrics["step"]), "final": False})

    t0 = time.perf_counter()
    result = run_distillation(cfg, callbacks=[MetricsReporterCallback(report)], share_teacher_outputs=True)
    distill_seconds = time.perf_counter() - t0
    m = result.metrics
    m["distill_seconds"] = distill_seconds
    m["trial_seconds_in_process"] = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="autodistill-trial-") as tmp:
        export(result, tmp)
        tune.report({METRIC: float(m["student_score"]), "best_score": float(m["student_score"]),
                     "final": True, "distill_seconds": distill_seconds,
                     "student_parameters": int(m["student_parameters"]),
                     "teacher_score": float(m["teacher_score"]),
                     "dataset_fingerprint": m["dataset_fingerprint"],
                     "metrics_json": json.dumps(m, default=float)},
                    checkpoint=tune.Checkpoint.from_directory(tmp))


# --------------------------------------------------------------------------- driver-side bookkeeping
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
               ) -> dict[str, Any] | None:
    last = dict(last or {})
    status = _trial_status(last, stopped_early)
    if METRIC not in last or status is None:
        return None  # never reported, or cut short by an interrupt/budget: not a finished trial
    cfg = ctx.space.to_config(params)
    if status == "completed" and last.get("metrics_json"):
        metrics = json.loads(last["metrics_json"])
        metrics.pop("history", None) if len(json.dumps(metrics.get("history", []))) > 200_000 else None
    else:
        metrics = {"student_score": last.get("best_score"), "last_score": last.get(METRIC),
                   "epochs": last.get("epoch"), "steps": last.get("step")}
    metrics["evaluations_reported"] = iterations
    return make_record(
        dataset_fingerprint=last.get("dataset_fingerprint") or ctx.dataset_fingerprint,
        meta_features=ctx.meta_features, config=cfg, metrics=metrics,
        teacher_score=last.get("teacher_score", ctx.teacher_score), wall_seconds=wall_seconds,
        student_parameters=last.get("student_parameters"), status=status,
        search={**ctx.search_info, "trial_id": trial_id, "finished_at": time.time()},
        params=ctx.space.decode(params))


def _make_callback(ctx: SearchContext, quiet: bool):
    from ray import tune

    class DriverCallback(tune.Callback):
        """Writes a record per finished trial and keeps a live progress line."""

        def __init__(self) -> None:
            self.started: dict[str, float] = {}
            self.running: set[str] = set()
            self.done = 0
            self.stopped = 0
            self.errors = 0
            self.best: tuple[float, str] | None = None
            recorded = [r for r in ctx.store.read()
                        if r.get("search", {}).get("experiment") == ctx.search_info.get("experiment")]
            self.done = sum(r.get("status") == "completed" for r in recorded)
            self.stopped = sum(r.get("status") == "stopped_early" for r in recorded)
            for r in recorded:
                s = r.get("metrics", {}).get("student_score")
                if s is not None and (self.best is None or s > self.best[0]):
                    self.best = (float(s), r["search"].get("trial_id", "?"))
            self.tty = sys.stderr.isatty() and not quiet
            self.quiet = quiet

        def __reduce__(self):  # pickled with the tuner state: keep it stateless on restore
            return (_NullCallback, ())

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started.setdefault(trial.trial_id, time.time())
            self.running.add(trial.trial_id)
            self._line()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            score = result.get(METRIC)
            if score is not None and (self.best is None or score > self.best[0]) and result.get("final"):
                self.best = (float(score), trial.trial_id)
            self._line()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.running.discard(trial.trial_id)
            last = trial.last_result or {}
            wall = time.time() - self.started[trial.trial_id] if trial.trial_id in self.started else None
            status = _trial_status(last, trial.trial_id in _STOPPED_BY_SCHEDULER)
            rec = record_for(ctx, trial.trial_id, trial.config, last, wall, last.get("training_iteration"),
                             stopped_early=status == "stopped_early")
            if rec is not None:
                ctx.store.append(rec)
            if status == "completed":
                self.done += 1
            elif status == "stopped_early":
                self.stopped += 1
            else:
                status = "cut_short"
            if not self.tty and not self.quiet:
                score = last.get(METRIC)
                print(f"[search] trial {trial.trial_id} {status.replace('_', ' ')}: "
                      f"score {_fmt(score)} after {last.get('training_iteration', 0)} reports"
                      + (f", {wall:.1f} s" if wall else "") + f"; best {_fmt(self.best[0] if self.best else None)}",
                      file=sys.stderr, flush=True)
            self._line()

        def on_trial_error(self, iteration, trials, trial, **info):
            self.running.discard(trial.trial_id)
            self.errors += 1
            if not self.quiet:
                print(f"\n[search] trial {trial.trial_id} failed (see {trial.local_path or 'its trial dir'})",
                      file=sys.stderr, flush=True)
            self._line()

        def on_experiment_end(self, trials, **info):
            if self.tty:
                print(file=sys.stderr, flush=True)

        def _line(self) -> None:
            self._write_progress()
            if not self.tty:
                return
            best = f"best {self.best[0]:.4f}" if self.best else "best -"
            text = (f"[search] {self.done + self.stopped}/{ctx.trials_total} finished "
                    f"({self.stopped} stopped early, {self.errors} failed) | {len(self.running)} running | {best}")
            print("\r" + text.ljust(100), end="", file=sys.stderr, flush=True)

        def _write_progress(self) -> None:
            if ctx.progress_path is None:
                return
            write_progress(ctx.progress_path, phase="trials", trials_total=ctx.trials_total, finished=self.done,
                           stopped_early=self.stopped, failed=self.errors, running=len(self.running),
                           best_score=self.best[0] if self.best else None,
                           best_trial=self.best[1] if self.best else None)

    return DriverCallback()


def write_progress(path: Path, **progress: Any) -> None:
    """Atomically replace ``path`` with the search's progress (read by `GET /searches/{id}`)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**progress, "updated_at": time.time()}), encoding="utf-8")
    os.replace(tmp, path)


class _NullCallback:
    """What a pickled DriverCallback becomes (the restored run gets a fresh one)."""

    def __getattr__(self, name):
        if name.startswith("on_") or name in ("setup", "get_state", "set_state"):
            return lambda *a, **k: None
        raise AttributeError(name)


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.4f}"


# --------------------------------------------------------------------------- results
@dataclass
class SearchResult:
    out_dir: Path
    experiment_path: Path
    records_path: Path
    trials: list[dict[str, Any]]            # leaderboard rows, best first
    best: dict[str, Any] | None
    best_dir: Path | None
    interrupted: bool
    wall_seconds: float
    teacher_score: float | None
    dataset_fingerprint: str
    teacher_seconds: float = 0.0

    @property
    def best_score(self) -> float | None:
        return self.best["score"] if self.best else None


def _grid_trials(grid) -> list[Any]:
    analysis = getattr(grid, "_experiment_analysis", None)
    return list(analysis.trials) if analysis is not None else []


def _leaderboard(trials: Sequence[Any], space: SearchSpace) -> list[dict[str, Any]]:
    rows = []
    for t in trials:
        last = t.last_result or {}
        if t.status == "ERROR":
            status = "error"
        elif t.status == "TERMINATED":
            status = "completed" if last.get("final") else "stopped_early" if METRIC in last else "no result"
        else:
            status = "unfinished"
        ckpt = t.checkpoint
        rows.append({
            "trial_id": t.trial_id, "status": status,
            "score": last.get("best_score", last.get(METRIC)),
            "reports": last.get("training_iteration"),
            "seconds": last.get("time_total_s"),
            "distill_seconds": last.get("distill_seconds"),
            "params": space.decode(t.config or {}),
            "checkpoint": ckpt.path if ckpt is not None and last.get("final") else None,
            "path": getattr(t, "path", None),
        })
    order = {"completed": 2, "stopped_early": 1}
    rows.sort(key=lambda row: (order.get(row["status"], 0),
                               row["score"] if row["score"] is not None else -math.inf), reverse=True)
    return rows


def format_leaderboard(rows: Sequence[dict[str, Any]], limit: int = 15) -> str:
    lines = [f"{'#':>3}  {'trial':<14} {'status':<14} {'score':>7} {'reports':>7} {'secs':>7}  params"]
    for k, row in enumerate(rows[:limit], 1):
        params = ", ".join(f"{name.split('.')[-1] if len(name) > 30 else name}={_short(v)}"
                           for name, v in row["params"].items())
        secs = row["seconds"]
        lines.append(f"{k:>3}  {row['trial_id']:<14} {row['status']:<14} {_fmt(row['score']):>7} "
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
def prepare_teacher(base: PipelineConfig) -> tuple[Any, float | None, dict[str, Any]]:
    """Fine-tune (or load) the base config's teachers once and cache the teacher's logits on train.

    Returns (task data, first teacher's score, the dataset's meta-features)."""
    from .. import teacher_outputs_cache
    from ..data import load_task_data
    from ..device import select_device
    from ..metrics import resolve_metric
    from ..models import load_tokenizer
    from ..teacher import get_teacher
    from ..training import encode_texts, split_dev

    task = load_task_data(base.data)
    device = select_device(base.optim.device)
    metric = resolve_metric(base.optim.metric, task.task_type)
    tokenizer = load_tokenizer(base.teacher.backbone)
    pad_id = tokenizer.pad_token_id or 0
    ml = base.data.max_length
    encoded = encode_texts(tokenizer, task.train.text_a, task.train.text_b, task.train.labels, ml, task.task_type)
    validation = encode_texts(tokenizer, task.validation.text_a, task.validation.text_b, task.validation.labels,
                              ml, task.task_type)
    train, dev = split_dev(encoded, base.data, task.task_type)
    score = None
    for k, tcfg in enumerate(base.teachers):
        t = get_teacher(tcfg, task.fingerprint, train, dev, validation, task.num_labels, task.task_type,
                        task.label_names, metric, ml, pad_id, device)
        teacher_outputs_cache.load_or_compute(t.model, t.path.name, train, pad_id, device)
        if k == 0:
            score = t.score
        del t
    from ..meta.features import compute_meta_features
    # the recommender's meta-features, so that search records can join the meta-dataset as they are
    return task, score, compute_meta_features(task, tokenizer, backbone=base.teacher.backbone, teacher_score=score)


# --------------------------------------------------------------------------- ray
def _runtime_env() -> dict[str, Any]:
    from ..teacher import cache_root
    env = {"AUTODISTILL_CACHE": str(Path(cache_root()).resolve()), "AUTODISTILL_SHARE_TEACHER_OUTPUTS": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1"}
    for name in ENV_FORWARD:
        if os.environ.get(name):
            env[name] = os.environ[name]
    return {"env_vars": env}


def _init_ray(address: str | None, num_cpus: int | None, verbose: bool) -> bool:
    """Start Ray in-process (or connect to ``address``); returns whether we started/connected it here."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")       # the legacy reporter honours verbose=0
    # a snapshot after every finished trial is what makes resume lose nothing: don't warn about it
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not verbose:
        logging.getLogger("ray.tune").setLevel(logging.ERROR)
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
def run_search(data: str | Path | Mapping[str, Any] | DataConfig, space: str | Path | SearchSpace | Mapping,
               out_dir: str | Path, trials: int | None = None, time_budget: float | None = None,
               address: str | None = None, warm_start: str | Path | Sequence[Mapping[str, Any]] | None = None,
               resume: bool = False, overrides: Mapping[str, Any] | None = None,
               max_concurrent_trials: int | None = None, cpus_per_trial: float | None = None,
               gpus_per_trial: float | None = None, reuse_actors: bool | None = None,
               max_failures: int | None = None, seed: int | None = None, num_cpus: int | None = None,
               records_path: str | Path | None = None, quiet: bool = False, verbose: bool = False,
               export_best: bool = True) -> SearchResult:
    """Run (or resume) a KD search and return its leaderboard; see the module docstring.

    ``data`` is a dataset path or a (partial) DataConfig; ``overrides`` is a partial PipelineConfig merged
    into the space's base (e.g. a different teacher backbone); ``warm_start`` is a YAML/JSON file or a
    list of param dicts in the space's names (entering the search as ``points_to_evaluate``).
    """
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    t_start = time.perf_counter()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    exp_path = out / EXPERIMENT_NAME

    sp = load_space(space)
    data_part = data.model_dump(mode="json", exclude_unset=True) if isinstance(data, DataConfig) \
        else dict(data) if isinstance(data, Mapping) else {"train": str(data)}
    merged = {"data": data_part}
    if overrides:
        from .space import deep_merge
        merged = deep_merge(dict(overrides), merged)
    sp = sp.with_base(merged)
    sp = sp.with_budget(trials=trials, time_budget_s=time_budget, max_concurrent_trials=max_concurrent_trials,
                        cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, reuse_actors=reuse_actors,
                        max_failures=max_failures, seed=seed)
    b = sp.budget
    (out / "space.yaml").write_text(_yaml_dump(sp.to_dict()), encoding="utf-8")

    base_cfg = sp.to_config({})
    write_progress(out / PROGRESS_FILE, phase="teacher", trials_total=b.trials)
    t_teacher = time.perf_counter()
    task, teacher_score, meta = prepare_teacher(base_cfg)
    teacher_seconds = time.perf_counter() - t_teacher
    store = RecordStore(records_path or out)
    ctx = SearchContext(sp, store, task.fingerprint, meta, teacher_score, b.trials,
                        {"experiment": str(exp_path), "space": sp.name}, out / PROGRESS_FILE)

    points = None
    if warm_start is not None:
        points = load_warm_start(warm_start, sp) if isinstance(warm_start, (str, Path)) \
            else encode_points(sp, warm_start)

    owns_ray = _init_ray(address, num_cpus, verbose)
    interrupted = False
    try:
        trainable = tune.with_resources(tune.with_parameters(distill_trainable, space_dict=sp.to_dict()),
                                        {"cpu": b.cpus_per_trial, "gpu": b.gpus_per_trial})
        callback = _make_callback(ctx, quiet)
        if resume and tune.Tuner.can_restore(str(exp_path)):
            tuner = tune.Tuner.restore(str(exp_path), trainable, resume_unfinished=True, resume_errored=False,
                                       restart_errored=True)
            tuner._local_tuner.get_run_config().callbacks = [callback]
            if not quiet:
                print(f"[search] resuming {exp_path}", file=sys.stderr, flush=True)
        else:
            if exp_path.exists() and not resume:
                raise FileExistsError(f"{exp_path} holds a previous search: pass resume=True (--resume) "
                                      "to continue it, or choose another output folder")
            searcher = OptunaSearch(space=sp, metric=METRIC, mode="max", points_to_evaluate=points or None,
                                    sampler=optuna.samplers.TPESampler(seed=b.seed))
            scheduler = RecordingASHA(time_attr="training_iteration", max_t=b.max_t,
                                      grace_period=b.grace_period, reduction_factor=b.reduction_factor)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(metric=METRIC, mode="max", search_alg=searcher, scheduler=scheduler,
                                            num_samples=b.trials, max_concurrent_trials=b.max_concurrent_trials,
                                            time_budget_s=b.time_budget_s, reuse_actors=b.reuse_actors),
                run_config=tune.RunConfig(name=EXPERIMENT_NAME, storage_path=str(out), verbose=0,
                                          failure_config=tune.FailureConfig(max_failures=b.max_failures),
                                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                          callbacks=[callback]))
        try:
            grid = tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
            grid = tune.Tuner.restore(str(exp_path), trainable).get_results() \
                if tune.Tuner.can_restore(str(exp_path)) else None
        rows = _reconcile(ctx, grid) if grid is not None else []
        finished = sum(r["status"] in ("completed", "stopped_early") for r in rows)
        elapsed = time.perf_counter() - t_start
        if finished < b.trials and (b.time_budget_s is None or elapsed < b.time_budget_s):
            interrupted = True
    finally:
        if owns_ray:
            import ray
            ray.shutdown()

    best_row = next((r for r in rows if r["status"] == "completed" and r["checkpoint"]), None)
    best_dir = None
    if best_row and export_best:
        best_dir = out / "best"
        if best_dir.exists():
            shutil.rmtree(best_dir)
        shutil.copytree(best_row["checkpoint"], best_dir)
        (best_dir / "trial.json").write_text(json.dumps(
            {k: best_row[k] for k in ("trial_id", "score", "params", "path")}, indent=2, default=str),
            encoding="utf-8")
    result = SearchResult(out, exp_path, store.path, rows,
                          {"trial_id": best_row["trial_id"], "score": best_row["score"],
                           "params": best_row["params"]} if best_row else None,
                          best_dir, interrupted, time.perf_counter() - t_start, teacher_score, task.fingerprint,
                          teacher_seconds)
    (out / "leaderboard.json").write_text(json.dumps(
        {"interrupted": interrupted, "teacher_score": teacher_score, "best": result.best,
         "trials": rows}, indent=2, default=str), encoding="utf-8")
    write_progress(out / PROGRESS_FILE, phase="interrupted" if interrupted else "finished", trials_total=b.trials,
                   finished=sum(r["status"] == "completed" for r in rows),
                   stopped_early=sum(r["status"] == "stopped_early" for r in rows),
                   failed=sum(r["status"] == "error" for r in rows), running=0,
                   best_score=result.best_score, best_trial=result.best["trial_id"] if result.best else None)
    return result


def _reconcile(ctx: SearchContext, grid) -> list[dict[str, Any]]:
    """Records for finished trials the callback did not write (e.g. after a crash); the leaderboard."""
    trials = _grid_trials(grid)
    recorded = {r.get("search", {}).get("trial_id") for r in ctx.store.read()}
    for t in trials:
        last = t.last_result or {}
        if t.status != "TERMINATED" or t.trial_id in recorded or METRIC not in last:
            continue
        rec = record_for(ctx, t.trial_id, t.config or {}, last, None, last.get("training_iteration"),
                         stopped_early=not last.get("final"))
        if rec is not None:
            ctx.store.append(rec)
    return _leaderboard(trials, ctx.space)


def _yaml_dump(data: Any) -> str:
    import yaml
    return yaml.safe_dump(data, sort_keys=False)
