"""The training rule shared by teacher and student: early stopping on a dev slice of train (never the
scored validation split), a step cap, the best checkpoint restored, the learning curve recorded."""
from __future__ import annotations

import json

import pytest

from autodistill.config import parse_config
from autodistill.data import DataError, bundled_dataset_path, holdout_indices, load_task_data
from autodistill.distill import export, format_report, run_distillation
from autodistill.models import load_tokenizer
from autodistill.batching import dev_indices, encode_texts
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


def test_the_dev_slice_keeps_identical_texts_on_one_side():
    """By default (data.dev_split "text") every copy of a repeated text (pair) falls on one side of the dev
    slice, so early stopping never scores a text the model trains on; "row", how configs stored before the
    setting ran, splits each row alone."""
    from autodistill.config import DataConfig
    from autodistill.data import Split

    labels = [i % 40 % 2 for i in range(200)]
    single = Split([f"text {i % 40}" for i in range(200)], None, labels)          # 40 texts, 5 copies each
    pairs = Split(["one question"] * 200, [f"answer {i % 40}" for i in range(200)], labels)
    for train in (single, pairs):
        keys = list(zip(train.text_a, train.text_b or train.text_a))
        fit, dev = dev_indices(train, DataConfig(), "classification")
        assert len(dev) == 20 and {keys[i] for i in fit}.isdisjoint({keys[i] for i in dev})
    fit, dev = dev_indices(single, DataConfig(dev_split="row"), "classification")
    assert (fit, dev) == holdout_indices(labels, 0.1, "42:dev", True, 1000)
    assert not {single.text_a[i] for i in fit}.isdisjoint({single.text_a[i] for i in dev})   # what "text" prevents
    two_texts = Split(["a"] * 10 + ["b"] * 10, None, [0] * 10 + [1] * 10)
    with pytest.raises(DataError, match="18 of them repeat another row's text.*data.dev_split to 'row'"):
        dev_indices(two_texts, DataConfig(), "classification")


def test_rows_with_distinct_keys_split_as_rows_alone():
    """Keys only join rows: with every key distinct the hold-out is the row-by-row one (the dev slice's)."""
    for labels, stratify, max_rows in (([0] * 90 + [1] * 10, True, None), ([c for c in range(100) for _ in range(4)],
                                       True, None), ([i / 7 for i in range(60)], False, 5)):
        assert holdout_indices(labels, 0.1, 42, stratify, max_rows) == \
            holdout_indices(labels, 0.1, 42, stratify, max_rows, keys=[f"text {i}" for i in range(len(labels))])


@pytest.mark.parametrize("classes, rows_each, max_rows, held", [
    (100, 4, None, 40),        # 0.4 a class rounds to 0 in every class: held out by largest remainder instead
    (1500, 30, 1000, 1000),    # 0.67 a class rounds to 1: 1,500 rows over the cap of 1,000
    (3, 100, None, 30),        # the usual case: 10 a class, as before
])
def test_a_stratified_hold_out_of_many_small_classes_keeps_its_size_and_cap(classes, rows_each, max_rows, held):
    labels = [c for c in range(classes) for _ in range(rows_each)]
    kept, out = holdout_indices(labels, 0.1, "42:dev", stratify=True, max_rows=max_rows)
    assert len(out) == held and sorted(kept + out) == list(range(len(labels)))
    assert set(labels[i] for i in kept) == set(labels)   # every class keeps a training row


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
    dev = enc(task.train).take(dev_indices(task.train, cfg.data, task.task_type)[1])
    # patience counted once the dev score beat a constant prediction's, which the record keeps
    assert m["dev_trivial_score"] == pytest.approx(trivial_score(dev, m["metric"], task.task_type))
    assert m["dev_start_score"] == m["dev_trivial_score"]                     # accuracy: no chance level above it
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
    assert m["validation_in_train"] == 0 and "warning" not in report        # the bundled CR shares no text
    assert "warning       3 of the" in format_report({**m, "validation_in_train": 3})


def test_step_cap_and_evaluations_every_n_steps(tiny_backbone):
    result = run_distillation(tiny_cfg(tiny_backbone, max_steps=7, max_steps_between_evals=3,
                                       early_stopping_patience=None))
    m = result.metrics
    assert m["steps"] == 7 and m["stop_reason"] == "max_steps"
    # 300 rows - 30 dev = 270 rows = 9 batches an epoch: evaluated every 3 steps, and at the cap
    assert [r["step"] for r in m["history"]] == [3, 6, 7]


