"""`autodistill search`: search the KD pipeline space with Ray Tune + Optuna (TPE) + ASHA."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..config import ConfigError, load_config_dict
from ..data import DataError
from ..meta.features import search_meta_features
from ..resources import ResourceError, watch_memory
from ..search.driver import SearchRequest, run_search
from ..search.space import SpaceError
from .common import (BUDGET_HELP, Commands, OutDirError, data_or_bundled, interrupted_before_a_student, is_search_out,
                     non_negative_float, positive_float, positive_int, prepare_out_dir, quiet_libraries, report_search,
                     space_data_train)


def register(commands: Commands) -> None:
    s = commands.add_parser("search", help="search the KD pipeline space with Ray Tune + Optuna (TPE) + ASHA",
                            description="Search a KD pipeline space; the best completed student goes to OUT/best. "
                            + BUDGET_HELP)
    s.add_argument("--data", help="train file or dataset folder (default: bundled CR)")
    s.add_argument("--space", default="cpu-fast", help="preset name (full, distiller, cpu-fast) or YAML path")
    s.add_argument("--trials", type=positive_int, help="students to train (default: the space's budget)")
    s.add_argument("--time-budget", type=positive_float, help="wall-clock seconds for training students, the teacher's "
                   "fine-tune not included (default: the space's)")
    s.add_argument("--max-train-examples", type=positive_int, help="train on a seeded, stratified subsample of "
                   "this many rows (default: all rows)")
    s.add_argument("--address", help="Ray cluster address (default: start Ray in this process)")
    s.add_argument("--config", help="partial pipeline config (YAML/JSON) merged over the space's base, "
                   "e.g. another teacher backbone")
    s.add_argument("--warm-start", help="YAML/JSON list of seed configs in the space's parameter names")
    s.add_argument("--anchor", action="store_true", help="train the first --warm-start config to completion "
                   "before the search, outside ASHA, so a student exists whatever the budget does")
    s.add_argument("--resume", action="store_true", help="continue the interrupted search in --out")
    s.add_argument("--max-concurrent", type=positive_int, help="trials run at once")
    s.add_argument("--cpus-per-trial", type=positive_float)
    s.add_argument("--gpus-per-trial", type=non_negative_float, help="GPUs per trial; a fraction (0.5) shares one GPU "
                   "between trials (default: 1 on a cluster with GPUs, 0 without)")
    s.add_argument("--trial-resources", type=json.loads, help='custom Ray resources each trial needs, JSON, '
                   'e.g. \'{"worker_only": 1}\'')
    s.add_argument("--memory-per-trial", type=positive_float, metavar="GIB", help="memory each trial asks Ray for "
                   "and may hold, in GiB: a trial that holds more fails with an error naming it (default: no limit)")
    s.add_argument("--driver-memory", type=positive_float, metavar="GIB", help="the most memory this process (the "
                   "driver: data, teacher fine-tune, the anchor student) may hold, in GiB: above it, it exits "
                   "saying so (default: no limit)")
    s.add_argument("--storage-path", default=os.environ.get("AUTODISTILL_STORAGE_PATH"), help=(
        "where Tune keeps results and checkpoints (the best student among them): a URI every node reaches "
        "(s3://, gs://, file:// on shared storage); default $AUTODISTILL_STORAGE_PATH, else --out (one machine)"))
    s.add_argument("--seed", type=int, help="TPE sampler seed")
    s.add_argument("--verbose", action="store_true", help="show Ray's and transformers' own logs")
    s.add_argument("--out", required=True, type=Path, help="output folder (Ray results, records, best student)")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models import ModelLoadError  # torch (~4 s): only when a search runs, not for --help or the others

    quiet_libraries(args.verbose)
    if args.driver_memory:
        watch_memory(args.driver_memory, "--driver-memory")
    try:
        check_warm_start(args)
        overrides = load_config_dict(args.config) if args.config else None
        # with --storage-path the search's state lives there, not in --out (a resubmitted cluster job's is new)
        prepare_out_dir(args.out, owns=is_search_out, inputs=(args.config, args.warm_start, args.data, args.space),
                        resume=args.resume and not args.storage_path)
        configured = (overrides or {}).get("data", {}).get("train") or space_data_train(args.space)
        data: str | dict = data_or_bundled(args.data, configured)
        if args.max_train_examples:
            data = {"train": data, "max_train_examples": args.max_train_examples}
        result = run_search(SearchRequest(
            data, args.space, args.out, trials=args.trials, time_budget=args.time_budget,
            overrides=overrides, anchor=args.anchor,
            address=args.address, warm_start=args.warm_start, resume=args.resume,
            max_concurrent_trials=args.max_concurrent, cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial, seed=args.seed, verbose=args.verbose,
            storage_path=args.storage_path, trial_resources=args.trial_resources,
            memory_gb_per_trial=args.memory_per_trial, meta_features=search_meta_features))
    except (ConfigError, DataError, ModelLoadError, SpaceError, ResourceError, OutDirError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ConnectionError as err:
        print(f"error: {err}. Is the cluster running? Ray 2.60 clusters use token authentication: "
              "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return interrupted_before_a_student(args.out, "search")
    return report_search(result, args.out, "search")


def check_warm_start(args: argparse.Namespace) -> None:
    """--warm-start names a file; --anchor trains its first point, so needs it."""
    if args.anchor and not args.warm_start:
        raise ConfigError("--anchor trains the first --warm-start config before the search: give --warm-start "
                          "too, or drop --anchor")
    if args.warm_start and not Path(args.warm_start).is_file():
        raise ConfigError(f"--warm-start {args.warm_start}: no such file")
