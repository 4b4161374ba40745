"""The training rule shared by teacher and student: early stopping on a dev slice of train (never the
scored validation split), a step cap, the best checkpoint restored, the learning curve recorded."""
from __future__ import annotations

import json

import pytest

from autodistill.config import parse_config
from autodistill.data import bundled_dataset_path, holdout_indices, load_task_data
from autodistill.distill import export, format_report, run_distillation
from autodistill.models import load_tokenizer
from autodistill.batching import encode_texts, split_dev
from autodistill.evaluation import evaluate, trivial_score


def tiny_cfg(backbone, **optim):
    return parse_config({
        "data": {"train": str(bundled_dataset_path()), "max_train_examples": 300, "max_length": 32},
        "teachers": [{"backbone": backbone, "learning_rate": 3e-3, "epochs": 30, "early_stopping_patience": 2}],
        "optim": {"learning_rate": 3e-3, "epochs": 30, "early_stopping_patience": 2, "eval_batch_size": 256,
                  **optim}})


def test_dev_slice_is_seeded_stratified_and_capped():
    labels = [0] * 90 + [1] * 10
    kept, held = holdout_indices(labels, 0.2, "42:dev", stratify=True)
    assert sorted(kept + held) == list(range(100)) and not set(kept) & set(held)
    assert sum(labels[i] for i in held) == 2 and len(held) == 20          # 20 % of each class
    assert holdout_indices(labels, 0.2, "42:dev", True) == (kept, held)  # seeded
    assert len(holdout_indices(labels, 0.2, "42:dev", True, max_rows=10)[1]) == 10


def test_teacher_and_student_stop_on_a_dev_plateau_and_keep_the_best(tiny_backbone, tmp_path):
    cfg = tiny_cfg(tiny_backbone)
    result = run_distillation(cfg)
    m = result.metrics
    task = load_task_data(cfg.data)
    # the dev slice comes out of train: train + dev rows = the loaded train rows; validation is untouched
    assert m["train_examples"] + m["dev_examples"] == len(task.train) == 300
    assert m["validation_examples"] == len(task.validation)
    for t in (m["teacher_training"], m):
        curve = t["history"]
        assert t["stop_reason"] == "plateau" and t["steps"] < 30 * 10       # stopped well before the cap
        assert [set(r) for r in curve] == [{"step", "epoch", "seconds", "score"}] * len(curve)
        assert [r["step"] for r in curve] == sorted(r["step"] for r in curve)
        best = max(r["score"] for r in curve)
        assert all(r["score"] <= best for r in curve[-2:])                    # patience 2: a flat tail
    # the restored student is the best one on dev, and its reported score is measured on validation
    tok = load_tokenizer(tiny_backbone)
    enc = lambda s: encode_texts(tok, s.text_a, s.text_b, s.labels, 32, task.task_type)  # noqa: E731
    _, dev = split_dev(enc(task.train), cfg.data, task.task_type)
    # patience counted once the dev score beat a constant prediction's, which the record keeps
    assert m["dev_trivial_score"] == pytest.approx(trivial_score(dev, m["metric"], task.task_type))
    assert max(r["score"] for r in m["history"]) > m["dev_trivial_score"]
    assert evaluate(result.student, dev, m["metric"], task.task_type, 256, tok.pad_token_id, "cpu") \
        == pytest.approx(m["best_dev_score"])
    assert evaluate(result.student, enc(task.validation), m["metric"], task.task_type, 256, tok.pad_token_id,
                    "cpu") == pytest.approx(m["student_score"])
    # budget used and both curves reach metrics.json and the report
    saved = json.loads((export(result, tmp_path / "out") / "metrics.json").read_text())
    assert saved["steps"] == m["steps"] and saved["teacher_training"]["history"]
    report = format_report(m)
    assert "teacher curve" in report and "student curve" in report and "plateau" in report


def test_step_cap_and_evaluations_every_n_steps(tiny_backbone):
    result = run_distillation(tiny_cfg(tiny_backbone, max_steps=7, max_steps_between_evals=3,
                                       early_stopping_patience=None))
    m = result.metrics
    assert m["steps"] == 7 and m["stop_reason"] == "max_steps"
    # 300 rows - 30 dev = 270 rows = 9 batches an epoch: evaluated every 3 steps, and at the cap
    assert [r["step"] for r in m["history"]] == [3, 6, 7]


def _stops_at(curve, **kw):
    """The evaluation (1-based) at which EarlyStoppingCallback stops on ``curve``, or None."""
    from autodistill.callbacks import EarlyStoppingCallback, TrainerControl, TrainerState

    cb, state, control = EarlyStoppingCallback(**kw), TrainerState(), TrainerControl()
    for i, score in enumerate(curve, 1):
        state.history.append({"score": score})
        cb.on_evaluate(state, {}, control=control)
        if control.should_training_stop:
            return i
    return None


def test_a_flat_start_at_the_majority_class_is_not_a_plateau():
    """Measured on a fresh 4x128 student (cr, 1,000 rows): dev accuracy 0.64 (the majority class) for 3
    epochs, then it learns. Counting from the first evaluation stopped such runs at the majority class."""
    slow_start = [0.64, 0.64, 0.64, 0.64, 0.70, 0.75, 0.74, 0.75, 0.73]
    assert _stops_at(slow_start, patience=3) == 4                       # the old rule: stopped before learning
    assert _stops_at(slow_start, patience=3, start_above=0.64) == 9     # counts from 0.70: 3 evaluations after 0.75
    assert _stops_at([0.64] * 20, patience=3, start_above=0.64) is None  # never learns: the caps end it
    learning = [0.70, 0.72, 0.71, 0.71, 0.70]                            # above the constant from the start: the same
    assert _stops_at(learning, patience=3) == _stops_at(learning, patience=3, start_above=0.64) == 5


def test_the_trainer_knows_the_constant_predictions_dev_score():
    import torch

    from autodistill.batching import EncodedSplit
    from autodistill.evaluation import trivial_score

    def split(labels):
        n = len(labels)
        return EncodedSplit(input_ids=[[1, 2]] * n, token_type_ids=None, labels=torch.tensor(labels))

    assert trivial_score(split([0, 0, 0, 1]), "accuracy", "classification") == 0.75
    assert trivial_score(split([0, 0, 0, 1]), "f1", "classification") == 0.4        # all-positive, not the majority
    assert trivial_score(split([0.1, 0.5, 0.9]), "pearson", "regression") == 0.0     # undefined for a constant


def test_a_constant_float32_prediction_scores_zero_correlation_not_nan():
    """float32 rounding gives a constant prediction a tiny spread that scipy reads as constant (NaN): the
    metric says 0, the same as for an exactly constant one, so early stopping never compares with NaN."""
    import warnings

    import numpy as np

    from autodistill.metrics import pearson, spearman

    pred = np.full(10, 0.7, dtype=np.float32)
    gold = np.arange(10.0)
    assert np.std(pred) > 0                       # the case the exact-constant check misses
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pearson(pred, gold) == 0.0 and spearman(pred, gold) == 0.0
    assert pearson(np.arange(10.0), gold) == pytest.approx(1.0)
