"""Adaptive distillation costs, in one run on the same data, teacher and student settings:

(a) Dynamic KD data selection with the teacher running on the fly: trial time with KD on the top
    r = 0.1 of each batch (selection 'entropy') vs r = 1 (selection 'none');
(b) RW-KD's meta-learned λ vs fixed-λ KD (cached teacher outputs): the look-ahead's overhead;
(c) Dynamic KD r = 0.1 with and without RW-KD, teacher on the fly: the look-ahead shares the step's KD
    subset and teacher outputs, so the teacher forward examples per trained example stay ≈ r.

    .venv/bin/python benchmarks/bench_adaptive.py [--teacher-backbone default] [--max-train 400] [--epochs 1]

The teacher is fine-tuned once (cached under $AUTODISTILL_CACHE) before any timing. "train s" is the
trainer's metrics['train_seconds'] (the whole training loop, its validation passes included);
"step s" leaves the validation passes out.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from autodistill.callbacks import Callback  # noqa: E402
from autodistill.config import parse_config  # noqa: E402
from autodistill.data import bundled_dataset_path  # noqa: E402
from autodistill.distill import run_distillation  # noqa: E402


class EvalTimer(Callback):
    """Time spent in validation passes (between a step's end and the evaluation's report)."""

    def __init__(self) -> None:
        self.last = 0.0
        self.eval_seconds = 0.0

    def on_train_begin(self, state, **kw) -> None:
        self.last, self.eval_seconds = time.perf_counter(), 0.0

    def on_step_end(self, state, loss, **kw) -> None:
        self.last = time.perf_counter()

    def on_evaluate(self, state, metrics, **kw) -> None:
        self.eval_seconds += time.perf_counter() - self.last


VARIANTS = {
    "r1": ("(a) KD r=1, teacher online", "online",
           {"dynamic": {"selection": "none"}}),
    "r01": ("(a) KD r={ratio} entropy, teacher online", "online",
            {"dynamic": {"selection": "entropy"}}),  # selection_ratio from --ratio
    "fixed": ("(b) fixed λ=0.5, cached", "cached",
              {"weighting": {"strategy": "fixed", "lambda_kd": 0.5}}),
    "rwkd": ("(b) RW-KD, cached", "cached",
             {"weighting": {"strategy": "rw_kd", "lambda_kd": 0.5}}),
    "r01_rwkd": ("(c) KD r={ratio} entropy + RW-KD, teacher online", "online",
                 {"dynamic": {"selection": "entropy"}, "weighting": {"strategy": "rw_kd", "lambda_kd": 0.5}}),
}


def run(base: dict, key: str, ratio: float) -> dict:
    _, mode, extra = VARIANTS[key]
    cfg = {**base, **extra}
    if key in ("r01", "r01_rwkd"):
        cfg["dynamic"] = {**extra["dynamic"], "selection_ratio": ratio}
    timer = EvalTimer()
    m = run_distillation(parse_config(cfg), callbacks=[timer], teacher_outputs_mode=mode).metrics
    m["step_seconds"] = m["train_seconds"] - timer.eval_seconds
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher-backbone", default="default", help="'default' = the shipped MiniLM-L6")
    ap.add_argument("--teacher-epochs", type=float, default=2.0)
    ap.add_argument("--teacher-lr", type=float, default=1e-4)
    ap.add_argument("--max-train", type=int, default=400, help="seeded subsample of the bundled train set")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--epochs", type=float, default=1.0, help="student epochs, the same for every run")
    ap.add_argument("--learning-rate", type=float, default=1e-4, help="student learning rate")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--student-layers", type=int, default=2)
    ap.add_argument("--ratio", type=float, default=0.1, help="Dynamic KD selection ratio r")
    ap.add_argument("--repeats", type=int, default=1, help="alternating repeats; the fastest run is kept")
    ap.add_argument("--only", nargs="*", choices=list(VARIANTS), help="run these variants only (default: all)")
    args = ap.parse_args()

    base = {"data": {"train": str(bundled_dataset_path()), "max_train_examples": args.max_train,
                     "max_length": args.max_length},
            "teachers": [{"backbone": args.teacher_backbone, "epochs": args.teacher_epochs,
                          "learning_rate": args.teacher_lr}],
            "student": {"num_layers": args.student_layers},
            "optim": {"epochs": args.epochs, "learning_rate": args.learning_rate,
                      "batch_size": args.batch_size, "evals_per_epoch": 1}}
    t0 = time.perf_counter()
    warm = run_distillation(parse_config({**base, "optim": {**base["optim"], "epochs": 0.01}}),
                            teacher_outputs_mode="cached").metrics  # fine-tune or load the teacher, untimed
    print(f"teacher ready in {time.perf_counter() - t0:.0f} s (from cache: {warm['teacher_from_cache'][0]}), "
          f"score {warm['teacher_score']:.4f}; majority {warm['majority_baseline']:.4f}")

    best: dict[str, dict] = {}
    keys = args.only or list(VARIANTS)
    for _ in range(args.repeats):
        for key in keys:
            m = run(base, key, args.ratio)
            if key not in best or m["train_seconds"] < best[key]["train_seconds"]:
                best[key] = m

    print(f"\ntorch threads {torch.get_num_threads()}, backbone {args.teacher_backbone}, "
          f"train {warm['train_examples']} (RW-KD: {warm['train_examples'] - round(0.1 * warm['train_examples'])} "
          f"+ meta set), "
          f"validation {warm['validation_examples']}, max_length {args.max_length}, "
          f"student epochs {args.epochs}, metric {warm['metric']}")
    print("| run | train s | step s | examples/s | teacher fwd examples | per trained example | student score |")
    print("|---|---|---|---|---|---|---|")
    for key in keys:
        name, m = VARIANTS[key][0], best[key]
        print(f"| {name.format(ratio=args.ratio)} | {m['train_seconds']:.1f} | {m['step_seconds']:.1f} | "
              f"{m['train_examples_per_second']:.1f} | {m['teacher_forward_examples']} | "
              f"{teacher_per_example(m):.3f} | {m['student_score']:.4f} |")
    if set(keys) != set(VARIANTS):
        return
    r1, r01, fixed, rwkd = (best[k] for k in ("r1", "r01", "fixed", "rwkd"))
    print(f"\n(a) r={args.ratio} / r=1 time: train {r01['train_seconds'] / r1['train_seconds']:.2f}x, "
          f"steps {r01['step_seconds'] / r1['step_seconds']:.2f}x; teacher forward examples "
          f"{r01['teacher_forward_examples'] / max(1, r1['teacher_forward_examples']):.3f}x")
    per_step = (rwkd["step_seconds"] / rwkd["steps"]) / (fixed["step_seconds"] / fixed["steps"])
    print(f"(b) RW-KD / fixed λ time: train {rwkd['train_seconds'] / fixed['train_seconds']:.2f}x, "
          f"steps {rwkd['step_seconds'] / fixed['step_seconds']:.2f}x, per step {per_step:.2f}x "
          f"(RW-KD trains on {rwkd['steps']} steps, fixed λ on {fixed['steps']})")
    both = best["r01_rwkd"]
    print(f"(c) r={args.ratio} with / without RW-KD: teacher forward examples per trained example "
          f"{teacher_per_example(both):.3f} / {teacher_per_example(r01):.3f} "
          f"(full KD: {teacher_per_example(r1):.3f}; with RW-KD {teacher_per_example(both) / teacher_per_example(r1):.3f}x "
          f"of full); time per step {both['step_seconds'] / both['steps']:.3f} s / "
          f"{r01['step_seconds'] / r01['steps']:.3f} s ({(both['step_seconds'] / both['steps']) / (r01['step_seconds'] / r01['steps']):.2f}x)")


def teacher_per_example(m: dict) -> float:
    """Teacher forward examples per training example the student stepped on (RW-KD holds out its meta set)."""
    return m["teacher_forward_examples"] / max(1e-9, m["train_examples"] * m["epochs"])


if __name__ == "__main__":
    t = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t:.0f} s")
