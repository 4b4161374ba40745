"""One end-to-end run per adaptive method on the bundled CR data: each student beats the majority class.

All runs share the same teacher config, so the (isolated, per-session) cache trains each teacher once.
"""
from __future__ import annotations

import math

from autodistill.config import parse_config
from autodistill.data import bundled_dataset_path
from autodistill.distill import run_distillation

TEACHER = {"epochs": 4, "learning_rate": 3e-3}     # the smoke settings: trained once per session
SECOND_TEACHER = {"epochs": 2, "learning_rate": 3e-3}  # only the adoption test needs it: kept short
BATCH_SIZE = 32


def _run(teachers: list[str], teacher_outputs_mode: str | None = None, **sections) -> dict:
    cfg = parse_config({
        "data": {"train": str(bundled_dataset_path()), "max_length": 64},
        "teachers": [{"backbone": b, **(TEACHER if k == 0 else SECOND_TEACHER)} for k, b in enumerate(teachers)],
        "optim": {"epochs": 2, "learning_rate": 3e-3, "batch_size": BATCH_SIZE},
        **sections,
    })
    m = run_distillation(cfg, teacher_outputs_mode=teacher_outputs_mode).metrics
    print(f"student {m['student_score']:.4f} majority {m['majority_baseline']:.4f} "
          f"train {m['train_seconds']:.1f} s")
    assert math.isfinite(m["student_score"])
    assert m["student_score"] > m["majority_baseline"] + 0.02, (m["student_score"], m["majority_baseline"])
    return m


def test_rwkd_beats_majority(tiny_backbone):
    m = _run([tiny_backbone], weighting={"strategy": "rw_kd", "lambda_kd": 0.5, "meta_interval": 2})
    # the meta set is a held-out slice of train (10 % of what the dev slice leaves), never validation
    fit = 3017 - m["dev_examples"]
    assert m["train_examples"] == fit - round(0.1 * fit)
    assert m["validation_examples"] == 754


def test_dynamic_selection_beats_majority(tiny_backbone):
    m = _run([tiny_backbone], teacher_outputs_mode="online",
             dynamic={"selection": "entropy", "selection_ratio": 0.5})
    n = m["train_examples"]
    per_epoch = sum(math.floor(0.5 * min(BATCH_SIZE, n - s)) for s in range(0, n, BATCH_SIZE))
    assert m["teacher_outputs"] == "online"
    assert m["teacher_forward_examples"] == 2 * per_epoch


def test_teacher_adoption_soft_instance_beats_majority(tiny_backbone, tiny_backbone_b):
    m = _run([tiny_backbone, tiny_backbone_b], dynamic={"adoption": "soft_instance"})
    assert len(m["teacher_scores"]) == 2


def test_objective_adaptation_beats_majority(tiny_backbone):
    _run([tiny_backbone], dynamic={"objective_adaptation": True, "rep_weight": 1.0})
