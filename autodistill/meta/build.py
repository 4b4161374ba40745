"""`autodistill meta build`: the project's own meta-dataset (portfolio x datasets at one CPU preset).

Resumable and append-only: each finished run appends one record to ``<out>/<dataset>.jsonl``
(:class:`~autodistill.records.RunRecord` with ``dataset``, ``candidate``, ``target``
and ``provenance``); a run whose (dataset, candidate, seed, preset hash) is already recorded is
skipped. Runs go context-major (every seed and candidate on ``cr@n500``, then on ``cr@n2000``, then
``mrpc@n500``, ...): a fresh machine fine-tunes a teacher only for the contexts it still has runs for,
and a partial build holds whole contexts and whole datasets, which is what leave-one-dataset-out needs.
Meta-features (with the teacher's validation score and confidence) are computed once per context into
``<out>/../features/<context>.json``. A failed run is logged to ``<out>/failures.jsonl`` and retried
by the next invocation.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from filelock import FileLock, Timeout

from .. import ENGINE_VERSION
from ..config import deep_merge, without_legacy_values
from ..files import write_json_atomic
from ..records import RecordStore, RunRecord
from .features import META_FEATURES_VERSION, meta_features_for, resolve_backbone_model
from .portfolio import (CONVERGED_RULE, META_PRESET, PORTFOLIO_VERSION, STUDENT_LEARNING_RATES, STUDENT_PRESETS,
                        candidate_config, duplicate_of, record_is_current, resolve_names)

# 2 (2026-12-02): teachers and students seeded from their config alone (build 1's teachers depended on
# what the process had run before, so a resumed build could fine-tune a different teacher); a run whose
# teacher differs from the dataset's features file is refused; build 1 records do not count as done.
BUILD_VERSION = 2

# The v1 (OLD PRESET) build's datasets: >= 15 of meta_dataset/datasets, small validation sets (evaluation is part of every run's
# cost), single and pair, 2-10 classes, one regression task. Order = build order.
# (yelp_review_full_small, in build 1, left out: the longest texts, the costliest runs and teacher.)
# sst2 and mdsd_kitchen were added after the first 15 because two of those (cola, rte) turned out to have
# teachers no better than the majority class at this preset (see meta.table.uninformative_datasets).
DEFAULT_DATASETS: tuple[str, ...] = (
    "cr", "mrpc", "sst5", "rte", "tweet_eval_emotion", "stsb", "cola", "mnli", "airline_reviews",
    "yahoo_answers_small", "tweet_eval_irony", "qqp", "mr", "snli", "mdsd_books", "sst2", "mdsd_kitchen",
)

#: the v2 build's contexts and seeds (issue 16): the 4.7x smaller fresh student, where pipelines differ,
#: at two train sizes, two student seeds each (arithmetic in meta_dataset/README.md section 4)
V2_STUDENT = "fresh4x128"
V2_TRAIN_SIZES: tuple[int, ...] = (500, 2000)
V2_SEEDS: tuple[int, ...] = (42, 43)
#: the v2 build's candidates: what the pilot kept (meta_dataset/README.md section 4, "The pilot"): the two
#: references and the six candidates that differed from them and from each other beyond the seed noise
V2_PORTFOLIO: tuple[str, ...] = (
    "no_kd", "vanilla_kd", "mi_alpha_0.5_skip", "aug_neighbour_random_mixup_mi0.9",
    "dyn_select_entropy_weight_linear", "rail_c_random", "rail_l_random", "inter_pkd_last",
)
#: the v2 build's datasets, in build order (the most different kinds first, so that a partial build is
#: already diverse): single-sentence and pair tasks, 2-6 classes, one regression task. Left out of v1's
#: list: cola, rte and mrpc, whose teachers at 1,000 rows were no better than the majority class (their
#: ratios are noise, never held out); yelp_review_full_small stays out (the longest texts)
V2_DATASETS: tuple[str, ...] = (
    "cr", "sst5", "snli", "stsb", "tweet_eval_emotion", "qqp", "yahoo_answers_small", "mr", "mnli",
    "airline_reviews", "tweet_eval_irony", "qnli", "mdsd_books", "sst2", "mdsd_kitchen",
)


def default_datasets(student: str | None) -> tuple[str, ...]:
    """The v2 build's datasets for a context with a student preset, else the v1 (OLD PRESET) build's."""
    return V2_DATASETS if student else DEFAULT_DATASETS


def context_name(dataset: str, train_size: int | None = None, student: str | None = None) -> str:
    """The name of one context of the meta-dataset: a dataset, optionally at a train size and with a
    student preset (``sst2@n500@fresh4x128``); its records file, features file and claim use it."""
    return dataset + (f"@n{int(train_size)}" if train_size else "") + (f"@{student}" if student else "")


def dataset_of_context(name: str) -> str:
    """The dataset a context belongs to (all its sizes and students are held out together)."""
    return name.split("@", 1)[0]


def build_preset(preset_override: Mapping[str, Any] | None = None, train_size: int | None = None,
                 student: str | None = None) -> dict[str, Any]:
    """The preset of one context: :data:`META_PRESET`; with a ``student`` preset (a v2 context) the
    :data:`CONVERGED_RULE` and that student's learning rate; then the override and the train-size cap.
    Without a student it is the OLD PRESET of the v1 records (their hashes unchanged). A context's size
    and student come from ``train_size`` and ``student``, never from the override (ValueError): its name
    would not say what ran."""
    override = preset_override or {}
    if (train_size and "max_train_examples" in (override.get("data") or {})) or (student and "student" in override):
        raise ValueError("give a context's train size and student as train sizes / student preset "
                         "(--sizes / --student), not in the preset override")
    preset = dict(META_PRESET)
    if student:
        preset = deep_merge(preset, CONVERGED_RULE)
        preset = deep_merge(preset, {"optim": {"learning_rate": STUDENT_LEARNING_RATES[student]}})
    preset = deep_merge(preset, override)
    if train_size:
        preset = deep_merge(preset, {"data": {"max_train_examples": int(train_size)}})
    if student:
        preset = {**preset, "student": dict(STUDENT_PRESETS[student])}
    return preset


@functools.cache
def git_commit(repo: Path | None = None) -> dict[str, Any]:
    """The commit the build runs from, and whether the engine (``autodistill/``, ``pyproject.toml``) had
    uncommitted changes (recorded in every record: a v2 build runs from its own worktree at a fixed commit;
    the records, reports and logs it writes into the tree do not make it dirty)."""
    import subprocess

    repo = repo or Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--",
                                "autodistill", "pyproject.toml"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head, "dirty": dirty}


def preset_hash(preset: Mapping[str, Any]) -> str:
    """A preset's identity, the same as before settings at their legacy value were spelled out in it."""
    return hashlib.sha256(json.dumps(without_legacy_values(preset), sort_keys=True).encode()).hexdigest()[:16]


