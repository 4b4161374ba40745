"""`autodistill distill`: distil one student from a teacher fine-tuned on a dataset."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import ConfigError, PipelineConfig, load_config
from ..data import DataError
from ..progress import EventLog
from .common import INTERRUPTED_EXIT, Commands, OutDirError, data_or_bundled, prepare_out_dir, quiet_libraries

#: what `distill` writes to --out: a folder holding only these is a previous run's, replaced by this one
DISTILL_OUTPUTS = frozenset({"student", "metrics.json", "config.yaml"})


def register(commands: Commands) -> None:
    d = commands.add_parser("distill", help="distil a student from a teacher fine-tuned on a dataset")
    d.add_argument("--data", help="train file, dataset folder or HF datasets name (default: bundled CR)")
    d.add_argument("--validation", help="validation file (default: split off train with a fixed seed)")
    d.add_argument("--config", help="pipeline config, YAML or JSON")
    d.add_argument("--verbose", action="store_true", help="show transformers' own logs")
    d.add_argument("--out", required=True, type=Path, help="output folder")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # the engine (torch, ~4 s): only when a student is distilled, not for --help or the other commands
    from ..distill import add_latency, export, format_report, run_distillation
    from ..models import ModelLoadError

    quiet_libraries(args.verbose)
    try:
        cfg = load_config(args.config) if args.config else PipelineConfig()
        # before the teacher's fine-tune, not after it
        prepare_out_dir(args.out, owns=DISTILL_OUTPUTS.issuperset, inputs=(args.config, args.data, args.validation))
        data = data_or_bundled(args.data, cfg.data.train)
        updates = {"train": data}
        if args.validation:
            updates["validation"] = args.validation
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=updates)})
        cfg = PipelineConfig.model_validate(cfg.to_dict())  # re-validate the merged config
        result = run_distillation(cfg, events=EventLog())
        add_latency(result)
        out = export(result, args.out)
    except (ConfigError, DataError, ModelLoadError, OutDirError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: no student was written to {args.out}. Run the same command again to start over "
              "(a teacher already fine-tuned is cached and reused; one interrupted mid-way resumes from its last "
              "evaluation).", file=sys.stderr)
        return INTERRUPTED_EXIT
    print(format_report(result.metrics))
    print(f"\nstudent, metrics.json and config.yaml written to {out}")
    return 0