def test_an_augmented_epoch_is_evaluated_per_pass_over_the_original_rows_when_asked(tiny_backbone):
    """optim.evaluate_per "original_pass": an augmented epoch (1 copy: twice the rows) is evaluated twice, after about
    as many steps as a plain pipeline's epoch, so patience lasts the same steps for both; "epoch", how the
    committed meta-dataset ran, evaluates it once."""
    from autodistill.trainer import TrainArgs

    args = TrainArgs(learning_rate=1e-3, epochs=1, batch_size=32, metric="accuracy", task_type="classification",
                     max_steps_between_evals=500)
    assert args.evals_in_epoch(18, 9) == 1
    per_pass = TrainArgs(**{**args.__dict__, "evaluate_per": "original_pass"})
    assert per_pass.evals_in_epoch(18, 9) == 2 and per_pass.evals_in_epoch(9, 9) == 1
    augmented = {"augmentation": {"copies": 1, "augmenters": [{"name": "random", "p": 0.1}]}}
    for unit, steps in (("epoch", [17, 34]), ("original_pass", [8, 17, 25, 34])):
        cfg = tiny_cfg(tiny_backbone, epochs=2, early_stopping_patience=None, evaluate_per=unit)
        cfg = parse_config({**cfg.to_dict(), **augmented})
        m = run_distillation(cfg).metrics     # 270 original rows: 9 steps a pass; 540 rows, 17 steps an epoch
        assert [r["step"] for r in m["history"]] == steps


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


def test_a_correlations_clock_starts_above_chance_not_above_zero(tiny_backbone):
    """An untrained model's dev correlation is noise around 0 that passes 0 half the time: counting from the
    first score above 0 stopped such a student on "plateau" before it learned. The clock now starts above
    the level chance passes 5 % of the time on the dev slice (Fisher z), for MCC as for Pearson/Spearman."""
    import math

    import torch

    from autodistill.batching import EncodedSplit
    from autodistill.callbacks import EarlyStoppingCallback
    from autodistill.evaluation import learning_start_score

    def split(labels):
        return EncodedSplit(input_ids=[[1, 2]] * len(labels), token_type_ids=None, labels=torch.tensor(labels))

    dev = split([float(i % 5) for i in range(1003)])
    assert learning_start_score(dev, "pearson", "regression") == pytest.approx(0.05197, abs=1e-5)
    assert learning_start_score(dev, "spearman", "regression") == pytest.approx(math.tanh(1.645 / math.sqrt(1000)))
    assert learning_start_score(split([0, 1] * 50 + [1, 1, 1]), "mcc", "classification") == pytest.approx(0.16303, abs=1e-5)
    assert learning_start_score(split([0, 0, 0, 1]), "accuracy", "classification") == 0.75   # the constant's, as before
    noise = [0.03, 0.01, 0.02, 0.00, 0.03, 0.01, 0.02]
    assert _stops_at(noise, patience=3, start_above=0.0) == 4            # the old start: a "plateau" of noise
    assert _stops_at(noise, patience=3, start_above=0.05197) is None     # never learned: the caps end it

    trainer = _trainer(tiny_backbone, metric="pearson")                   # the trainer starts its clock there
    start = next(c.start_above for c in trainer.callbacks if isinstance(c, EarlyStoppingCallback))
    assert start == trainer.start_dev_score == pytest.approx(math.tanh(1.645 / math.sqrt(len(trainer.dev) - 3)))


def test_the_committed_regression_runs_stop_where_they_stopped_under_the_current_start():
    """The start above chance came after the v2 build: replayed on their recorded dev curves, its stsb
    students and teachers stop at the same evaluation under it, so the committed records stand."""
    from pathlib import Path

    from autodistill.callbacks import replay_stop
    from autodistill.evaluation import start_score

    def stop_index(history, rule, start):
        return replay_stop([row["score"] for row in history], rule["early_stopping_patience"],
                           rule["early_stopping_min_delta"], start)

    files = sorted((Path(__file__).parents[1] / "meta_dataset" / "v2" / "runs").glob("stsb@*.jsonl"))
    replayed = 0
    for record in (json.loads(line) for f in files for line in f.read_text().splitlines()):
        m, rule = record["metrics"], record["config"]["optim"]
        teacher, teacher_rule = m["teacher_training"], record["config"]["teachers"][0]
        start = start_score(m["dev_trivial_score"], m["metric"], m["dev_examples"])
        for curve, how, stopped in ((m["history"], rule, m["stop_reason"]),
                                    (teacher["history"], teacher_rule, teacher["stop_reason"])):
            assert how["early_stopping_start"] == "above_trivial"
            assert stop_index(curve, how, start) == (len(curve) - 1 if stopped == "plateau" else None), record["key"]
            replayed += 1
    assert replayed == 56                                                 # 28 students, each with its teacher


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


