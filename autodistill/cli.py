"""Command line: `autodistill distill ...`."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from importlib.metadata import entry_points

COMMAND_PLUGINS = "autodistill.commands"   # entry-point group of commands from the layers above

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _distill(args: argparse.Namespace) -> int:
    from .config import ConfigError, PipelineConfig, load_config
    from .data import DataError, bundled_dataset_path
    from .distill import add_latency, export, format_report, run_distillation
    from .models import ModelLoadError
    from .progress import EventLog

    _quiet_libraries(args.verbose)
    try:
        cfg = load_config(args.config) if args.config else PipelineConfig()
        data = args.data or str(bundled_dataset_path())
        if not args.data:
            print(f"no --data given: using the bundled dataset {data}", file=sys.stderr)
        updates = {"train": data}
        if args.validation:
            updates["validation"] = args.validation
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=updates)})
        cfg = PipelineConfig.model_validate(cfg.to_dict())  # re-validate the merged config
        result = run_distillation(cfg, events=EventLog())
        add_latency(result)
        out = export(result, args.out)
    except (ConfigError, DataError, ModelLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(result.metrics))
    print(f"\nstudent, metrics.json and config.yaml written to {out}")
    return 0


def _quiet_libraries(verbose: bool) -> None:
    """Keep transformers' and Ray's own chatter out of the user's output unless --verbose."""
    if verbose:
        return
    import warnings

    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()   # "Writing model shards" bars on every export
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


NO_STUDENT_EXIT = 3
INTERRUPTED_EXIT = 130


