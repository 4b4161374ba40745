"""Argument parsers and handlers of `autodistill meta build`, `meta status` and `autodistill meta import-distiller`.

:func:`add_build_commands` registers them on the `meta` sub-command group (built in autodistill/cli.py);
heavy imports happen inside the handlers.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import DATASETS_DIR, META_DATASET_DIR
from .portfolio import STUDENT_PRESETS

#: where a new build writes: the v1 records (meta_dataset/runs, the old preset) are no longer the default
V2_RUNS = META_DATASET_DIR / "v2" / "runs"


def _dataset_names(args: argparse.Namespace) -> list[str] | None:
    """``--datasets a,b`` as a list; None when not given (the build's default datasets)."""
    return [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets else None


def _build_in_workers(args: argparse.Namespace, argv_tail: list[str]) -> int:
    """``workers`` single-threaded ``meta build`` processes over the same datasets: each takes the next
    dataset no other process has claimed (see ``build._claim``), so they never run the same dataset
    and none idles while another has datasets left. On a CPU machine two 1-thread processes finish
    more runs per hour than one process with two threads."""
    import os
    import subprocess

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
    argv = ["--datasets-root", str(args.datasets_root), "--portfolio", args.portfolio, "--out", str(args.out)]
    for flag, value in (("--limit", args.limit), ("--seeds", args.seeds), ("--preset-override", args.preset_override),
                        ("--sizes", args.sizes), ("--student", args.student)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + (["--no-backbone"] if args.no_backbone else [])


def _build(args: argparse.Namespace) -> int:
    from .build import build

    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1:
        return _build_in_workers(args, _worker_argv(args))
    try:
        override = json.loads(args.preset_override) if args.preset_override else None
        if override is not None and not isinstance(override, dict):
            raise ValueError("--preset-override must be a JSON object")
        datasets = _dataset_names(args)
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
        sizes = [int(n) for n in args.sizes.split(",")] if args.sizes else [None]
        summaries = [build(args.datasets_root, datasets=datasets, portfolio=args.portfolio, out=args.out,
                           limit=args.limit, preset_override=override, seeds=seeds,
                           backbone=None if args.no_backbone else "default", train_size=size,
                           student=args.student) for size in sizes]
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = sum(summaries[1:], summaries[0])
    per_run = (sum(summary.run_seconds) / len(summary.run_seconds)) if summary.run_seconds else 0.0
    print(f"ran {summary.ran} runs ({summary.failed} failed, {summary.skipped_done} already done, "
          f"{summary.not_applicable} not applicable) in {summary.seconds:.0f} s; mean {per_run:.0f} s per run")
    return 1 if summary.failed else 0


def _status(args: argparse.Namespace) -> int:
    from .build import status

    datasets = _dataset_names(args)
    try:
        st = status(args.out, datasets=datasets, portfolio=args.portfolio, train_size=args.size, student=args.student)
    except KeyError as err:
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
    b = meta_sub.add_parser("build", help="run the portfolio on the datasets (resumable) into meta_dataset/v2/runs")
    b.add_argument("--datasets-root", default=DATASETS_DIR, type=Path,
                   help="folder of dataset folders (default: the repository's meta_dataset/datasets)")
    b.add_argument("--datasets", help="comma-separated dataset names (default: DEFAULT_DATASETS)")
    b.add_argument("--portfolio", default="all", help="'all' or comma-separated candidate names")
    b.add_argument("--out", default=V2_RUNS, type=Path, help="records folder (default: meta_dataset/v2/runs; "
                   "meta_dataset/runs holds the old v1 preset's records)")
    b.add_argument("--limit", type=int, help="run at most N runs in this invocation")
    b.add_argument("--seeds", help="comma-separated student seeds (default: the preset's)")
    b.add_argument("--preset-override", help="JSON merged over META_PRESET, e.g. "
                   "'{\"data\": {\"max_train_examples\": 200}}'")
    b.add_argument("--no-backbone", action="store_true", help="meta-features without the backbone embeddings")
    b.add_argument("--sizes", help="comma-separated train sizes (rows, a seeded subsample; the whole train when "
                   "smaller): each dataset becomes one context per size, '<dataset>@n<size>'")
    b.add_argument("--student", choices=sorted(STUDENT_PRESETS), help="student preset (a context dimension, "
                   "'<context>@<student>'); default: the preset's")
    b.add_argument("--workers", type=int, default=1,
                   help="single-threaded build processes sharing the datasets, one dataset each at a time "
                        "(--limit is per worker); 2 on a 2-core machine")
    b.set_defaults(func=_build)

    s = meta_sub.add_parser("status", help="progress of the build: runs recorded and missing, compute spent, ETA")
    s.add_argument("--datasets", help="comma-separated dataset names (default: DEFAULT_DATASETS)")
    s.add_argument("--portfolio", default="all", help="'all' or comma-separated candidate names")
    s.add_argument("--out", default=V2_RUNS, type=Path, help="records folder (v1: meta_dataset/runs)")
    s.add_argument("--size", type=int, help="the train size of the contexts to report on")
    s.add_argument("--student", choices=sorted(STUDENT_PRESETS), help="the student preset of the contexts")
    s.add_argument("--processes", type=int, default=2, help="build processes running in parallel (for the ETA)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_status)

    d = meta_sub.add_parser("import-distiller", help="import the Distiller paper's released runs")
    d.add_argument("--anchors", default=META_DATASET_DIR / "distiller" / "source", type=Path,
                   help="folder of the Distiller paper's released CSVs (default: meta_dataset/distiller/source)")
    d.add_argument("--datasets-root", default=DATASETS_DIR, type=Path,
                   help="folder of dataset folders (default: meta_dataset/datasets)")
    d.add_argument("--out", default=META_DATASET_DIR / "distiller", type=Path)
    d.add_argument("--no-backbone", action="store_true", help="meta-features without the backbone embeddings")
    d.set_defaults(func=_import_distiller)
