"""`autodistill meta ...`: the meta-dataset (``build``, ``status``, ``import-distiller``) and the meta-model
(``evaluate``, ``fit``, ``decide``, ``pilot``, ``unseen``)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from ..meta import DATASETS_DIR, META_DATASET_DIR
from ..meta.build import V2_PORTFOLIO, V2_SEEDS, V2_STUDENT, V2_TRAIN_SIZES, build, status
from ..meta.distiller_import import import_distiller
from ..meta.evaluate import PLAIN_HGB, PLAIN_HGB_STATED, nested_lodo_evaluate, seed_noise_floor, write_nested_report
from ..meta.fitting import (DEFAULT_MODEL_DIR, FIT_METHODS, PRODUCT_METHOD, fit_meta_model, meta_model_table,
                            model_choices, sidecar_record_path)
from ..meta.pilot import pilot_report, write_pilot_report
from ..meta.portfolio import STUDENT_PRESETS
from ..meta.columns import stated_meta_feature_columns
from ..records import load_records
from ..meta.warm_start import write_decision
from .common import Commands, int_at_least

#: where a new build writes: the v1 records (meta_dataset/runs, the old preset) are no longer the default
V2_RUNS = META_DATASET_DIR / "v2" / "runs"


def register(commands: Commands) -> None:
    meta = commands.add_parser("meta", help="the meta-dataset and the meta-model (recommender)")
    meta_commands = meta.add_subparsers(dest="meta_command", required=True)
    add_meta_dataset_commands(meta_commands)
    add_meta_model_commands(meta_commands)


# --------------------------------------------------------------------------- the meta-dataset
def add_meta_dataset_commands(meta_commands: Commands) -> None:
    b = meta_commands.add_parser("build", help="run the portfolio on the datasets (resumable) into meta_dataset/v2/runs")
    b.add_argument("--datasets-root", default=DATASETS_DIR, type=Path,
                   help="folder of dataset folders (default: the repository's meta_dataset/datasets)")
    b.add_argument("--datasets", help="comma-separated dataset names "
                   "(default: V2_DATASETS; --old-preset: DEFAULT_DATASETS)")
    b.add_argument("--portfolio", help="'all' or comma-separated candidate names (default: V2_PORTFOLIO, the 8 "
                   "the pilot kept; --old-preset: all)")
    b.add_argument("--out", default=V2_RUNS, type=Path, help="records folder (default: meta_dataset/v2/runs; "
                   "meta_dataset/runs holds the old v1 preset's records)")
    b.add_argument("--limit", type=int, help="run at most N runs in this invocation")
    b.add_argument("--seeds", help="comma-separated student seeds (default: 42,43; --old-preset: 42)")
    b.add_argument("--preset-override", help="JSON merged over the preset, e.g. "
                   "'{\"optim\": {\"early_stopping_patience\": 5}}'")
    b.add_argument("--no-backbone", action="store_true", help="meta-features without the backbone embeddings")
    _add_context_options(b)
    b.add_argument("--workers", type=int, default=1,
                   help="single-threaded build processes sharing the datasets, one dataset each at a time "
                        "(--limit is per worker); 2 on a 2-core machine")
    b.set_defaults(func=run_build)

    s = meta_commands.add_parser("status", help="progress of the build: runs recorded and missing, compute spent, ETA")
    s.add_argument("--datasets", help="comma-separated dataset names "
                   "(default: V2_DATASETS; --old-preset: DEFAULT_DATASETS)")
    s.add_argument("--portfolio", help="'all' or comma-separated candidate names (default: V2_PORTFOLIO; "
                   "--old-preset: all)")
    s.add_argument("--out", default=V2_RUNS, type=Path, help="records folder (v1: meta_dataset/runs)")
    s.add_argument("--seeds", help="comma-separated student seeds (default: 42,43; --old-preset: 42)")
    _add_context_options(s)
    s.add_argument("--processes", type=int, default=2, help="build processes running in parallel (for the ETA)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=run_status)

    d = meta_commands.add_parser("import-distiller", help="import the Distiller paper's released runs")
    d.add_argument("--anchors", default=META_DATASET_DIR / "distiller" / "source", type=Path,
                   help="folder of the Distiller paper's released CSVs (default: meta_dataset/distiller/source)")
    d.add_argument("--datasets-root", default=DATASETS_DIR, type=Path,
                   help="folder of dataset folders (default: meta_dataset/datasets)")
    d.add_argument("--out", default=META_DATASET_DIR / "distiller", type=Path)
    d.add_argument("--no-backbone", action="store_true", help="meta-features without the backbone embeddings")
    d.set_defaults(func=run_import_distiller)


def _add_context_options(p: argparse.ArgumentParser) -> None:
    sizes = ",".join(map(str, V2_TRAIN_SIZES))
    p.add_argument("--sizes", help="comma-separated train sizes (rows, a seeded subsample; the whole train when "
                   f"smaller): each dataset is one context per size, '<dataset>@n<size>' (default: {sizes})")
    p.add_argument("--student", choices=sorted(STUDENT_PRESETS),
                   help=f"student preset, under the converged training rule (default: {V2_STUDENT})")
    p.add_argument("--old-preset", action="store_true", help="the v1 records' OLD PRESET (1,000 rows, 2 epochs, "
                   "the cut 2-layer student; use with --out meta_dataset/runs): no sizes, no student preset")


def _context_plan(args: argparse.Namespace) -> dict:
    """``build``/``status`` keyword arguments for the contexts and seeds the options name (ValueError
    when they contradict each other)."""
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
    if args.old_preset:
        if args.sizes or args.student:
            raise ValueError("--old-preset has no --sizes or --student (the v1 preset: 1,000 rows, the cut student)")
        return {"train_sizes": [None], "student": None, "seeds": seeds}
    sizes = args.sizes or ",".join(map(str, V2_TRAIN_SIZES))
    return {"train_sizes": [int(n) for n in sizes.split(",")], "student": args.student or V2_STUDENT,
            "seeds": seeds or list(V2_SEEDS)}


def _portfolio(args: argparse.Namespace) -> str:
    """``--portfolio``, else the v2 build's candidates (the OLD PRESET build's: every candidate)."""
    if args.portfolio:
        return args.portfolio
    return "all" if args.old_preset else ",".join(V2_PORTFOLIO)


def _dataset_names(args: argparse.Namespace) -> list[str] | None:
    """``--datasets a,b`` as a list; None when not given (the build's default datasets)."""
    return [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets else None


def _build_in_workers(args: argparse.Namespace, argv_tail: list[str]) -> int:
    """``workers`` single-threaded ``meta build`` processes over the same datasets: each takes the next
    dataset no other process has claimed (see ``build._claim``), so they never run the same dataset
    and none idles while another has datasets left. On a CPU machine two 1-thread processes finish
    more runs per hour than one process with two threads."""
    names = _dataset_names(args)
    datasets = ["--datasets", ",".join(names)] if names else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "autodistill.cli", "meta", "build", *datasets, *argv_tail],
                              env=env) for _ in range(args.workers)]
    try:
        return max(p.wait() for p in procs)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """The build's options, to pass on to the worker processes (all but --datasets and --workers)."""
    argv = ["--datasets-root", str(args.datasets_root), "--portfolio", _portfolio(args), "--out", str(args.out)]
    for flag, value in (("--limit", args.limit), ("--seeds", args.seeds), ("--preset-override", args.preset_override),
                        ("--sizes", args.sizes), ("--student", args.student)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + (["--no-backbone"] if args.no_backbone else []) + (["--old-preset"] if args.old_preset else [])


def run_build(args: argparse.Namespace) -> int:
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1:
        return _build_in_workers(args, _worker_argv(args))
    try:
        override = json.loads(args.preset_override) if args.preset_override else None
        if override is not None and not isinstance(override, dict):
            raise ValueError("--preset-override must be a JSON object")
        summary = build(args.datasets_root, datasets=_dataset_names(args), portfolio=_portfolio(args), out=args.out,
                        limit=args.limit, preset_override=override,
                        backbone=None if args.no_backbone else "default", **_context_plan(args))
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    per_run = (sum(summary.run_seconds) / len(summary.run_seconds)) if summary.run_seconds else 0.0
    print(f"ran {summary.ran} runs ({summary.failed} failed, {summary.skipped_done} already done, "
          f"{summary.not_applicable} not applicable) in {summary.seconds:.0f} s; mean {per_run:.0f} s per run")
    return 1 if summary.failed else 0


def run_status(args: argparse.Namespace) -> int:
    datasets = _dataset_names(args)
    try:
        st = status(args.out, datasets=datasets, portfolio=_portfolio(args), **_context_plan(args))
    except (KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"preset_hash": st.preset_hash, "done": st.n_done, "missing": st.n_missing,
                          "run_seconds": round(st.run_seconds), "teacher_seconds": round(st.teacher_seconds),
                          "eta_seconds": round(st.eta_seconds(args.processes)),
                          "candidates": {c: {"done": st.done[c], "missing": st.missing[c],
                                             "mean_seconds": st.mean_seconds.get(c)} for c in st.done}}, indent=2))
        return 0
    width = max(map(len, st.done), default=9) + 2
    print(f"{'candidate':<{width}}{'done':>6}{'missing':>9}{'mean s':>8}")
    for c in st.done:
        mean = st.mean_seconds.get(c)
        print(f"{c:<{width}}{len(st.done[c]):>6}{len(st.missing[c]):>9}{'' if mean is None else f'{mean:.0f}':>8}")
    hours = lambda s: f"{s / 3600:.1f} h"  # noqa: E731
    print(f"{st.n_done} runs recorded ({hours(st.run_seconds)} of run time, plus {hours(st.teacher_seconds)} of "
          f"teachers and meta-features), {st.n_missing} missing: about {hours(st.eta_seconds(args.processes))} "
          f"with {args.processes} process(es) (preset {st.preset_hash})")
    return 0