# --------------------------------------------------------------------------- resuming from a checkpoint
def _trainer(backbone, checkpoint=None, metric="accuracy"):
    """A tiny fine-tune that evaluates mid-epoch (every 4 of 12 steps) and stops on a plateau."""
    import torch

    from autodistill.config import DataConfig
    from autodistill.models import load_classifier
    from autodistill.trainer import StepObjective, TrainArgs, Trainer, set_seed

    data_cfg = DataConfig(train=str(bundled_dataset_path()), max_train_examples=200, max_length=32)
    task = load_task_data(data_cfg)
    tok = load_tokenizer(backbone)
    enc = encode_texts(tok, task.train.text_a, task.train.text_b, task.train.labels, 32, task.task_type)
    fit_rows, dev_rows = dev_indices(task.train, data_cfg, task.task_type)
    train, dev = enc.take(fit_rows), enc.take(dev_rows)
    set_seed(0)
    model = load_classifier(backbone, task.num_labels, task.task_type, task.label_names)
    args = TrainArgs(learning_rate=3e-3, epochs=6, batch_size=16, metric=metric, task_type=task.task_type,
                     seed=1, max_steps_between_evals=4, early_stopping_patience=3)
    return Trainer(model, StepObjective(train, task.task_type), dev, args, tok.pad_token_id, torch.device("cpu"),
                   checkpoint=checkpoint)


@pytest.fixture
def resumed_from(monkeypatch) -> list:
    """What each Trainer loaded from its checkpoint (None: it started afresh)."""
    import autodistill.trainer as trainer_module

    loaded, real_load = [], trainer_module.load_checkpoint

    def spy(*args):
        loaded.append(real_load(*args))
        return loaded[-1]
    monkeypatch.setattr(trainer_module, "load_checkpoint", spy)
    return loaded


def _interrupted(backbone, checkpoint, monkeypatch, after_saves: int) -> None:
    """A run Ctrl-C'd right after writing its ``after_saves``-th checkpoint."""
    from autodistill.trainer import Trainer

    with monkeypatch.context() as m:
        m.setattr(Trainer, "_save", _interrupting_after_save(Trainer._save, after_saves))
        with pytest.raises(KeyboardInterrupt):
            _trainer(backbone, checkpoint).train()


@pytest.mark.parametrize("interrupted_at", ["mid-epoch", "the stopping evaluation"])
def test_an_interrupted_run_resumes_exactly_where_it_last_evaluated(tiny_backbone, tmp_path, monkeypatch,
                                                                   resumed_from, interrupted_at):
    import torch

    reference = _trainer(tiny_backbone)
    expected = reference.train()
    checkpoint = tmp_path / "run.partial.pt"
    # evaluation 4 is at step 16, mid-way through the second epoch (180 rows: 12 steps an epoch)
    saves = 4 if interrupted_at == "mid-epoch" else len(expected["history"])
    _interrupted(tiny_backbone, checkpoint, monkeypatch, saves)
    resumed = _trainer(tiny_backbone, checkpoint)
    got = resumed.train()
    assert resumed_from[-1].state["global_step"] == expected["history"][saves - 1]["step"]   # it did resume
    # the same run as if never interrupted: curve, steps, why it stopped, and every weight
    curve = lambda r: [(row["step"], row["score"]) for row in r["history"]]  # noqa: E731
    assert curve(got) == curve(expected) and len(curve(got)) > 5
    assert (got["steps"], got["stop_reason"], got["best_step"]) == \
        (expected["steps"], expected["stop_reason"], expected["best_step"])
    for name, weight in reference.model.state_dict().items():
        assert torch.equal(weight, resumed.model.state_dict()[name]), name


def test_a_checkpoint_of_another_run_is_not_resumed(tiny_backbone, tmp_path, monkeypatch, resumed_from):
    import contextlib

    import torch

    import autodistill.trainer as trainer_module

    checkpoint = tmp_path / "run.partial.pt"
    _interrupted(tiny_backbone, checkpoint, monkeypatch, 1)
    other = _trainer(tiny_backbone, checkpoint)
    other.args.max_steps = 5           # another schedule: its total steps differ
    with pytest.warns(UserWarning, match="written for another run"):
        result = other.train()
    assert result["steps"] == 5 and result["history"][0]["step"] == 4
    # another precision: a float16 loss scaler has a state the float32 run's checkpoint lacks
    checkpoint.unlink()
    _interrupted(tiny_backbone, checkpoint, monkeypatch, 1)
    monkeypatch.setattr(trainer_module, "mixed_precision",
                        lambda setting, device: (contextlib.nullcontext, torch.amp.GradScaler("cpu")))
    with pytest.warns(UserWarning, match="written for another run"):
        assert _trainer(tiny_backbone, checkpoint).train()["history"][0]["step"] == 4
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="corrupt"):
        assert _trainer(tiny_backbone, checkpoint).train()["history"][0]["step"] == 4
    assert not any(resumed_from)


