"""Command line: `autodistill distill ...`."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _distill(args: argparse.Namespace) -> int:
    from .config import ConfigError, PipelineConfig, load_config
    from .data import DataError, bundled_dataset_path
    from .distill import add_latency, export, format_report, run_distillation
    from .models import ModelLoadError

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
        result = run_distillation(cfg, log_events=True)
        add_latency(result)
        out = export(result, args.out)
    except (ConfigError, DataError, ModelLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(result.metrics))
    print(f"\nstudent, metrics.json and config.yaml written to {out}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .data import DataError, bundled_dataset_path
    from .models import ModelLoadError
    from .search.space import SpaceError

    data = args.data or str(bundled_dataset_path())
    if not args.data:
        print(f"no --data given: using the bundled dataset {data}", file=sys.stderr)
    try:
        from .config import load_config_dict
        from .search.runner import run_search
        overrides = load_config_dict(args.config) if args.config else None
        result = run_search(data, args.space, args.out, trials=args.trials, time_budget=args.time_budget,
                            overrides=overrides,
                            address=args.address, warm_start=args.warm_start, resume=args.resume,
                            max_concurrent_trials=args.max_concurrent, cpus_per_trial=args.cpus_per_trial,
                            gpus_per_trial=args.gpus_per_trial, seed=args.seed, verbose=args.verbose)
    except (ConfigError, DataError, ModelLoadError, SpaceError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ConnectionError as err:
        print(f"error: {err}. Is the cluster running? Ray 2.60 clusters use token authentication: "
              "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token.", file=sys.stderr)
        return 2
    return _report_search(result, args.out)


def _report_search(result, out: Path) -> int:
    """Leaderboard, teacher score, best student; exit code 130 for an interrupted search."""
    from .search.runner import format_leaderboard
    print(format_leaderboard(result.trials))
    teacher = f"{result.teacher_score:.4f}" if result.teacher_score is not None else "-"
    print(f"\nteacher score {teacher}; {len(result.trials)} trials in {result.wall_seconds:.0f} s; "
          f"records: {result.records_path}")
    if result.best_dir:
        print(f"best student (score {result.best_score:.4f}) exported to {result.best_dir}")
    if result.interrupted:
        print(f"search stopped before its budget: continue it with --resume --out {out}", file=sys.stderr)
        return 130
    return 0


def _auto(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .data import DataError, bundled_dataset_path
    from .meta.cli_commands import DEFAULT_MODEL_DIR
    from .meta.model import ModelVersionError
    from .models import ModelLoadError
    from .search.space import SpaceError

    data = args.data or str(bundled_dataset_path())
    if not args.data:
        print(f"no --data given: using the bundled dataset {data}", file=sys.stderr)
    try:
        from .auto import run_auto
        result = run_auto(data, args.out, args.model or DEFAULT_MODEL_DIR, space=args.space, trials=args.trials,
                          time_budget=args.time_budget, seeds=args.seeds, resume=args.resume)
    except (ConfigError, DataError, ModelLoadError, SpaceError, ModelVersionError, FileNotFoundError,
            FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"recommended pipelines ({result.recommend_seconds:.1f} s, meta-features included):")
    for r in result.recommendations[:args.seeds]:
        print(f"  {r['rank']:>2}. {r['candidate']:<36} predicted student/teacher {r['predicted_score']:.3f}"
              f" ± {r['uncertainty']:.3f}")
    print(f"\nsearch warm-started with {len(result.warm_start)} of them:")
    return _report_search(result.search, args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autodistill", description="AutoDistiller: knowledge distillation "
                                     "for text classifiers (after He et al. 2021, Distiller).")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("distill", help="distil a student from a teacher fine-tuned on a dataset")
    d.add_argument("--data", help="train file, dataset folder or HF datasets name (default: bundled CR)")
    d.add_argument("--validation", help="validation file (default: split off train with a fixed seed)")
    d.add_argument("--config", help="pipeline config, YAML or JSON")
    d.add_argument("--out", required=True, type=Path, help="output folder")
    d.set_defaults(func=_distill)

    a = sub.add_parser("auto", help="recommend KD pipelines for a dataset, run a short search seeded with them, "
                       "export the best student")
    a.add_argument("--data", help="train file or dataset folder (default: bundled CR)")
    a.add_argument("--space", default="cpu-fast", help="preset name or YAML path of the search space")
    a.add_argument("--trials", type=int, default=8)
    a.add_argument("--time-budget", type=float, default=600.0, help="seconds for the search")
    a.add_argument("--seeds", type=int, default=4, help="recommendations that seed the search")
    a.add_argument("--model", type=Path, help="meta-model folder (default: meta_dataset/model)")
    a.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    a.add_argument("--out", required=True, type=Path, help="output folder")
    a.set_defaults(func=_auto)

    s = sub.add_parser("search", help="search the KD pipeline space with Ray Tune + Optuna (TPE) + ASHA")
    s.add_argument("--data", help="train file or dataset folder (default: bundled CR)")
    s.add_argument("--space", default="cpu-fast", help="preset name (full, distiller, cpu-fast) or YAML path")
    s.add_argument("--trials", type=int, help="number of trials (default: the space's budget)")
    s.add_argument("--time-budget", type=float, help="seconds for the whole search (default: the space's)")
    s.add_argument("--address", help="Ray cluster address (default: start Ray in this process)")
    s.add_argument("--config", help="partial pipeline config (YAML/JSON) merged over the space's base, "
                   "e.g. another teacher backbone")
    s.add_argument("--warm-start", help="YAML/JSON list of seed configs in the space's parameter names")
    s.add_argument("--resume", action="store_true", help="continue the interrupted search in --out")
    s.add_argument("--max-concurrent", type=int, help="trials run at once")
    s.add_argument("--cpus-per-trial", type=float)
    s.add_argument("--gpus-per-trial", type=float)
    s.add_argument("--seed", type=int, help="TPE sampler seed")
    s.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    s.add_argument("--out", required=True, type=Path, help="output folder (Ray results, records, best student)")
    s.set_defaults(func=_search)
    from .meta.cli import add_build_commands
    from .meta.cli_commands import add_meta_model_commands

    m = sub.add_parser("meta", help="the meta-dataset and the meta-model (recommender)")
    add_build_commands(m.add_subparsers(dest="meta_command", required=True))  # build, import-distiller
    add_meta_model_commands(sub)  # evaluate, fit (joining `meta`) and the top-level `recommend`
    from service.cli import add_service_commands
    add_service_commands(sub)     # serve, keys
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
