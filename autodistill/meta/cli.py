"""Argument parsers and handlers of `autodistill meta build` and `autodistill meta import-distiller`.

:func:`add_build_commands` registers them on the `meta` sub-command group (built in autodistill/cli.py);
heavy imports happen inside the handlers.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import DATASETS_DIR, META_DATASET_DIR


def _build(args: argparse.Namespace) -> int:
    from .build import build

    try:
        override = json.loads(args.preset_override) if args.preset_override else None
        if override is not None and not isinstance(override, dict):
            raise ValueError("--preset-override must be a JSON object")
        datasets = [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets else None
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
        summary = build(args.datasets_root, datasets=datasets, portfolio=args.portfolio, out=args.out,
                        limit=args.limit, preset_override=override, seeds=seeds,
                        backbone=None if args.no_backbone else "default")
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    per_run = (sum(summary.run_seconds) / len(summary.run_seconds)) if summary.run_seconds else 0.0
    print(f"ran {summary.ran} runs ({summary.failed} failed, {summary.skipped_done} already done, "
          f"{summary.not_applicable} not applicable) in {summary.seconds:.0f} s; mean {per_run:.0f} s per run")
    return 1 if summary.failed else 0


def _import_distiller(args: argparse.Namespace) -> int:
    from .distiller_import import import_distiller

    try:
        result = import_distiller(args.anchors, args.datasets_root, args.out,
                                  backbone=None if args.no_backbone else "default")
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{result['records']} records for {len(result['tasks'])} tasks written to {result['out']}")
    return 0


def add_build_commands(meta_sub) -> None:
    b = meta_sub.add_parser("build", help="run the portfolio on the datasets (resumable) into meta_dataset/runs")
    b.add_argument("--datasets-root", default=DATASETS_DIR, type=Path,
                   help="folder of dataset folders (default: the repository's meta_dataset/datasets)")
    b.add_argument("--datasets", help="comma-separated dataset names (default: DEFAULT_DATASETS)")
    b.add_argument("--portfolio", default="all", help="'all' or comma-separated candidate names")
    b.add_argument("--out", default=META_DATASET_DIR / "runs", type=Path, help="records folder")
    b.add_argument("--limit", type=int, help="run at most N runs in this invocation")
    b.add_argument("--seeds", help="comma-separated student seeds (default: the preset's)")
    b.add_argument("--preset-override", help="JSON merged over META_PRESET, e.g. "
                   "'{\"data\": {\"max_train_examples\": 200}}'")
    b.add_argument("--no-backbone", action="store_true", help="meta-features without the backbone embeddings")
    b.set_defaults(func=_build)

    d = meta_sub.add_parser("import-distiller", help="import the Distiller paper's released runs")
    d.add_argument("--anchors", default=META_DATASET_DIR / "distiller" / "source", type=Path,
                   help="folder of the Distiller paper's released CSVs (default: meta_dataset/distiller/source)")
    d.add_argument("--datasets-root", default=DATASETS_DIR, type=Path,
                   help="folder of dataset folders (default: meta_dataset/datasets)")
    d.add_argument("--out", default=META_DATASET_DIR / "distiller", type=Path)
    d.add_argument("--no-backbone", action="store_true", help="meta-features without the backbone embeddings")
    d.set_defaults(func=_import_distiller)