def test_an_interrupted_teacher_fine_tune_resumes_and_its_checkpoint_goes_once_cached(tiny_backbone, monkeypatch,
                                                                                    resumed_from):
    from autodistill.teacher import fine_tuned
    from autodistill.teacher.cache import cache_root

    base = tiny_cfg(tiny_backbone).to_dict()
    cfg = parse_config({**base, "teachers": [{**base["teachers"][0], "seed": 7}]})   # a teacher no test cached
    with monkeypatch.context() as m:
        m.setattr(fine_tuned.Trainer, "_save", _interrupting_after_save(fine_tuned.Trainer._save, 1))
        with pytest.raises(KeyboardInterrupt):
            run_distillation(cfg)
    [partial] = list((cache_root() / "teachers").glob("*.partial.pt"))
    unfinished = partial.with_name(f".{partial.name}.abc123")      # a writer killed mid-write left it
    unfinished.write_bytes(b"half")
    resumed_from.clear()
    result = run_distillation(cfg)
    assert resumed_from[0].state["global_step"] == 9   # the teacher went on from step 9
    assert len(result.metrics["teacher_training"]["history"]) > 1
    assert not partial.exists() and not unfinished.exists()
    # killed between caching the teacher and removing its checkpoint: the next run removes it
    partial.write_bytes(b"left behind")
    run_distillation(cfg)
    assert not partial.exists()


def _interrupting_after_save(save, n: int):
    """``Trainer._save`` that is Ctrl-C'd right after writing its ``n``-th checkpoint."""
    written = []

    def interrupting(self, *args, **kwargs):
        save(self, *args, **kwargs)
        written.append(True)
        if len(written) == n:
            raise KeyboardInterrupt
    return interrupting


def test_a_teacher_trained_in_half_precision_is_cached_apart():
    """A teacher fine-tuned under fp16/bf16 autocast has other weights than a full-precision one: another
    cache entry (full-precision keys stay as they were)."""
    import torch

    from autodistill.batching import EncodedSplit
    from autodistill.config import TeacherConfig
    from autodistill.teacher.fine_tuned import teacher_cache_key
    dev = EncodedSplit(input_ids=[[1, 2]] * 4, token_type_ids=None, labels=torch.tensor([0, 1, 0, 1]))
    full = teacher_cache_key(TeacherConfig(), "fp", 64, "accuracy", dev)
    assert teacher_cache_key(TeacherConfig(), "fp", 64, "accuracy", dev, None) == full
    assert len({full, teacher_cache_key(TeacherConfig(), "fp", 64, "accuracy", dev, "float16"),
                teacher_cache_key(TeacherConfig(), "fp", 64, "accuracy", dev, "bfloat16")}) == 3


def test_a_correlation_teacher_cached_under_the_old_start_is_not_reused():
    """Before the start above chance, a regression teacher's clock started above 0: it may have stopped on
    noise, so it has another key; an accuracy teacher's key is what it was (golden payload)."""
    import hashlib

    import torch

    from autodistill.batching import EncodedSplit
    from autodistill.config import TeacherConfig
    from autodistill.models import backbone_identity
    from autodistill.teacher.cache import split_hash
    from autodistill.teacher.fine_tuned import TEACHER_CACHE_VERSION, teacher_cache_key
    dev = EncodedSplit(input_ids=[[1, 2]] * 4, token_type_ids=None, labels=torch.tensor([0.1, 0.5, 0.9, 0.2]))
    cfg = TeacherConfig()

    def before(metric):
        payload = {"version": TEACHER_CACHE_VERSION, "backbone": backbone_identity(cfg.backbone), "dataset": "fp",
                   "training": cfg.model_dump(mode="json", exclude={"backbone"}), "max_length": 64,
                   "metric": metric, "dev": split_hash(dev)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]
    assert teacher_cache_key(cfg, "fp", 64, "accuracy", dev) == before("accuracy")
    assert teacher_cache_key(cfg, "fp", 64, "pearson", dev) != before("pearson")