def _search(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .data import DataError, bundled_dataset_path
    from .models import ModelLoadError
    from .search.space import SpaceError

    _quiet_libraries(args.verbose)
    data = args.data or str(bundled_dataset_path())
    if not args.data:
        print(f"no --data given: using the bundled dataset {data}", file=sys.stderr)
    if args.max_train_examples:
        data = {"train": data, "max_train_examples": args.max_train_examples}
    try:
        from .config import load_config_dict
        from .meta.features import search_meta_features
        from .search.driver import SearchRequest, run_search
        overrides = load_config_dict(args.config) if args.config else None
        result = run_search(SearchRequest(
            data, args.space, args.out, trials=args.trials, time_budget=args.time_budget,
            overrides=overrides, anchor=args.anchor,
            address=args.address, warm_start=args.warm_start, resume=args.resume,
            max_concurrent_trials=args.max_concurrent, cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial, seed=args.seed, verbose=args.verbose,
            storage_path=args.storage_path, trial_resources=args.trial_resources,
            meta_features=search_meta_features))
    except (ConfigError, DataError, ModelLoadError, SpaceError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ConnectionError as err:
        print(f"error: {err}. Is the cluster running? Ray 2.60 clusters use token authentication: "
              "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted_before_a_student(args.out, "search")
    return _report_search(result, args.out, "search")


def _interrupted_before_a_student(out: Path, command: str) -> int:
    print(f"\ninterrupted before any student completed: nothing to keep yet. Continue with "
          f"`autodistill {command} --resume --out {out}` and the same options (a fine-tuned teacher is "
          "cached and reused).", file=sys.stderr)
    return INTERRUPTED_EXIT


def _report_search(result, out: Path, command: str) -> int:
    """Leaderboard and verdict; exit 0 with a student, 130 when interrupted (the best completed
    student kept), 3 when no student exists (the message names the cause and what to change)."""
    from .search.driver import format_leaderboard
    from .search.verdict import build_verdict, format_verdict
    print(format_leaderboard(result.trials))
    print(f"\nrecords: {result.records_path}")
    verdict = build_verdict(result)
    (Path(result.out_dir) / "verdict.json").write_text(json.dumps(verdict, indent=2, default=str), encoding="utf-8")
    print(format_verdict(verdict))
    if result.interrupted:
        kept = f"the best completed student is kept in {result.best_dir}. " if result.best_dir else ""
        print(f"\ninterrupted before the budget was spent: {kept}Continue with "
              f"`autodistill {command} --resume --out {out}` and the same options.", file=sys.stderr)
        return INTERRUPTED_EXIT
    if result.best_dir is None:
        print(f"\nerror: {result.failure}", file=sys.stderr)
        return NO_STUDENT_EXIT
    return 0


def _auto(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .data import DataError, bundled_dataset_path
    from .meta.cli_commands import DEFAULT_MODEL_DIR
    from .meta.model_files import ModelVersionError
    from .models import ModelLoadError
    from .search.space import SpaceError

    _quiet_libraries(args.verbose)
    data = args.data or str(bundled_dataset_path())
    if not args.data:
        print(f"no --data given: using the bundled dataset {data}", file=sys.stderr)
    try:
        from .auto import run_auto
        result = run_auto(data, args.out, args.model or DEFAULT_MODEL_DIR, space=args.space, trials=args.trials,
                          time_budget=args.time_budget, seeds=args.seeds, resume=args.resume,
                          verbose=args.verbose, max_train_examples=args.max_train_examples)
    except (ConfigError, DataError, ModelLoadError, SpaceError, ModelVersionError, FileNotFoundError,
            FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted_before_a_student(args.out, "auto")
    print(f"recommended pipelines ({result.recommend_seconds:.1f} s, meta-features included):")
    for r in result.recommendations[:args.seeds]:
        print(f"  {r['rank']:>2}. {r['candidate']:<36} predicted student/teacher {r['predicted_score']:.3f}"
              f" ± {r['uncertainty']:.3f}")
    print()
    return _report_search(result.search, args.out, "auto")


BUDGET_HELP = ("Budgets: --trials counts students (with `auto`, the recommended pipeline trained first is "
               "one of them); --time-budget is wall-clock seconds for training students (that first one, "
               "then the search); the teacher's fine-tune is not counted: it is timed and shown apart, and "
               "cached for the next run. A budget can end the search early; `auto` always keeps the "
               "recommended pipeline's student.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autodistill", description="AutoDistiller: knowledge distillation "
                                     "for text classifiers (after He et al. 2021, Distiller).")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("distill", help="distil a student from a teacher fine-tuned on a dataset")
    d.add_argument("--data", help="train file, dataset folder or HF datasets name (default: bundled CR)")
    d.add_argument("--validation", help="validation file (default: split off train with a fixed seed)")
    d.add_argument("--config", help="pipeline config, YAML or JSON")
    d.add_argument("--verbose", action="store_true", help="show transformers' own logs")
    d.add_argument("--out", required=True, type=Path, help="output folder")
    d.set_defaults(func=_distill)

    a = sub.add_parser("auto", help="recommend KD pipelines for a dataset, train the top one, search for a "
                       "better one with the rest of the budget, export the best student",
                       description="Recommend KD pipelines from the dataset's meta-features; train the top "
                       "recommendation to completion (outside ASHA: the student you get whatever the budget "
                       "does to the search); spend the rest of the budget on a TPE + ASHA search seeded with "
                       "the next recommendations; export the best completed student to OUT/best and print a "
                       "verdict. " + BUDGET_HELP)
    a.add_argument("--data", help="train file or dataset folder (default: bundled CR)")
    a.add_argument("--space", default="cpu-fast", help="preset name or YAML path of the search space")
    a.add_argument("--trials", type=int, default=8, help="students to train in all, the recommended one "
                   "included (default 8)")
    a.add_argument("--time-budget", type=float, default=600.0, help="wall-clock seconds for training students "
                   "(the recommended one, then the search), the teacher's fine-tune not included (default 600)")
    a.add_argument("--seeds", type=int, default=4, help="distinct recommendations used: the first is trained "
                   "first, the others seed the search")
    a.add_argument("--max-train-examples", type=int, help="train on a seeded, stratified subsample of this many "
                   "rows (default: all rows; the verdict says when a subsample was used)")
    a.add_argument("--model", type=Path, help="meta-model folder (default: meta_dataset/model)")
    a.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    a.add_argument("--verbose", action="store_true", help="show Ray's and transformers' own logs")
    a.add_argument("--out", required=True, type=Path, help="output folder")
    a.set_defaults(func=_auto)

    s = sub.add_parser("search", help="search the KD pipeline space with Ray Tune + Optuna (TPE) + ASHA",
                       description="Search a KD pipeline space; the best completed student goes to OUT/best. "
                       + BUDGET_HELP)
    s.add_argument("--data", help="train file or dataset folder (default: bundled CR)")
    s.add_argument("--space", default="cpu-fast", help="preset name (full, distiller, cpu-fast) or YAML path")
    s.add_argument("--trials", type=int, help="students to train (default: the space's budget)")
    s.add_argument("--time-budget", type=float, help="wall-clock seconds for training students, the teacher's "
                   "fine-tune not included (default: the space's)")
    s.add_argument("--max-train-examples", type=int, help="train on a seeded, stratified subsample of this many "
                   "rows (default: all rows)")
    s.add_argument("--address", help="Ray cluster address (default: start Ray in this process)")
    s.add_argument("--config", help="partial pipeline config (YAML/JSON) merged over the space's base, "
                   "e.g. another teacher backbone")
    s.add_argument("--warm-start", help="YAML/JSON list of seed configs in the space's parameter names")
    s.add_argument("--anchor", action="store_true", help="train the first --warm-start config to completion "
                   "before the search, outside ASHA, so a student exists whatever the budget does")
    s.add_argument("--resume", action="store_true", help="continue the interrupted search in --out")
    s.add_argument("--max-concurrent", type=int, help="trials run at once")
    s.add_argument("--cpus-per-trial", type=float)
    s.add_argument("--gpus-per-trial", type=float, help="GPUs per trial; a fraction (0.5) shares one GPU "
                   "between trials (default: 1 on a cluster with GPUs, 0 without)")
    s.add_argument("--trial-resources", type=json.loads, help='custom Ray resources each trial needs, JSON, '
                   'e.g. \'{"worker_only": 1}\'')
    s.add_argument("--storage-path", default=os.environ.get("AUTODISTILL_STORAGE_PATH"), help=(
        "where Tune keeps results and checkpoints (the best student among them): a URI every node reaches "
        "(s3://, gs://, file:// on shared storage); default $AUTODISTILL_STORAGE_PATH, else --out (one machine)"))
    s.add_argument("--seed", type=int, help="TPE sampler seed")
    s.add_argument("--verbose", action="store_true", help="show Ray's and transformers' own logs")
    s.add_argument("--out", required=True, type=Path, help="output folder (Ray results, records, best student)")
    s.set_defaults(func=_search)
    from .meta.cli import add_build_commands
    from .meta.cli_commands import add_meta_model_commands

    m = sub.add_parser("meta", help="the meta-dataset and the meta-model (recommender)")
    add_build_commands(m.add_subparsers(dest="meta_command", required=True))  # build, import-distiller
    add_meta_model_commands(sub)  # evaluate, fit (joining `meta`) and the top-level `recommend`
    for plugin in entry_points(group=COMMAND_PLUGINS):   # e.g. the REST service's serve, keys
        plugin.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # progress must reach a pipe or a log file as it happens, not at exit
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass   # not a text stream we can reconfigure (some test captures)
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
