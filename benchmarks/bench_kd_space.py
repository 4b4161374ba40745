"""Time per epoch of each KD family relative to vanilla KD, in one run, on the CPU defaults.

Every method runs on the same data with the same (cached) teacher and the default pipeline config;
only the family's own options change. The teacher is fine-tuned (or loaded from the cache) by a
warm-up run (untimed vanilla KD) before anything is timed.

    .venv/bin/python benchmarks/bench_kd_space.py                       # defaults: < 10 min on 2 cores
    .venv/bin/python benchmarks/bench_kd_space.py --max-train 300 --epochs 1 --threads 1

Columns: ``s/epoch`` is the student's training loop per epoch without the validation passes;
``setup s`` is the rest of the run (data, student, teacher-output cache, the first augmentation
round, final evaluation) -- where augmentation pays most of its cost when copies are made once.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from autodistill.callbacks import Callback  # noqa: E402
from autodistill.config import parse_config  # noqa: E402
from autodistill.data import bundled_dataset_path  # noqa: E402
from autodistill.distill import run_distillation  # noqa: E402

METHODS: dict[str, dict[str, Any]] = {
    "vanilla KD": {},
    "+ random augmentation (copies 1)": {"augmentation": {"augmenters": [{"name": "random"}], "copies": 1}},
    "+ contextual augmentation": {"augmentation": {"augmenters": [{"name": "contextual"}], "copies": 1}},
    "+ mixup": {"mixup": {"enabled": True}},
    "annealing KD": {"loss": {"prediction": {"type": "annealing"}}},
    "intermediate mse (skip)": {"loss": {"intermediate": {"objective": "mse", "mapping": "skip"}}},
    "intermediate pkd (skip)": {"loss": {"intermediate": {"objective": "pkd", "mapping": "skip"}}},
    "intermediate mi_alpha mlp (skip)": {"loss": {"intermediate": {"objective": "mi_alpha", "critic": "mlp"}}},
    "intermediate mi_alpha transformer (skip)": {
        "loss": {"intermediate": {"objective": "mi_alpha", "critic": "transformer"}}},
    "intermediate rail_l (random)": {"loss": {"intermediate": {"objective": "rail_l", "mapping": "random"}}},
    "intermediate mse (emd)": {"loss": {"intermediate": {"objective": "mse", "mapping": "emd"}}},
}


class EvalTimer(Callback):
    """Seconds spent in validation passes inside the training loop (to subtract from train_seconds)."""

    def __init__(self):
        self.eval_seconds = 0.0
        self._mark = time.perf_counter()

    def on_train_begin(self, state, **kw):
        self._mark = time.perf_counter()

    def on_step_end(self, state, loss, **kw):
        self._mark = time.perf_counter()

    def on_evaluate(self, state, metrics, **kw):
        now = time.perf_counter()
        self.eval_seconds += now - self._mark
        self._mark = now


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def base_config(args: argparse.Namespace) -> dict:
    data: dict[str, Any] = {"train": args.data or str(bundled_dataset_path())}
    if args.max_train:
        data["max_train_examples"] = args.max_train
    if args.max_length:
        data["max_length"] = args.max_length
    return {"data": data, "teachers": [{"backbone": args.teacher_backbone}],
            "optim": {"epochs": args.epochs, "device": "cpu"}}


def run_method(base: dict, extra: dict) -> dict[str, float]:
    timer = EvalTimer()
    started = time.perf_counter()
    result = run_distillation(parse_config(merge(base, extra)), callbacks=[timer])
    wall = time.perf_counter() - started
    m = result.metrics
    loop = m["train_seconds"] - timer.eval_seconds
    return {"s_per_epoch": loop / max(m["epochs"], 1e-9), "setup": wall - loop, "score": m["student_score"],
            "metric": m["metric"], "examples": m["train_examples"], "teacher_score": m["teacher_score"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher-backbone", default="default", help="'default' = the shipped MiniLM-L6")
    p.add_argument("--data", default=None, help="dataset (default: the bundled CR data)")
    p.add_argument("--max-train", type=int, default=200, help="seeded training subsample (0 = all)")
    p.add_argument("--max-length", type=int, default=0, help="0 = the config default")
    p.add_argument("--epochs", type=float, default=1.0, help="student epochs per method")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--methods", default="", help="comma-separated subset of: " + "; ".join(METHODS))
    args = p.parse_args(argv)
    if args.threads:  # run_distillation sets torch's threads from OMP_NUM_THREADS (else the core count)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.methods.split(",") if n.strip()] or list(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if "vanilla KD" not in names:
        names.insert(0, "vanilla KD")

    base = base_config(args)
    started = time.perf_counter()
    # warm-up: fine-tune (or load) the teacher and run vanilla KD once untimed, so that nothing below pays
    # for the teacher or for the CPU kernels' first-use set-up at each padded sequence length
    warm = run_distillation(parse_config(base))
    print(f"teacher {args.teacher_backbone!r}: {warm.metrics['metric']} {warm.metrics['teacher_score']:.4f} "
          f"({'cache' if warm.metrics['teacher_from_cache'][0] else 'trained'}, "
          f"{time.perf_counter() - started:.1f} s); {warm.metrics['train_examples']} train / "
          f"{warm.metrics['validation_examples']} validation examples; torch threads {torch.get_num_threads()}",
          file=sys.stderr)

    rows = {}
    for name in names:
        t = time.perf_counter()
        rows[name] = run_method(base, METHODS[name])
        print(f"  {name}: {time.perf_counter() - t:.1f} s", file=sys.stderr)

    vanilla = rows["vanilla KD"]["s_per_epoch"]
    metric = rows["vanilla KD"]["metric"]
    print(f"| method | s/epoch | vs vanilla | setup s | student {metric} |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['s_per_epoch']:.2f} | {r['s_per_epoch'] / vanilla:.2f}x | {r['setup']:.1f} "
              f"| {r['score']:.4f} |")
    print(f"\n{args.epochs:g} student epoch(s), {rows['vanilla KD']['examples']} training examples, "
          f"teacher {args.teacher_backbone!r}, total {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
