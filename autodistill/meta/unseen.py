"""The recommender on datasets the meta-dataset never saw (issue 16's final test).

For each dataset, at the budget a user gets by default (``PipelineConfig()`` on all of the dataset's rows:
what ``autodistill recommend`` hands over as ``top_config``; a given ``budget`` config replaces it), three
arms are trained at the same student seeds:

- ``recommended``: the product's first pick (:func:`~autodistill.meta.warm_start.choose_warm_start`: the
  meta-model's top 1, or the portfolio's first member when the model's stored decision says portfolio);
- ``single_best``: the fair single best of the records (:func:`~autodistill.meta.warm_start.candidate_effects`
  on the table the product's model is fitted on);
- ``vanilla_kd``.

Arms with the same pipeline (as run on the dataset's task) share their runs. What every dataset is scored
with (model, single best, seeds, budget) is fixed by the first invocation (``<out>/manifest.json``), the
arms of a dataset the first time it is planned (``<out>/plans/<dataset>.json``); runs go to
``<out>/runs/<dataset>.jsonl`` and a rerun only adds what is missing. :func:`write_unseen_report` pairs the
arms per dataset (mean ratio over the seeds) and over datasets (wins / ties / losses, Wilcoxon p, bootstrap CI
of the mean difference), and lists the datasets it cannot pair yet, with why.
"""
from __future__ import annotations

import hashlib
import json
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..config import PipelineConfig, pipeline_only, with_legacy_values, with_pipeline
from ..progress import EventLog
from ..records import RecordStore
from ..files import write_json_atomic
from .build import TeacherMismatch, claim_context, git_commit, run_record
from .evaluate import markdown_table, paired_comparison
from .fitting import meta_model_table
from .portfolio import RENAMED_CANDIDATES, candidate_config
from .recommender import task_type_of
from .table import drop_uninformative
from .warm_start import META_MODEL, PORTFOLIO, candidate_effects, choose_warm_start, read_decision

ARMS = ("recommended", "single_best", "vanilla_kd")
SOURCE = "autodistill-meta-unseen"
MANIFEST = "manifest.json"


@dataclass
class Arm:
    name: str
    candidate: str
    pipeline: dict[str, Any] | None   # None: the candidate does not apply to the dataset's task


def fair_single_best(records: str | Path | Sequence[str | Path]) -> str:
    """The fair single best of the records, on the table the product's meta-model is fitted on (datasets
    whose teacher is no better than the majority class left out)."""
    table, _ = drop_uninformative(meta_model_table(records))
    name = str(candidate_effects(table).idxmax())
    return RENAMED_CANDIDATES.get(name, name)


def _portfolio_pipeline(name: str, task_type: str) -> dict[str, Any] | None:
    cfg = candidate_config(name, task_type)
    return None if cfg is None else pipeline_only(cfg)


