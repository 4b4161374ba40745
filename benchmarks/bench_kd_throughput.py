"""Student training throughput: (a) student alone, (b) KD with cached teacher outputs, (c) KD running the
teacher every step. Measured side by side in one run on the same data, model and settings.

    .venv/bin/python benchmarks/bench_kd_throughput.py [--teacher-backbone default] [--max-train 1024]

The ratio (b)/(a) is the figure that matters: a KD run should cost little more than training alone.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from autodistill.config import parse_config  # noqa: E402
from autodistill.data import bundled_dataset_path  # noqa: E402
from autodistill.distill import run_distillation  # noqa: E402


def run(base: dict, mode: str) -> dict:
    cfg = dict(base)
    if mode == "alone":
        cfg["loss"] = {"hard_label_weight": 1.0, "prediction": {"weight": 0.0}}
    result = run_distillation(parse_config(cfg), teacher_outputs_mode="online" if mode == "online" else "cached")
    return result.metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher-backbone", default="default")
    ap.add_argument("--max-train", type=int, default=1024)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="alternating repeats; best time is kept")
    args = ap.parse_args()
    base = {"data": {"train": str(bundled_dataset_path()), "max_train_examples": args.max_train,
                     "max_length": args.max_length},
            "teachers": [{"backbone": args.teacher_backbone, "epochs": 1}],
            "optim": {"epochs": args.epochs, "evals_per_epoch": 1}}
    run(base, "cached")  # fine-tunes (or loads) the teacher once, outside the timing
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for mode in ("alone", "cached", "online"):
            m = run(base, mode)
            best[mode] = max(best.get(mode, 0.0), m["train_examples_per_second"])
    print(f"torch threads: {torch.get_num_threads()}, train examples: {args.max_train}, "
          f"max_length: {args.max_length}, backbone: {args.teacher_backbone}")
    print("| run | student training examples/s | ratio to (a) |")
    print("|---|---|---|")
    names = {"alone": "(a) student alone", "cached": "(b) KD, cached teacher outputs",
             "online": "(c) KD, teacher run every step"}
    for mode in ("alone", "cached", "online"):
        print(f"| {names[mode]} | {best[mode]:.1f} | {best[mode] / best['alone']:.2f} |")


if __name__ == "__main__":
    t = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t:.0f} s")