def machine_info() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": _torch_threads()}


def _torch_threads() -> int | None:
    try:
        import torch
        return int(torch.get_num_threads())
    except Exception:  # pragma: no cover
        return None


@dataclass
class DatasetContext:
    name: str
    path: str
    task: Any
    fingerprint: str
    task_type: str
    meta_features: dict[str, float]
    teacher_score: float
    teacher_confidence: float | None


@dataclass
class BuildSummary:
    ran: int = 0
    failed: int = 0
    skipped_done: int = 0
    not_applicable: int = 0
    claimed_elsewhere: int = 0  # contexts another build process was on
    seconds: float = 0.0
    run_seconds: list[float] = field(default_factory=list)


class TeacherMismatch(RuntimeError):
    """A run's teacher is not the one the dataset's records and meta-features were made with."""


def _current_records(out: Path, dataset: str) -> list[RunRecord]:
    """The dataset's records of this build version (older builds' records never count as done), without
    the records of a candidate that an engine change made compute something else since."""
    return [r for r in RecordStore(out / f"{dataset}.jsonl").read()
            if (r.provenance or {}).get("build_version") == BUILD_VERSION
            and record_is_current(r.candidate, (r.provenance or {}).get("engine_version"))]


def _done(out: Path, dataset: str) -> set[tuple[str, int, str]]:
    return {(r.candidate, r.seed, r.provenance.get("preset_hash")) for r in _current_records(out, dataset)}


