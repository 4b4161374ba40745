"""Diagnostic: a portfolio candidate's loss terms and gradient norm, every 10 steps, on a fresh-student
context (why hidden-state objectives start slowly there; meta_dataset/README.md section 4).

    AUTODISTILL_CACHE=... OMP_NUM_THREADS=1 .venv/bin/python scripts/kd_step_terms.py inter_pkd_last [dataset]
"""
import sys

import torch

from autodistill import distill, objective, trainer
from autodistill.config import deep_merge
from autodistill.meta import DATASETS_DIR
from autodistill.meta.build import build_preset
from autodistill.meta.portfolio import candidate_config

name = sys.argv[1]
dataset = sys.argv[2] if len(sys.argv) > 2 else "cr"
preset = deep_merge(build_preset(None, 1000, "fresh4x128"), {"optim": {"early_stopping_patience": None, "epochs": 2}})
cfg = candidate_config(name, "classification", preset, {"train": str(DATASETS_DIR / dataset)})
loss_of, clip_of = objective.KDObjective.loss, torch.nn.utils.clip_grad_norm_
step = {"n": 0}


def logged_loss(self, model, batch, state):
    total, logs = loss_of(self, model, batch, state)
    step["n"] += 1
    if step["n"] % 10 == 1:
        print("step", step["n"], {k: round(v, 4) for k, v in logs.items()}, end=" ")
    return total, logs


def logged_clip(params, max_norm, *args, **kwargs):
    norm = clip_of(list(params), max_norm, *args, **kwargs)
    if step["n"] % 10 == 1:
        print("gradient norm before clipping", round(float(norm), 3), flush=True)
    return norm


objective.KDObjective.loss = logged_loss
trainer.torch.nn.utils.clip_grad_norm_ = logged_clip
metrics = distill.run_distillation(cfg).metrics
print("dev curve", [round(h["score"], 3) for h in metrics["history"]])