def run_import_distiller(args: argparse.Namespace) -> int:
    try:
        result = import_distiller(args.anchors, args.datasets_root, args.out,
                                  backbone=None if args.no_backbone else "default")
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{result['records']} records for {len(result['tasks'])} tasks written to {result['out']}")
    return 0


# --------------------------------------------------------------------------- the meta-model
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _inner_folds(text: str) -> int | None:
    """``logo`` (leave-one-dataset-group-out: None) or a number of grouped folds >= 2."""
    if text.strip().lower() == "logo":
        return None
    try:
        return int_at_least(text, 2)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"expected 'logo' or a number of folds >= 2: {err}") from None


def _records_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--records", nargs="+", required=True,
                   help="record JSONL files or folders (every *.jsonl below them)")
    p.add_argument("--features", help="folder of per-dataset meta-feature JSON files "
                   "(default: a 'features' folder next to the records)")
    p.add_argument("--target", choices=("ratio", "best"), default="ratio",
                   help="normalised score: student/teacher (ratio) or student/best on the dataset")
    p.add_argument("--methods", nargs="+", choices=("hgb", "rf", "pairwise"),
                   default=["hgb", "rf", "pairwise"], help="the families the nested selection (auto) chooses among")
    p.add_argument("--teacher-features", action="store_true",
                   help="keep the trained-teacher meta-features (score, confidence) as model inputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=_positive_int, default=1,
                   help="evaluate with this many model seeds (--seed, --seed+1, ...): a held-out dataset's "
                   "figures are the mean over them")
    p.add_argument("--inner-folds", type=_inner_folds, default=None, metavar="logo|K",
                   help="the nested selection's (auto) CV inside each training fold that selects the choice: 'logo' "
                   "(default: each training dataset group is one fold) or K grouped folds (cheaper with many "
                   "datasets)")
    p.add_argument("--keep-uninformative", action="store_true",
                   help="always train on datasets whose teacher is no better than the majority class "
                   "(by default the plain model leaves them out and the nested selection of --meta-model / "
                   "--method auto decides; they are never held out: their targets are noise around chance)")