def _skip_reason(candidate: str, task_type: str, preset: Mapping[str, Any]) -> str | None:
    if candidate_config(candidate, task_type, preset) is None:
        return f"not applicable to {task_type}"
    same = duplicate_of(candidate, task_type, preset)
    return f"the same config as {same} on {task_type}" if same else None


def _recorded_task_type(feat_file: Path) -> str | None:
    """The task type an earlier build wrote into the dataset's features file, if any."""
    try:
        return json.loads(feat_file.read_text(encoding="utf-8")).get("task_type")
    except (OSError, ValueError):
        return None


def _teacher_and_features(name: str, path: str, preset: Mapping[str, Any], features_dir: Path,
                          backbone_model, log: Callable[[str], None]) -> DatasetContext:
    """Load the dataset as the runs see it, fine-tune (or load) the cached teacher, compute features.

    The teacher is made here, not in the first run, so a run's wall time never includes it; a
    teacher re-fine-tuned on a new machine (the cache does not travel) must score what the features
    file says (else :class:`TeacherMismatch`), and its time is added to the file's ``teacher_refits``.
    """
    from ..data import load_task_data

    cfg = candidate_config("vanilla_kd", "classification", preset, {"train": path})
    task = load_task_data(cfg.data)
    feat_file = features_dir / f"{name}.json"
    stored = json.loads(feat_file.read_text(encoding="utf-8")) if feat_file.is_file() else {}
    current = stored.get("version") == META_FEATURES_VERSION and stored.get("dataset_fingerprint") == task.fingerprint \
        and stored.get("preset_hash") == preset_hash(preset) and stored.get("build_version") == BUILD_VERSION
    log(f"[{name}] teacher (cached after the first time) ...")
    t0 = time.perf_counter()
    tokenizer, metric, from_cache, teacher_score, confidence = _teacher(cfg, task)
    teacher_seconds = time.perf_counter() - t0
    if current:
        if abs(teacher_score - float(stored["teacher_score"])) > 1e-6:
            raise TeacherMismatch(f"{name}: the teacher fine-tuned here scores {teacher_score:.6f}, the dataset's "
                                  f"features file {float(stored['teacher_score']):.6f}; nothing is run on it")
        if not from_cache:
            refit = {"seconds": round(teacher_seconds, 2), "machine": machine_info(),
                     "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            write_json_atomic(feat_file, {**stored, "teacher_refits": [*stored.get("teacher_refits", []), refit]})
            log(f"[{name}] teacher re-fine-tuned in {teacher_seconds:.0f} s, same score {teacher_score:.4f}")
        return DatasetContext(name, path, task, task.fingerprint, task.task_type, stored["meta_features"],
                              stored["teacher_score"], stored.get("teacher_confidence"))
    t1 = time.perf_counter()
    _, feats = meta_features_for(cfg.data, backbone_model, tokenizer=tokenizer, teacher_score=teacher_score,
                                 teacher_confidence=confidence)
    t2 = time.perf_counter()
    payload = {
        "version": META_FEATURES_VERSION, "build_version": BUILD_VERSION, "dataset": name,
        "dataset_fingerprint": task.fingerprint,
        "task_type": task.task_type, "num_labels": task.num_labels, "metric": metric,
        "teacher_score": teacher_score, "teacher_confidence": feats["teacher_confidence"] if confidence is not None
        else None, "teacher_from_cache": from_cache,
        "rows": {"train": len(task.train), "validation": len(task.validation)},
        "preset": preset, "preset_hash": preset_hash(preset), "backbone": "default (MiniLM-L6, frozen)",
        "teacher_seconds": round(t1 - t0, 2), "feature_seconds": round(t2 - t1, 2),
        "machine": machine_info(), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "meta_features": feats,
    }
    write_json_atomic(feat_file, payload)
    log(f"[{name}] teacher {metric} {teacher_score:.4f} ({t1 - t0:.0f} s), meta-features {t2 - t1:.1f} s")
    return DatasetContext(name, path, task, task.fingerprint, task.task_type, feats, teacher_score,
                          payload["teacher_confidence"])


def _teacher(cfg, task) -> tuple[Any, str, bool, float, Any]:
    """The dataset's teacher (from the cache when it is there): tokenizer, metric, whether it came
    from the cache, its validation score and its validation logits (None on regression)."""
    from ..evaluation import predict_logits
    from ..metrics import compute_metric
    from ..prepare import prepare

    prepared = prepare(cfg, task=task)
    teacher, validation = prepared.teachers[0], prepared.validation
    logits = predict_logits(teacher.model, validation, cfg.optim.eval_batch_size, prepared.pad_id, prepared.device)
    score = float(compute_metric(prepared.metric, logits, validation.labels.numpy(), task.task_type))
    return (prepared.tokenizer, prepared.metric, bool(teacher.from_cache), score,
            logits if task.task_type == "classification" else None)


def _run_one(ctx: DatasetContext, candidate: str, seed: int, preset: Mapping[str, Any],
             override: Mapping[str, Any] | None, store: RecordStore) -> float:
    from ..distill import run_distillation

    preset_seeded = deep_merge(preset, {"optim": {"seed": seed}})
    cfg = candidate_config(candidate, ctx.task_type, preset_seeded, {"train": ctx.path})
    t0 = time.perf_counter()
    result = run_distillation(cfg)
    wall = time.perf_counter() - t0
    m = result.metrics
    if abs(float(m["teacher_score"]) - float(ctx.teacher_score)) > 1e-6:
        raise TeacherMismatch(f"{ctx.name}: this run's teacher scores {m['teacher_score']:.6f}, the dataset's "
                              f"features file {ctx.teacher_score:.6f}; not recorded (a teacher changed: clear "
                              f"the teacher cache or the features file and rebuild the dataset)")
    record = run_record(cfg, m, wall, meta_features=ctx.meta_features, context=ctx.name, candidate=candidate,
                        source="autodistill-meta-build", provenance={
                            "build_version": BUILD_VERSION, "portfolio_version": PORTFOLIO_VERSION,
                            "engine_version": ENGINE_VERSION, "meta_features_version": META_FEATURES_VERSION,
                            "preset": preset, "preset_hash": preset_hash(preset),
                            "preset_override": dict(override or {}), "seed": seed,
                            "regression_adapted": ctx.task_type == "regression"})
    if not store.append(record):
        raise RuntimeError(f"{ctx.name}: {candidate}'s record has the key of an existing record (same config)")
    return wall


def run_record(cfg, metrics: Mapping[str, Any], wall: float, *, meta_features: Mapping[str, Any], context: str,
               candidate: str, source: str, provenance: Mapping[str, Any]) -> RunRecord:
    """The record of one finished run of ``candidate`` on ``context`` (``metrics``: the run's), with the
    machine, wall time and git commit added to ``provenance``."""
    m = metrics
    return RunRecord.create(
        dataset_fingerprint=m["dataset_fingerprint"], meta_features=meta_features,
        config=cfg, metrics=m, teacher_score=m["teacher_score"], wall_seconds=wall,
        student_parameters=m.get("student_parameters"), status="ok", params={"candidate": candidate},
        source=source, dataset=context, candidate=candidate,
        dataset_group=dataset_of_context(context), train_size=m.get("train_examples"),
        target={"score": m["student_score"], "ratio": m.get("score_ratio"), "metric": m["metric"],
                "majority_baseline": m.get("majority_baseline")},
        provenance={**provenance, "machine": machine_info(), "wall_seconds": round(wall, 2), "candidate": candidate,
                    "git": git_commit()})


def claim_context(out: Path, name: str) -> FileLock | None:
    """This process's exclusive claim on a dataset, or None while another build process holds it:
    parallel builds (``--workers``, or two invocations) share the datasets without a fixed split."""
    lock = FileLock(str(out / f".{name}.building"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


def _log_failure(out: Path, name: str, candidate: str, seed: int, phash: str, err: Exception,
                 log: Callable[[str], None]) -> None:
    entry = {"dataset": name, "candidate": candidate, "seed": seed, "preset_hash": phash,
             "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:],
             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with (out / "failures.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
    log(f"[{name}] {candidate} FAILED: {entry['error']}")


def _seeds_or_the_presets(seeds: Sequence[int] | None, presets: Mapping[Any, Mapping[str, Any]]) -> list[int]:
    """The student seeds asked for, else the presets' own (the same in every size's preset)."""
    return list(seeds or [int(next(iter(presets.values()))["optim"]["seed"])])


def build(datasets_root: str | Path, datasets: Sequence[str] | None = None, portfolio: str | None = "all",
          out: str | Path = "meta_dataset/v2/runs", limit: int | None = None,
          preset_override: Mapping[str, Any] | None = None, seeds: Sequence[int] | None = None,
          features_dir: str | Path | None = None, backbone: Any = "default",
          log: Callable[[str], None] = print, train_sizes: Sequence[int | None] = (None,),
          student: str | None = None) -> BuildSummary:
    """Run the missing (context, candidate, seed) runs, context-major; at most ``limit`` runs.

    A context is a dataset at one of ``train_sizes`` (rows, a seeded subsample; None: the whole train)
    with the ``student`` preset (:func:`context_name`); its records carry the dataset as
    ``dataset_group``. Contexts go dataset by dataset, size by size, and every seed of a context runs
    before the next context: a session that ends mid-build leaves whole contexts, and the next (on a
    fresh machine, without the teacher cache) fine-tunes only the teacher of the context it resumes.
    A context another build process has claimed is skipped and tried again after the pass; one that
    stays claimed is left to that process."""
    started = time.perf_counter()
    root, out = Path(datasets_root), Path(out)
    features_dir = Path(features_dir) if features_dir else out.parent / "features"
    names = list(datasets or default_datasets(student))
    missing = [d for d in names if not (root / d).is_dir()]
    if missing:
        raise FileNotFoundError(f"datasets not found under {root}: {missing}")
    candidates = resolve_names(portfolio)
    presets = {size: build_preset(preset_override, size, student) for size in train_sizes}
    for preset in presets.values():
        candidate_config("vanilla_kd", "classification", preset)  # validate the override early
    seeds = _seeds_or_the_presets(seeds, presets)
    out.mkdir(parents=True, exist_ok=True)
    summary = BuildSummary()

    @functools.cache
    def backbone_model():  # loaded on the first context that needs it
        return None if backbone is None else resolve_backbone_model(backbone)

    def limit_reached() -> bool:
        return limit is not None and summary.ran + summary.failed >= limit

    def run_context(dataset: str, size: int | None) -> None:
        """Every missing (candidate, seed) of one claimed context."""
        name, preset = context_name(dataset, size, student), presets[size]
        phash = preset_hash(preset)
        done = _done(out, name)  # read under the claim: another process may have added runs
        todo = [(s, c) for s in seeds for c in candidates if (c, s, phash) not in done]
        summary.skipped_done += len(seeds) * len(candidates) - len(todo)
        known_type = _recorded_task_type(features_dir / f"{name}.json")
        if known_type:  # no teacher is fine-tuned just to skip what does not apply to the task
            applicable = [(s, c) for s, c in todo if not _skip_reason(c, known_type, preset)]
            summary.not_applicable += len(todo) - len(applicable)
            todo = applicable
        if not todo or limit_reached():
            return
        try:
            ctx = _teacher_and_features(name, str(root / dataset), preset, features_dir, backbone_model(), log)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # no teacher, no runs: logged once, retried next time
            summary.failed += 1
            _log_failure(out, name, "(teacher and meta-features)", seeds[0], phash, err, log)
            return
        for seed, candidate in todo:
            if limit_reached():
                return
            try:
                reason = _skip_reason(candidate, ctx.task_type, preset)
                if reason:
                    summary.not_applicable += 1
                    log(f"[{name}] {candidate}: skipped, {reason}")
                    continue
                log(f"[{name}] {candidate} (seed {seed}) ...")
                wall = _run_one(ctx, candidate, seed, preset, preset_override, RecordStore(out / f"{name}.jsonl"))
                summary.ran += 1
                summary.run_seconds.append(wall)
                log(f"[{name}] {candidate} done in {wall:.0f} s")
            except KeyboardInterrupt:
                raise
            except Exception as err:  # a failed run is logged and retried next time
                summary.failed += 1
                _log_failure(out, name, candidate, seed, phash, err, log)

    pending = [(d, size) for d in names for size in train_sizes]
    while pending and not limit_reached():  # passes over the contexts other processes held
        held_elsewhere = []
        for dataset, size in pending:
            if limit_reached():
                break
            claim = claim_context(out, context_name(dataset, size, student))
            if claim is None:
                held_elsewhere.append((dataset, size))
                continue
            try:
                run_context(dataset, size)
            finally:
                claim.release()
        if held_elsewhere and held_elsewhere == pending:  # none came free: theirs to finish
            summary.claimed_elsewhere += len(held_elsewhere)
            log(f"left to other build processes: {', '.join(context_name(d, n, student) for d, n in held_elsewhere)}")
            break
        pending = held_elsewhere
    summary.seconds = time.perf_counter() - started
    return summary


@dataclass
class BuildStatus:
    """Progress of a build at one preset: what is recorded, what is missing, the compute spent so far."""
    preset_hash: str                      # one per train size, comma-separated
    done: dict[str, list[str]]            # candidate -> datasets with a record
    missing: dict[str, list[str]]         # candidate -> applicable datasets without one
    run_seconds: float                    # sum of the recorded runs' wall time
    teacher_seconds: float                # teacher fine-tuning + meta-features, from features/*.json
    mean_seconds: dict[str, float]        # candidate -> mean wall time of its recorded runs
    missing_seconds: float = 0.0          # the missing runs and teachers, estimated (:func:`_missing_seconds`)

    @property
    def n_done(self) -> int:
        return sum(map(len, self.done.values()))

    @property
    def n_missing(self) -> int:
        return sum(map(len, self.missing.values()))

    def eta_seconds(self, processes: int = 1) -> float:
        """The missing work's estimated wall time, shared by ``processes`` single-threaded processes."""
        return self.missing_seconds / max(1, processes)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _size_ratio(walls: Mapping[tuple[str, Any], list[float]], source: Any, target: Any) -> float:
    """How much longer a run at size ``target`` takes than at ``source``: the mean, over the candidates
    with runs at both sizes, of their own ratio (a 2,000-row run costs ~3x a 500-row one); with no such
    candidate, the ratio of the two sizes' means over all candidates; 1 where ``target`` has no run yet."""
    paired = [_mean(walls[(c, target)]) / _mean(ws) for (c, size), ws in walls.items()
              if size == source and walls.get((c, target)) and _mean(ws)]
    if paired:
        return sum(paired) / len(paired)
    at_source = _mean([w for (_, size), ws in walls.items() if size == source for w in ws])
    at_target = _mean([w for (_, size), ws in walls.items() if size == target for w in ws])
    return at_target / at_source if at_source and at_target else 1.0


def _missing_seconds(walls: Mapping[tuple[str, Any], list[float]], missing_units: Sequence[tuple[str, Any]],
                     teacher_walls: Mapping[Any, list[float]], contexts_without_teacher: Sequence[Any]) -> float:
    """Each missing (candidate, size) run at that candidate's mean at that size; where the candidate has no
    run at that size, its mean at each other size times :func:`_size_ratio` (averaged over those sizes); a
    candidate never run at the mean of all runs at that size. Each context still without a teacher at that
    size's mean teacher time. A size nothing has run at yet is priced like the sizes that have: low."""
    overall = _mean([w for ws in walls.values() for w in ws]) or 0.0
    sizes = {size for _, size in walls}

    def estimate(candidate: str, size: Any) -> float:
        here = _mean(walls.get((candidate, size), []))
        if here is not None:
            return here
        scaled = [_mean(walls[(candidate, other)]) * _size_ratio(walls, other, size)
                  for other in sizes if walls.get((candidate, other))]
        if scaled:
            return sum(scaled) / len(scaled)
        return _mean([w for (_, sz), ws in walls.items() if sz == size for w in ws]) or overall

    teachers_overall = _mean([w for ws in teacher_walls.values() for w in ws]) or 0.0
    return (sum(estimate(c, size) for c, size in missing_units)
            + sum(_mean(teacher_walls.get(size, [])) or teachers_overall for size in contexts_without_teacher))


def _teacher_was_cached(record: RunRecord) -> bool:
    cached = (record.metrics or {}).get("teacher_from_cache", True)
    return all(cached) if isinstance(cached, list) else bool(cached)


def status(out: str | Path = "meta_dataset/v2/runs", datasets: Sequence[str] | None = None,
           portfolio: str | None = "all", preset_override: Mapping[str, Any] | None = None,
           features_dir: str | Path | None = None, train_sizes: Sequence[int | None] = (None,),
           student: str | None = None, seeds: Sequence[int] | None = None) -> BuildStatus:
    """What ``build`` would still run with these arguments, and what the recorded runs cost. A unit of
    work is a context (:func:`context_name`), written ``context#seed`` when ``seeds`` has several."""
    out = Path(out)
    features_dir = Path(features_dir) if features_dir else out.parent / "features"
    presets = {size: build_preset(preset_override, size, student) for size in train_sizes}
    seeds = _seeds_or_the_presets(seeds, presets)
    units = [(context_name(d, size, student), size, seed)
             for d in datasets or default_datasets(student) for size in train_sizes for seed in seeds]
    label = (lambda name, seed: name) if len(seeds) == 1 else (lambda name, seed: f"{name}#{seed}")
    candidates = resolve_names(portfolio)
    recorded: dict[str, dict[str, RunRecord]] = {}
    for name, size, seed in units:
        phash = preset_hash(presets[size])
        recorded[label(name, seed)] = {r.candidate: r for r in _current_records(out, name)
                                       if r.seed == seed and r.provenance.get("preset_hash") == phash}
    task_types, teacher_seconds, teacher_walls = {}, 0.0, {}
    size_of = {name: size for name, size, _ in units}
    for name in size_of:
        f = features_dir / f"{name}.json"
        stored = json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}
        if stored.get("build_version") == BUILD_VERSION:
            task_types[name] = stored.get("task_type")
            first = float(stored.get("teacher_seconds") or 0) + float(stored.get("feature_seconds") or 0)
            teacher_seconds += first + sum(float(r.get("seconds") or 0) for r in stored.get("teacher_refits", []))
            teacher_walls.setdefault(size_of[name], []).append(first)
    done, missing, mean_seconds, run_seconds = {}, {}, {}, 0.0
    walls_by_size: dict[tuple[str, Any], list[float]] = {}
    missing_units: list[tuple[str, Any]] = []
    contexts_with_work: set[str] = set()
    for c in candidates:
        done[c] = [label(n, s) for n, _, s in units if c in recorded[label(n, s)]]
        todo = [(n, size, s) for n, size, s in units if c not in recorded[label(n, s)]
                and not _skip_reason(c, task_types.get(n) or "classification", presets[size])]
        missing[c] = [label(n, s) for n, _, s in todo]
        missing_units += [(c, size) for _, size, _ in todo]
        contexts_with_work.update(n for n, _, _ in todo)
        for n, size, s in units:
            record = recorded[label(n, s)].get(c)
            if record is None:
                continue
            run_seconds += float(record.wall_seconds or 0)
            # means leave out runs that fine-tuned their teacher first (before teachers were made apart
            # from the runs, the first run on a dataset in a new session did)
            if _teacher_was_cached(record):
                walls_by_size.setdefault((c, size), []).append(float(record.wall_seconds or 0))
        plain = [w for (cand, _), ws in walls_by_size.items() if cand == c for w in ws]
        if plain:
            mean_seconds[c] = sum(plain) / len(plain)
    without_teacher = [size for name, size in size_of.items() if name in contexts_with_work and name not in task_types]
    phashes = sorted({preset_hash(p) for p in presets.values()})
    return BuildStatus(",".join(phashes), done, missing, run_seconds, teacher_seconds, mean_seconds,
                       _missing_seconds(walls_by_size, missing_units, teacher_walls, without_teacher))


__all__ = ["BUILD_VERSION", "DEFAULT_DATASETS", "V2_DATASETS", "V2_SEEDS", "V2_STUDENT", "V2_TRAIN_SIZES", "BuildStatus", "BuildSummary", "build", "status", "preset_hash",
           "machine_info"]
