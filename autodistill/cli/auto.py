"""`autodistill auto`: recommend KD pipelines for a dataset, train the top one, search with the rest of
the budget, export the best student."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..auto import run_auto
from ..config import ConfigError
from ..data import DataError
from ..meta.fitting import DEFAULT_MODEL_DIR
from ..meta.model_files import ModelVersionError
from ..meta.recommender import prediction_text
from ..resources import ResourceError
from ..search.space import SpaceError
from .common import (BUDGET_HELP, Commands, OutDirError, data_or_bundled, interrupted_before_a_student, is_search_out,
                     positive_float, positive_int, prepare_out_dir, quiet_libraries, report_search,
                     space_data_train)


def register(commands: Commands) -> None:
    a = commands.add_parser("auto", help="recommend KD pipelines for a dataset, train the top one, search for a "
                            "better one with the rest of the budget, export the best student",
                            description="Recommend KD pipelines from the dataset's meta-features; train the top "
                            "recommendation to completion (outside ASHA: the student you get whatever the budget "
                            "does to the search); spend the rest of the budget on a TPE + ASHA search seeded with "
                            "the next recommendations; export the best completed student to OUT/best and print a "
                            "verdict. " + BUDGET_HELP)
    a.add_argument("--data", help="train file or dataset folder (default: bundled CR)")
    a.add_argument("--space", default="cpu-fast", help="preset name or YAML path of the search space")
    a.add_argument("--trials", type=positive_int, default=8, help="students to train in all, the recommended one "
                   "included (default 8)")
    a.add_argument("--time-budget", type=positive_float, default=600.0, help="wall-clock seconds for training "
                   "students (the recommended one, then the search), the teacher's fine-tune not included "
                   "(default 600)")
    a.add_argument("--seeds", type=positive_int, default=4, help="distinct recommendations used: the first is "
                   "trained first, the others seed the search")
    a.add_argument("--max-train-examples", type=positive_int, help="train on a seeded, stratified subsample of "
                   "this many rows (default: all rows; the verdict says when a subsample was used)")
    a.add_argument("--model", type=Path, help="meta-model folder (default: meta_dataset/model)")
    a.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    a.add_argument("--verbose", action="store_true", help="show Ray's and transformers' own logs")
    a.add_argument("--out", required=True, type=Path, help="output folder")
    a.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models import ModelLoadError  # torch (~4 s): only when `auto` runs, not for --help or the others

    quiet_libraries(args.verbose)
    try:
        data = data_or_bundled(args.data, space_data_train(args.space))
        prepare_out_dir(args.out, owns=is_search_out, inputs=(args.data, args.space), resume=args.resume)
        result = run_auto(data, args.out, args.model or DEFAULT_MODEL_DIR, space=args.space, trials=args.trials,
                          time_budget=args.time_budget, seeds=args.seeds, resume=args.resume,
                          verbose=args.verbose, max_train_examples=args.max_train_examples)
    except (ConfigError, DataError, ModelLoadError, SpaceError, ModelVersionError, ResourceError, OutDirError,
            FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return interrupted_before_a_student(args.out, "auto")
    print(f"recommended pipelines ({result.recommend_seconds:.1f} s, meta-features included):")
    for r in result.recommendations[:args.seeds]:
        print(f"  {r['rank']:>2}. {r['candidate']:<36} predicted student/teacher "
              f"{prediction_text(r['predicted_score'], r['uncertainty'], 3)}")
    print()
    return report_search(result.search, args.out, "auto")