def add_meta_model_commands(meta_commands: Commands) -> None:
    e = meta_commands.add_parser("evaluate", help="nested leave-one-dataset-out evaluation -> markdown report")
    _records_args(e)
    e.add_argument("--out", required=True, type=Path, help="report folder")
    e.add_argument("--portfolio-k", type=_positive_int, default=4,
                   help="size of the best-of-k portfolio and of the warm start it is compared at")
    e.add_argument("--noise-records", nargs="+", default=[],
                   help="record files/folders with other student seeds of the same datasets, for the noise floor "
                   "(seeds within --records count too)")
    e.add_argument("--meta-model", choices=("plain", "auto"), default=PRODUCT_METHOD,
                   help="the meta-model evaluated (and compared with the portfolio for the warm start): plain "
                   "(default, the product's: one unbagged gradient-boosting model, fitted in every fold) or auto "
                   "(the nested selection over --methods, with the plain model as a fixed reference)")
    e.add_argument("--note", default="", help="a line the report starts with (e.g. which preset the records are)")
    e.set_defaults(func=run_evaluate)

    f = meta_commands.add_parser("fit", help="fit the product's meta-model (plain, or --method) on all records")
    _records_args(f)
    f.add_argument("--method", choices=FIT_METHODS, default=PRODUCT_METHOD,
                   help=f"{PRODUCT_METHOD} (default, the product's): one unbagged gradient-boosting model; auto: the "
                   "choice (family, ensemble size, leave-out rule) that the grouped CV of `meta evaluate`'s inner "
                   "folds selects on all records; or a family with its default parameters")
    f.add_argument("--evaluation", type=Path,
                   help="a `meta evaluate` report folder: its decision.json (meta-model or portfolio warm start) "
                   "is stored with the model")
    f.add_argument("--out", required=True, type=Path, help="model folder")
    f.set_defaults(func=run_fit)

    d = meta_commands.add_parser("decide", help="store an evaluation's warm-start decision (meta-model or "
                                 "portfolio) with a model")
    d.add_argument("--evaluation", required=True, type=Path, help="a `meta evaluate` report folder (decision.json)")
    d.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="model folder")
    d.set_defaults(func=run_decide)

    pl = meta_commands.add_parser("pilot", help="a pilot's records -> seed noise, centred means, candidates to merge")
    pl.add_argument("--records", nargs="+", required=True, help="record JSONL files or folders")
    pl.add_argument("--out", required=True, type=Path, help="report folder (pilot.md, pilot_runs.csv)")
    pl.add_argument("--student", choices=sorted(STUDENT_PRESETS),
                    help="only the contexts of this student preset ('<dataset>@n<rows>@<student>')")
    pl.add_argument("--datasets-root", default=DATASETS_DIR, type=Path,
                    help="dataset copies to rebuild old records' dev slices from (default: meta_dataset/datasets)")
    pl.set_defaults(func=run_pilot)

    u = meta_commands.add_parser("unseen", help="the recommender on datasets the meta-dataset never saw: its pick vs "
                                 "the fair single best and vanilla KD at the product's default budget")
    u.add_argument("--datasets", required=True, help="comma-separated dataset folder names under --datasets-root")
    u.add_argument("--datasets-root", required=True, type=Path, help="folder of dataset folders")
    u.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="meta-model folder (the product's)")
    u.add_argument("--records", nargs="+", default=[V2_RUNS], help="the records the fair single best comes from "
                   "(default: meta_dataset/v2/runs)")
    u.add_argument("--out", required=True, type=Path, help="folder: plans/, runs/, report.md")
    u.add_argument("--seeds", default="42,43", help="comma-separated student seeds (default: 42,43)")
    u.add_argument("--config", help="budget config (YAML/JSON) instead of the product's default PipelineConfig()")
    u.add_argument("--max-train-examples", type=int, help="train on a seeded subsample of this many rows")
    u.add_argument("--limit", type=int, help="train at most N runs in this invocation")
    u.add_argument("--report-only", action="store_true", help="write the report from the runs so far")
    u.set_defaults(func=run_unseen_test)


