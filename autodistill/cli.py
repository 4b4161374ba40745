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
        result = run_distillation(cfg)
        add_latency(result)
        out = export(result, args.out)
    except (ConfigError, DataError, ModelLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(result.metrics))
    print(f"\nstudent, metrics.json and config.yaml written to {out}")
    return 0


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