def plan_arms(budget: PipelineConfig, model_dir: str | Path, single_best: str) -> dict[str, Any]:
    """The arms of one dataset (``budget.data`` names it), from its meta-features on the rows trained on;
    every arm's pipeline as it runs on the dataset's task."""
    from .recommend import recommend_for

    rec, model_top, feats = recommend_for(budget.data, model_dir, top_k=1, backbone=budget.teacher.backbone,
                                          budget=budget)
    start = choose_warm_start(rec, model_dir, feats, 1, budget=budget)
    top = start.recommendations[0]
    task_type = task_type_of(feats)
    arms = [Arm("recommended", top.candidate, top.config),   # as it runs on the task (the recommender adapts it)
            Arm("single_best", single_best, _portfolio_pipeline(single_best, task_type)),
            Arm("vanilla_kd", "vanilla_kd", _portfolio_pipeline("vanilla_kd", task_type))]
    return {"arms": [asdict(a) for a in arms], "task_type": task_type, "warm_start_source": start.source,
            "reason": start.reason, "predicted_ratio": top.predicted_score, "meta_features": feats,
            "meta_model_top1": model_top[0].candidate,   # the model's own pick, also when the portfolio's is run
            "student_outside_training": top.why.get("student_outside_training"),
            "meta_features_outside_training": top.why.get("meta_features_outside_training"),
            "planned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _budget_for(budget: PipelineConfig | None, path: Path, max_train_examples: int | None) -> PipelineConfig:
    base = budget or PipelineConfig()
    update = {"train": str(path), "validation": None}
    if max_train_examples:
        update["max_train_examples"] = max_train_examples
    return base.model_copy(update={"data": base.data.model_copy(update=update)})


def _pipeline_id(config: PipelineConfig | Mapping[str, Any]) -> str:
    """What makes two runs the same pipeline: their KD sections as run (arms that agree share runs)."""
    return hashlib.sha256(json.dumps(pipeline_only(config), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _arm_config(plan: Mapping[str, Any], pipeline: Mapping[str, Any]) -> PipelineConfig:
    """An arm's run: its pipeline at the plan's budget."""
    return with_pipeline(PipelineConfig.model_validate(with_legacy_values(plan["budget"])), pipeline)


def _seed_of(record) -> int:
    return int(record.provenance.get("seed", record.seed))


def _manifest(out: Path, wanted: dict[str, Any], single_best: Callable[[], str]) -> dict[str, Any]:
    """What every dataset of ``out`` is scored with (model, its warm-start decision, single best, seeds, budget):
    written by the first invocation; a later one that asks for anything else is refused (its datasets would
    not pair). A manifest written before the single best or the decision was kept in it gets them added once;
    the decision only when every plan made so far followed it (its ``warm_start_source``)."""
    path = out / MANIFEST
    have = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    if have is not None:
        compared = ("model", "seeds", "budget", "max_train_examples") + (("decision",) if "decision" in have else ())
        differ = sorted(k for k in compared if _comparable(k, have.get(k)) != _comparable(k, wanted.get(k)))
        if differ:
            settings = _differing_settings(_comparable("budget", have.get("budget")) or {},
                                           _comparable("budget", wanted.get("budget")) or {})
            detail = f": {', '.join(f'{k} {a!r} there, {b!r} here' for k, a, b in settings)}" if settings else ""
            raise ValueError(f"{out} was started with another {', '.join(differ)} ({path}{detail}); use a new --out")
        if "single_best" in have and "decision" in have:
            return have
        if "decision" not in have:
            _check_plans_follow(out, wanted["decision"])
    manifest = {**(have or wanted), "decision": wanted["decision"]}
    if "single_best" not in manifest:
        manifest["single_best"] = single_best()
    write_json_atomic(path, manifest, default=str)
    return manifest


def _check_plans_follow(out: Path, decision: Mapping[str, Any] | None) -> None:
    """Every plan so far has the decision's source, and under a portfolio its pick is one of its members."""
    source = (decision or {}).get("source") or META_MODEL   # no decision file: the meta-model's ranking
    members = set((decision or {}).get("portfolio") or [])

    def follows(plan: Mapping[str, Any]) -> bool:
        pick = next((a["candidate"] for a in plan.get("arms", []) if a["name"] == "recommended"), None)
        return plan.get("warm_start_source", source) == source and (source != PORTFOLIO or pick in members)
    strays = sorted(p["dataset"] for p in _plans(out) if not follows(p))
    if strays:
        raise ValueError(f"{out}: the plans of {strays} were made with another warm-start decision than the model "
                         f"folder's ({source}); use a new --out")


def _decision(model_dir: Path) -> dict[str, Any] | None:
    """What of the model folder's warm-start decision picks the ``recommended`` arm (its source and portfolio,
    not its note or figures), with a fingerprint of that."""
    stored = read_decision(model_dir)
    if stored is None:
        return None
    portfolio = [RENAMED_CANDIDATES.get(c, c) for c in stored.get("portfolio") or []]
    picks = {"source": stored.get("source"), "portfolio": portfolio}
    return {**picks, "fingerprint": hashlib.sha256(json.dumps(picks, sort_keys=True).encode()).hexdigest()[:16]}


def _differing_settings(have: Mapping[str, Any], wanted: Mapping[str, Any], prefix: str = "") -> list[tuple]:
    """(dotted setting, value in ``have``, value in ``wanted``) for each leaf where two configs differ."""
    out = []
    for key in sorted(set(have) | set(wanted)):
        a, b = have.get(key), wanted.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _differing_settings(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def _comparable(key: str, value: Any) -> Any:
    """What must agree between two invocations: the model and its decision by their content, not the folder;
    the budget as it ran."""
    if key in ("model", "decision"):
        return (value or {}).get("fingerprint")
    return with_legacy_values(value) if key == "budget" and value is not None else value


def _model_fingerprint(model_dir: Path) -> str:
    from .model_files import MODEL_FILE, SIDECAR_FILE
    digest = hashlib.sha256()
    for name in (SIDECAR_FILE, MODEL_FILE):
        digest.update((model_dir / name).read_bytes())
    return digest.hexdigest()[:16]


def run_unseen(datasets_root: str | Path, datasets: Sequence[str], *, model_dir: str | Path,
               records: str | Path | Sequence[str | Path], out: str | Path, seeds: Sequence[int] = (42, 43),
               budget: PipelineConfig | None = None, max_train_examples: int | None = None,
               limit: int | None = None, log: Callable[[str], None] = print,
               events: EventLog | None = None) -> tuple[int, int]:
    """Plan and train the missing (dataset, arm pipeline, seed) runs, at most ``limit``; a dataset that
    fails is logged and left for the next invocation, the others go on; a dataset another process holds
    is skipped. ``events``: a line per evaluation of the teacher's fine-tune and of each student (a
    dataset's teacher can take most of an hour on CPU). Returns (runs trained, datasets failed)."""
    root, out, model_dir = Path(datasets_root), Path(out), Path(model_dir)
    missing = [d for d in datasets if not (root / d).is_dir()]
    if missing:
        raise FileNotFoundError(f"datasets not found under {root}: {missing}")
    base = budget or PipelineConfig()
    manifest = _manifest(out, {
        "model": {"dir": str(model_dir), "fingerprint": _model_fingerprint(model_dir)},
        "decision": _decision(model_dir),
        "records": [str(p) for p in ([records] if isinstance(records, (str, Path)) else records)],
        "seeds": [int(s) for s in seeds], "budget": json.loads(json.dumps(base.to_dict(), default=str)),
        "max_train_examples": max_train_examples}, single_best=lambda: fair_single_best(records))
    ran = failed = 0
    for dataset in datasets:
        if limit is not None and ran >= limit:
            break
        claim = claim_context(out, dataset)
        if claim is None:
            log(f"[{dataset}] held by another process: skipped")
            continue
        try:
            ran += _run_dataset(root / dataset, dataset, manifest, model_dir, base, out,
                                None if limit is None else limit - ran, log, events)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - one dataset's failure is logged; the others go on
            failed += 1
            log(f"[{dataset}] failed: {type(err).__name__}: {err}")
        finally:
            claim.release()
    return ran, failed


def _run_dataset(path: Path, dataset: str, manifest: Mapping[str, Any], model_dir: Path, base: PipelineConfig,
                 out: Path, limit: int | None, log: Callable[[str], None], events: EventLog | None = None) -> int:
    """``model_dir``: the folder this invocation was given, whose content the manifest has checked."""
    from ..distill import run_distillation

    cfg = _budget_for(base, path, manifest["max_train_examples"])
    plan_file = out / "plans" / f"{dataset}.json"
    if plan_file.is_file():
        plan = json.loads(plan_file.read_text(encoding="utf-8"))
    else:
        plan = {"dataset": dataset, "seeds": manifest["seeds"], "budget": cfg.to_dict(),
                **plan_arms(cfg, model_dir, manifest["single_best"])}
        write_json_atomic(plan_file, plan, default=float)
    arms = [Arm(**a) for a in plan["arms"]]
    log(f"[{dataset}] " + ", ".join(f"{a.name}: {a.candidate}" + ("" if a.pipeline else " (n/a to the task)")
                                    for a in arms))
    store = RecordStore(out / "runs" / f"{dataset}.jsonl")
    done = {(_pipeline_id(r.config), _seed_of(r)) for r in store}
    runs: dict[str, tuple[PipelineConfig, list[Arm]]] = {}
    for arm in arms:
        if arm.pipeline is not None:
            run_cfg = _arm_config(plan, arm.pipeline)
            runs.setdefault(_pipeline_id(run_cfg), (run_cfg, []))[1].append(arm)
    pending = [(pid, seed) for pid in runs for seed in plan["seeds"] if (pid, seed) not in done]
    if pending and (limit is None or limit > 0):
        _check_same_engine(store, dataset, git_commit())
        if any(r.teacher_score is not None for r in store):   # else the first run sets the dataset's teacher
            _check_same_teacher(store, _teacher_score(_trained_from(runs[pending[0][0]][0], path), events), dataset)
    ran, failures = 0, []
    for pid, (run_cfg, sharing) in sorted(runs.items(), key=lambda item: _examples_per_row(item[1][0])):
        for seed in plan["seeds"]:
            if (pid, seed) in done:
                continue
            if limit is not None and ran >= limit:
                return ran
            seeded = run_cfg.model_copy(update={"optim": run_cfg.optim.model_copy(update={"seed": seed})})
            names = "/".join(dict.fromkeys(a.candidate for a in sharing))
            log(f"[{dataset}] {names} (seed {seed}) ...")
            t0 = time.perf_counter()
            try:   # the plan's data path may be relative to another folder: train on this invocation's copy
                result = run_distillation(_trained_from(seeded, path), events=events)
            except (KeyboardInterrupt, TeacherMismatch):
                raise
            except Exception as err:  # noqa: BLE001 - one run's failure must not cost its siblings their turn
                failures.append(f"{names} (seed {seed}): {type(err).__name__}: {err}")
                log(f"[{dataset}] {names} (seed {seed}) failed:\n{traceback.format_exc()}")
                continue
            wall = time.perf_counter() - t0
            record = run_record(seeded, result.metrics, wall, meta_features=plan["meta_features"], context=dataset,
                                candidate=sharing[0].candidate, source=SOURCE, provenance={
                                    "seed": seed, "arms": [a.name for a in sharing], "model": manifest["model"]})
            _check_same_teacher(store, record.teacher_score, dataset)
            if not store.append(record):
                raise RuntimeError(f"{dataset}: the record of {names} (seed {seed}) has the key of an existing one")
            ran += 1
            log(f"[{dataset}] {names} (seed {seed}): ratio {result.metrics.get('score_ratio') or 0:.4f} in {wall:.0f} s")
    if failures:
        raise RuntimeError(f"{len(failures)} run(s) failed (the others were recorded): " + "; ".join(failures))
    return ran


def _examples_per_row(config: PipelineConfig) -> int:
    """Examples an epoch trains per original row: augmented copies join the epoch. The cheaper pipelines run
    first, all their seeds, so a session that ends mid-dataset has recorded as many runs as it could."""
    augmentation = config.augmentation
    return 1 + (augmentation.copies if augmentation.augmenters else 0)


def _trained_from(config: PipelineConfig, path: Path) -> PipelineConfig:
    """``config`` reading its training data from ``path`` (this invocation's dataset folder, resolved), not
    from the path the plan recorded (relative to the folder its first invocation ran in)."""
    return config.model_copy(update={"data": config.data.model_copy(update={"train": str(Path(path).resolve())})})


class EngineMismatch(RuntimeError):
    """This checkout is not the engine a dataset's recorded runs trained with."""


def _check_same_engine(store: RecordStore, dataset: str, engine: Mapping[str, Any]) -> None:
    """A dataset's arms pair only if they trained with one engine, and its runs can take several sessions:
    each continues from a clean checkout of a commit its recorded runs used, checked before the teacher's
    fine-tune. A run recorded from a dirty checkout names no engine: its commit matches nothing. Where git
    cannot say (no checkout), only the teacher check below applies."""
    gits = [(r.provenance or {}).get("git") or {} for r in store]            # in the order they were recorded
    if not any(g.get("commit") for g in gits) or engine.get("commit") is None:
        return
    clean = list(dict.fromkeys(g["commit"] for g in gits if g.get("commit") and not g.get("dirty")))
    if engine["commit"] in clean and not engine.get("dirty"):
        return
    this = engine["commit"][:7] + (" with uncommitted changes" if engine.get("dirty") else "")
    recorded = ", ".join(c[:7] for c in clean) or "none from a clean checkout"
    advice = (f"Run from a clean worktree at that commit: git worktree add --detach <folder> {clean[0][:7]}"
              if clean else "Run it in a new --out")
    raise EngineMismatch(f"{dataset}: its recorded runs trained at {recorded}, this checkout is {this}: its arms "
                         f"would not pair. {advice}")


def _teacher_score(config: PipelineConfig, events: EventLog | None) -> float:
    """The score of the teacher ``config``'s runs train with: fine-tuned here into the disk cache they then
    load it from, so a teacher unlike the recorded runs' is refused before the first student trains."""
    from ..prepare import prepare_task, prepare_teachers

    return prepare_teachers(config, prepare_task(config), events=events)[0].score


def _check_same_teacher(store: RecordStore, score: float | None, dataset: str, tol: float = 1e-6) -> None:
    """A dataset's arms pair only if their runs share one teacher (ratio = student / teacher score). A
    teacher is fine-tuned again on every machine and comes out the same where the setup is the same (the
    thread count, full precision); this refuses a teacher that scores otherwise, before a run is recorded."""
    earlier = {r.teacher_score for r in store if r.teacher_score is not None}
    if score is not None and any(abs(score - t) > tol for t in earlier):
        threads = sorted({str(((r.provenance or {}).get("machine") or {}).get("torch_threads")) for r in store})
        raise TeacherMismatch(f"{dataset}: this teacher scores {score:.6f}, the dataset's recorded runs' "
                              f"{sorted(earlier)}: its arms would not pair. Run as the earlier runs ran (torch "
                              f"threads {', '.join(threads)}: OMP_NUM_THREADS; full precision), or in a new --out")


def _plans(out: Path) -> list[dict[str, Any]]:
    return [json.loads(f.read_text(encoding="utf-8")) for f in sorted((out / "plans").glob("*.json"))]


def unseen_table(out: str | Path) -> pd.DataFrame:
    """One row per (dataset, arm): its candidate, the ratio per seed and their mean (NaN while a seed is
    missing or the arm does not apply to the task)."""
    out = Path(out)
    rows = []
    for plan in _plans(out):
        ratios = {(_pipeline_id(r.config), _seed_of(r)): (r.target or {}).get("ratio")
                  for r in RecordStore(out / "runs" / f"{plan['dataset']}.jsonl")}
        for arm in plan["arms"]:
            pid = None if arm["pipeline"] is None else _pipeline_id(_arm_config(plan, arm["pipeline"]))
            values = [np.nan if ratios.get((pid, s)) is None else float(ratios[(pid, s)]) for s in plan["seeds"]]
            rows.append({"dataset": plan["dataset"], "arm": arm["name"], "candidate": arm["candidate"],
                         "applies": arm["pipeline"] is not None,
                         **{f"seed_{s}": v for s, v in zip(plan["seeds"], values)},
                         "ratio": float(np.mean(values)) if all(np.isfinite(values)) else np.nan})
    return pd.DataFrame(rows)


def unseen_runs(out: str | Path) -> pd.DataFrame:
    """One row per run: the candidate it was run as, the arms it serves (arms sharing a pipeline share its
    runs), seed, ratio, how training stopped (``stop_reason``, steps, epochs) and what the student's training
    cost (``train_seconds``; the teacher is shared by a dataset's runs)."""
    out = Path(out)
    rows = []
    for plan in _plans(out):
        for r in RecordStore(out / "runs" / f"{plan['dataset']}.jsonl"):
            m = r.metrics or {}
            rows.append({"dataset": plan["dataset"], "candidate": r.candidate_name,
                         "arms": "+".join((r.provenance or {}).get("arms", [])), "seed": _seed_of(r),
                         "ratio": (r.target or {}).get("ratio"), "stop_reason": m.get("stop_reason"),
                         "steps": m.get("steps"), "epochs": m.get("epochs"), "train_seconds": m.get("train_seconds"),
                         "commit": _commit_of(r)})
    return pd.DataFrame(rows)


def _commit_of(record) -> str | None:
    """The engine commit a run was trained with (short; ``+dirty`` for uncommitted changes)."""
    git = (record.provenance or {}).get("git") or {}
    commit = git.get("commit")
    return None if not commit else commit[:7] + ("+dirty" if git.get("dirty") else "")


def cost_ratios(runs: pd.DataFrame, arm: str = "recommended", reference: str = "vanilla_kd") -> pd.Series:
    """Per dataset: the mean student training seconds of the runs serving ``arm`` over those serving
    ``reference`` (1.0 where the two arms share their runs); datasets missing either are left out."""
    ratios = {}
    for dataset, g in runs.groupby("dataset", sort=True):
        serves = g["arms"].str.split("+")
        mine = g.loc[serves.map(lambda arms: arm in arms), "train_seconds"].dropna()
        ref = g.loc[serves.map(lambda arms: reference in arms), "train_seconds"].dropna()
        if len(mine) and len(ref):
            ratios[dataset] = float(mine.mean() / ref.mean())
    return pd.Series(ratios, dtype=float)


def unseen_comparisons(table: pd.DataFrame, n_boot: int = 2000) -> pd.DataFrame:
    """``recommended`` against each other arm over the datasets where both are complete: d = the
    recommendation's mean ratio − the arm's (> 0: the recommendation is better)."""
    wide = table.pivot_table(index="dataset", columns="arm", values="ratio", aggfunc="first")
    rows = []
    for other in ARMS[1:]:
        if "recommended" not in wide or other not in wide:
            continue
        both = wide[["recommended", other]].dropna()
        stats = paired_comparison(-both["recommended"].to_numpy(), -both[other].to_numpy(), n_boot=n_boot)
        rows.append({"comparison": f"recommended vs {other}", **stats})
    return pd.DataFrame(rows)


def _seed_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("seed_")]


def unpaired_datasets(table: pd.DataFrame, datasets: Sequence[str] = ()) -> dict[str, str]:
    """Each dataset missing from a comparison of :func:`unseen_comparisons` (of the planned ones and
    ``datasets``), with why: never planned (no run started), an arm that does not apply to the task, or
    which seeds an arm still misses."""
    why = {d: "not run: no plan yet" for d in datasets if d not in set(table["dataset"])}
    seed_cols = _seed_columns(table)
    for dataset, rows in table.groupby("dataset", sort=False):
        by_arm = rows.set_index("arm")
        gaps = []
        for other in ARMS[1:]:
            pair = [a for a in ("recommended", other) if a in by_arm.index]
            if len(pair) < 2 or all(np.isfinite(by_arm.loc[a, "ratio"]) for a in pair):
                continue
            causes = [cause for arm in pair for cause in _why_incomplete(by_arm.loc[arm], seed_cols)]
            gaps.append(f"not in recommended vs {other}: " + ", ".join(dict.fromkeys(causes)))
        if gaps:
            why[dataset] = "; ".join(gaps)
    return why


def _why_incomplete(row: pd.Series, seed_cols: Sequence[str]) -> list[str]:
    """Why an arm (a row of :func:`unseen_table`, indexed by arm) has no ratio yet."""
    if not row["applies"]:
        return [f"{row.name} ({row['candidate']}) does not apply to the task"]
    return [f"{row.name} misses seed {c.removeprefix('seed_')}" for c in seed_cols if not np.isfinite(row[c])]


def seed_spread(table: pd.DataFrame) -> pd.Series:
    """Max − min ratio over the seeds of each run pipeline that has all its seeds (arms sharing a pipeline
    count once)."""
    seed_cols = _seed_columns(table)
    complete = table[table["applies"] & table[seed_cols].notna().all(axis=1)].drop_duplicates(["dataset", "candidate"])
    return complete[seed_cols].max(axis=1) - complete[seed_cols].min(axis=1)


def write_unseen_report(out: str | Path, datasets: Sequence[str] = ()) -> Path:
    """The report of ``out``; ``datasets``: every dataset asked for, so that one not yet planned is listed too."""
    out = Path(out)
    table = unseen_table(out)
    if table.empty:
        raise FileNotFoundError(f"no planned datasets under {out / 'plans'}")
    comparisons = unseen_comparisons(table)
    unpaired = unpaired_datasets(table, datasets)
    table.to_csv(out / "per_dataset.csv", index=False)
    spread = seed_spread(table)
    lines = ["# The recommender on datasets the meta-dataset never saw", "",
             "Each dataset at the product's default budget (`PipelineConfig()` on all its rows unless the plan "
             "says otherwise); ratio = student/teacher on the validation split, mean over the seeds. "
             "`recommended` is the product's first pick, `single_best` the fair single best of the records.", "",
             markdown_table(table.set_index("dataset")), "",
             f"Seed spread (max − min ratio of one run pipeline over its seeds; {len(spread)} with all seeds): "
             f"median {spread.median():.4f}, max {spread.max():.4f}." if len(spread) else
             "No run pipeline has all its seeds yet.", "",
             "## Paired over datasets", "",
             "d = the recommendation's ratio − the other arm's (> 0: the recommendation is better); wins / ties / "
             "losses of the recommendation; two-sided Wilcoxon p; 95 % percentile bootstrap CI of the mean d.", "",
             markdown_table(comparisons.set_index("comparison")) if not comparisons.empty else "(no complete pair)"]
    lines += ["", "## The product's pick", "",
              "| dataset | warm start from | recommended | the meta-model's own top 1 |", "|---|---|---|---|"]
    for plan in _plans(out):
        recommended = next(a["candidate"] for a in plan["arms"] if a["name"] == "recommended")
        lines.append(f"| {plan['dataset']} | {plan.get('warm_start_source', '?')} | {recommended} | "
                     f"{plan.get('meta_model_top1', '(not recorded)')} |")
    lines += _runs_section(out)
    if unpaired:
        lines += ["", "## Not paired", "", "These datasets are missing from the comparisons named (a comparison pairs "
                  "the datasets where both of its arms apply and have every seed):", ""]
        lines += [f"- {dataset}: {why}" for dataset, why in unpaired.items()]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _runs_section(out: Path) -> list[str]:
    runs = unseen_runs(out)
    if runs.empty:
        return []
    lines = ["", "## Runs: convergence and cost", "",
             "Every run trains until its dev-slice curve is flat (`stop_reason` plateau) or hits a cap; "
             "`train_seconds` is the student's training time on the machine that ran it "
             "(`provenance.machine` of the run).", "",
             markdown_table(_shown(runs).sort_values(["dataset", "candidate", "seed"]).set_index("dataset")), ""]
    stopped = runs["stop_reason"].fillna("not recorded").value_counts()
    lines.append("Stop reasons: " + ", ".join(f"{reason} {n}" for reason, n in stopped.items()) + ".")
    mixed = {d: sorted(g.dropna()) for d, g in runs.groupby("dataset")["commit"].unique().items() if len(g.dropna()) > 1}
    if mixed:
        lines.append("Runs of one dataset trained with more than one engine commit (their pairing assumes the "
                     "training did not change between them): " + "; ".join(f"{d}: {', '.join(c)}"
                                                                          for d, c in mixed.items()) + ".")
    ratios = cost_ratios(runs)
    if len(ratios):
        span = f"{ratios.iloc[0]:.1f}x" if len(ratios) == 1 else f"{ratios.min():.1f}-{ratios.max():.1f}x"
        lines.append(f"The recommended pipeline's student training costs {span} vanilla_kd's (mean train seconds "
                     f"per dataset, {len(ratios)} dataset{'s' if len(ratios) > 1 else ''}).")
    return lines


def _shown(runs: pd.DataFrame) -> pd.DataFrame:
    """Whole seconds and one-decimal epochs in the report."""
    return runs.assign(epochs=[_number_or_dash(v, ".1f") for v in runs["epochs"]],
                       train_seconds=[_number_or_dash(v, ".0f") for v in runs["train_seconds"]])


def _number_or_dash(value: Any, spec: str) -> str:
    return "–" if value is None or not np.isfinite(value) else format(value, spec)