def run_unseen_test(args: argparse.Namespace) -> int:
    from ..config import ConfigError, load_config
    from ..meta.unseen import run_unseen, write_unseen_report
    from ..progress import EventLog

    from ..meta.model_files import ModelVersionError
    failed = 0
    try:
        datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
        if not args.report_only:
            budget = load_config(args.config) if args.config else None
            ran, failed = run_unseen(args.datasets_root, datasets,
                                     model_dir=args.model, records=args.records, out=args.out,
                                     seeds=[int(s) for s in args.seeds.split(",")], budget=budget,
                                     max_train_examples=args.max_train_examples, limit=args.limit,
                                     events=EventLog())
            print(f"trained {ran} runs; {failed} dataset(s) failed (logged above; a rerun retries them)")
        print(write_unseen_report(args.out, datasets).read_text(encoding="utf-8"))
    except (FileNotFoundError, ConfigError, ValueError, ModelVersionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if failed else 0


def run_pilot(args: argparse.Namespace) -> int:
    records = load_records(args.records)
    if args.student:
        records = [r for r in records if r.dataset_name.endswith(f"@{args.student}")]
    try:
        report = pilot_report(records, datasets_root=args.datasets_root)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if report.centred.empty:
        print("error: no candidate ran on every context of these records", file=sys.stderr)
        return 2
    path = write_pilot_report(report, args.out)
    print(path.read_text(encoding="utf-8"))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    t0 = time.time()
    try:
        table = meta_model_table(args.records, target=args.target, features_dir=args.features,
                                 teacher_features=args.teacher_features)
        noise = seed_noise_floor(load_records([*args.records, *args.noise_records]), target=args.target)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if table["dataset"].nunique() < 2:
        print(f"error: leave-one-dataset-out needs at least 2 datasets, got {table['dataset'].nunique()}",
              file=sys.stderr)
        return 2
    plain = args.meta_model == "plain"
    choices = [replace(PLAIN_HGB, drop_uninformative=not args.keep_uninformative)] if plain else \
        model_choices(args.methods, args.keep_uninformative)
    fixed = {} if plain else {"plain_hgb": PLAIN_HGB}
    if stated_meta_feature_columns(table):
        fixed["plain_hgb_stated"] = PLAIN_HGB_STATED
    result = nested_lodo_evaluate(table, choices, seeds=range(args.seed, args.seed + args.repeats),
                                  inner_folds=args.inner_folds, portfolio_k=args.portfolio_k, fixed=fixed)
    result.noise_floor = noise
    report = write_nested_report(result, args.out, note=args.note)
    print(result.summary.round(4).to_string())
    print(f"\nwarm start from: {result.decision['source']}; report: {report} ({time.time() - t0:.0f} s)")
    return 0


def run_fit(args: argparse.Namespace) -> int:
    try:
        table = meta_model_table(args.records, target=args.target, features_dir=args.features,
                                 teacher_features=args.teacher_features)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    info = {"records": [sidecar_record_path(p) for p in args.records], "teacher_features": bool(args.teacher_features)}
    try:
        fitted = fit_meta_model(table, method=args.method, methods=args.methods,
                                keep_uninformative=args.keep_uninformative, inner_folds=args.inner_folds,
                                seed=args.seed, target=args.target, info=info)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    fitted.recommender.save(args.out)
    if args.evaluation:
        _store_decision(args.evaluation, args.out)
    rows = fitted.rows
    print(f"meta-model ({fitted.choice.label}; {len(rows)} rows, {rows['dataset'].nunique()} datasets, "
          f"{rows['candidate'].nunique()} candidates) saved to {args.out}")
    return 0


def _store_decision(evaluation: Path, model_dir: Path) -> Path:
    decision = json.loads((Path(evaluation) / "decision.json").read_text(encoding="utf-8"))
    return write_decision(model_dir, decision["portfolio"], decision["k"], decision["comparison"],
                          decision.get("note", ""))


def run_decide(args: argparse.Namespace) -> int:
    try:
        path = _store_decision(args.evaluation, args.model)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"warm start from: {json.loads(path.read_text(encoding='utf-8'))['source']} ({path})")
    return 0
