"""Post-hoc diagnostic (not part of the product): would the augmented runs have kept their best checkpoint under
patience counted in steps, as a non-augmented run gets it?

Patience counts evaluations, one per epoch, and an augmented epoch holds (1 + copies) times the steps: 3
evaluations of patience are 3 x (1 + copies) plain epochs of steps. Patience matched in steps is
3 / (1 + copies) evaluations (1.5 for one copy), so each recorded dev curve is replayed with the patience
just below and just above it (floor and ceiling), by the engine's own early-stopping callback and start. A
run whose best dev evaluation is the same under both would have trained to the same checkpoint (so scored
the same) under step-matched patience; one whose best comes later used the extra patience.

    PYTHONPATH=. .venv/bin/python scripts/patience_in_steps.py RUNS.jsonl [RUNS.jsonl ...]
"""
import json
import math
import sys

from autodistill.callbacks import replay_stop
from autodistill.evaluation import start_score


def best_index_when_stopped(history, patience, start):
    """The index of the best dev evaluation when ``patience`` would have stopped the curve (its end if never)."""
    scores = [row["score"] for row in history]
    stop = replay_stop(scores, patience, 0.0, start)
    seen = scores if stop is None else scores[:stop + 1]
    return seen.index(max(seen))


def replayed(record):
    m, config = record["metrics"], record["config"]
    copies = config["augmentation"]["copies"]
    matched = config["optim"]["early_stopping_patience"] / (1 + copies)
    start = start_score(m["dev_trivial_score"], m["metric"], m["dev_examples"])
    history = m["history"]
    recorded = best_index_when_stopped(history, len(history) + 1, start)
    below, above = (best_index_when_stopped(history, max(1, p), start) for p in (math.floor(matched),
                                                                                 math.ceil(matched)))
    return {"context": record.get("dataset"), "candidate": record.get("candidate"), "seed": record["seed"],
            "evaluations": len(history), "best": recorded, "best_below": below, "best_above": above,
            "dev_gain_over_below": round(history[recorded]["score"] - history[below]["score"], 4)}


def main(paths):
    rows = [replayed(json.loads(line)) for path in paths for line in open(path, encoding="utf-8")
            if json.loads(line)["config"]["augmentation"]["augmenters"]]
    for row in rows:
        print(json.dumps(row))
    same_below = sum(r["best_below"] == r["best"] for r in rows)
    same_above = sum(r["best_above"] == r["best"] for r in rows)
    gains = sorted(r["dev_gain_over_below"] for r in rows)
    print(f"{len(rows)} augmented runs; best checkpoint unchanged with the patience below step-matched: "
          f"{same_below}, above: {same_above}; dev score the extra patience gained over the patience below: "
          f"median {gains[len(gains) // 2]:.4f}, max {gains[-1]:.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
