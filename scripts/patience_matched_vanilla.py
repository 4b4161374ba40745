"""Post-hoc diagnostic (not part of the product, not pre-registered): does vanilla KD gain from the patience
the unseen test's pick gets?

Patience counts one-epoch evaluations; the pick (`aug_neighbour_random_mixup_mi0.9`, one augmented copy) has
twice the steps per epoch, so its 3 evaluations of patience are 6 plain epochs of steps. This trains the
dataset's `vanilla_kd` arm exactly as its plan says (budget, seeds) but with patience 6, and records it beside
the unseen runs (`OUT`, one JSON line per run, resumable). Two checks make the pairing exact: the teacher
must score what the recorded runs' teacher scored, and the new run's dev curve must start with the recorded
patience-3 run's curve (the same run, trained on past where patience 3 stopped it).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/patience_matched_vanilla.py DATASETS_ROOT OUT DATASET...
    PYTHONPATH=. .venv/bin/python scripts/patience_matched_vanilla.py --summary OUT
"""
import json
import sys
import time
from pathlib import Path

from autodistill.distill import run_distillation
from autodistill.meta.unseen import _arm_config, _seed_of, _trained_from
from autodistill.progress import EventLog
from autodistill.records import RecordStore

UNSEEN = Path(__file__).resolve().parents[1] / "meta_dataset" / "v2" / "unseen"
PATIENCE = 6


def recorded_vanilla(dataset):
    """The dataset's recorded vanilla_kd runs by seed."""
    return {_seed_of(r): r for r in RecordStore(UNSEEN / "runs" / f"{dataset}.jsonl")
            if "vanilla_kd" in (r.provenance or {}).get("arms", [])}


def run(datasets_root, out, dataset):
    plan = json.loads((UNSEEN / "plans" / f"{dataset}.json").read_text(encoding="utf-8"))
    arm = next(a for a in plan["arms"] if a["name"] == "vanilla_kd")
    done = {(r["dataset"], r["seed"]) for r in map(json.loads, out.read_text().splitlines())} if out.is_file() else set()
    recorded = recorded_vanilla(dataset)
    for seed in plan["seeds"]:
        if (dataset, seed) in done:
            continue
        base = _arm_config(plan, arm["pipeline"])
        cfg = base.model_copy(update={"optim": base.optim.model_copy(
            update={"seed": seed, "early_stopping_patience": PATIENCE})})
        t0 = time.perf_counter()
        m = run_distillation(_trained_from(cfg, Path(datasets_root) / dataset), events=EventLog(sys.stdout)).metrics
        earlier = recorded[seed].metrics
        same_teacher = abs(m["teacher_score"] - recorded[seed].teacher_score) < 1e-6
        prefix = [round(h["score"], 6) for h in earlier["history"]]
        same_start = [round(h["score"], 6) for h in m["history"][:len(prefix)]] == prefix
        row = {"dataset": dataset, "seed": seed, "patience": PATIENCE, "ratio": m["score_ratio"],
               "ratio_patience_3": recorded[seed].target["ratio"], "steps": m["steps"],
               "steps_patience_3": earlier["steps"], "stop_reason": m["stop_reason"],
               "best_dev": m["best_dev_score"], "best_dev_patience_3": earlier["best_dev_score"],
               "same_teacher": same_teacher, "same_curve_start": same_start,
               "teacher_score": m["teacher_score"], "train_seconds": m["train_seconds"],
               "wall_seconds": round(time.perf_counter() - t0, 1), "history": m["history"]}
        with out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{dataset}] seed {seed}: ratio {row['ratio']:.4f} (patience 3: {row['ratio_patience_3']:.4f}), "
              f"steps {row['steps']} ({row['steps_patience_3']}), same teacher {same_teacher}, "
              f"same curve start {same_start}", flush=True)


def summary(out):
    """Per dataset with both seeds: the pick's mean ratio (the recommended arm), vanilla KD's at patience 3 and
    6, and the pick's lead over each."""
    import pandas as pd

    rows = pd.DataFrame([json.loads(line) for line in out.read_text().splitlines()])
    lines = []
    for dataset, runs in rows.groupby("dataset"):
        if len(runs) < 2:
            continue
        pick = [r.target["ratio"] for r in RecordStore(UNSEEN / "runs" / f"{dataset}.jsonl")
                if "recommended" in (r.provenance or {}).get("arms", [])]
        p3, p6, mean_pick = runs["ratio_patience_3"].mean(), runs["ratio"].mean(), sum(pick) / len(pick)
        lines.append({"dataset": dataset, "pick": mean_pick, "vanilla_p3": p3, "vanilla_p6": p6,
                      "p6_minus_p3": p6 - p3, "pick_minus_p3": mean_pick - p3, "pick_minus_p6": mean_pick - p6,
                      "steps_p3": runs["steps_patience_3"].mean(), "steps_p6": runs["steps"].mean(),
                      "exact_pairs": bool(runs["same_teacher"].all() and runs["same_curve_start"].all())})
    print(pd.DataFrame(lines).round(4).to_string(index=False))


if __name__ == "__main__":
    if sys.argv[1] == "--summary":
        summary(Path(sys.argv[2]))
        sys.exit(0)
    root, out_path, *names = sys.argv[1:]
    out_file = Path(out_path)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        run(root, out_file, name)
