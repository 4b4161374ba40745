"""End-to-end runs of the KD pipeline space (issue 3): every option on tiny models, each family on the
bundled real data, and the config errors of invalid combinations.

Component formulas are tested in test_losses.py, test_mappings.py and test_augmentation.py; here the
pieces are wired through ``run_distillation`` exactly as a user would select them by name.

Cost control: all tiny runs share ONE teacher config (trained once per session through the teacher
cache) and all real-data runs share another; torch runs single-threaded in this module (tiny matmuls
gain nothing from a second thread and lose a lot when the two cores are shared with other work).
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

import autodistill.distill as distill_module
from autodistill.augmentation import AugmentationError
from autodistill.callbacks import Callback
from autodistill.config import ConfigError, deep_merge, parse_config
from autodistill.data import bundled_dataset_path
from autodistill.distill import run_distillation


# --------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """run_distillation sets torch's threads from OMP_NUM_THREADS (else the core count)."""
    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(before)


def _jsonl_lines(path: Path, n: int) -> str:
    with path.open(encoding="utf-8") as fh:
        return "".join(line for _, line in zip(range(n), fh))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, str]:
    """A slice of the bundled CR data (the tiny runs subsample 64 rows of it) and a small validation set."""
    folder = tmp_path_factory.mktemp("tiny-cr")
    bundled = bundled_dataset_path()
    (folder / "train.jsonl").write_text(_jsonl_lines(bundled / "train.jsonl", 400), encoding="utf-8")
    (folder / "validation.jsonl").write_text(_jsonl_lines(bundled / "validation.jsonl", 64), encoding="utf-8")
    return {"train": str(folder / "train.jsonl"), "validation": str(folder / "validation.jsonl")}


_SUBJECTS = ["a man", "a woman", "the dog", "a child", "the cat", "two men", "a girl", "the chef"]
_VERBS = ["is playing", "is eating", "is cutting", "is watching", "is holding", "is cleaning"]
_OBJECTS = ["a guitar", "an apple", "the bread", "a ball", "the piano", "some onions", "a car"]
_PLACES = ["in the park", "at home", "on the street", "in a kitchen", "on a stage"]


def _sentence(rng: random.Random) -> list[str]:
    return [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_PLACES)]


def _sts_rows(n: int, seed: int) -> list[dict]:
    """STS-B-like sentence pairs; the label (0..5, float) is 5 x the share of equal slots."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a = _sentence(rng)
        b = [part if rng.random() < 0.5 else _sentence(rng)[k] for k, part in enumerate(a)]
        score = 5.0 * sum(x == y for x, y in zip(a, b)) / len(a)
        rows.append({"text_a": " ".join(a) + " .", "text_b": " ".join(b) + " .", "label": float(score)})
    return rows


@pytest.fixture(scope="session")
def sts_data(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("tiny-sts")
    for name, n, seed in (("train", 160, 0), ("validation", 48, 1)):
        text = "".join(json.dumps(r) + "\n" for r in _sts_rows(n, seed))
        (folder / f"{name}.jsonl").write_text(text, encoding="utf-8")
    return {"train": str(folder / "train.jsonl"), "validation": str(folder / "validation.jsonl")}





def tiny_config(backbone: str, data: dict[str, str], extra: dict | None = None) -> dict:
    base = {
        "data": {**data, "max_train_examples": 64, "max_length": 32},
        # identical everywhere: the tiny teacher is fine-tuned once per session, then read from the cache
        "teachers": [{"backbone": backbone, "epochs": 1, "learning_rate": 3e-3}],
        "optim": {"epochs": 1, "learning_rate": 3e-3, "batch_size": 16, "eval_batch_size": 64},
    }
    return deep_merge(base, extra or {})


def real_config(backbone: str, extra: dict | None = None) -> dict:
    base = {
        "data": {"train": str(bundled_dataset_path()), "max_length": 64},
        # the smoke settings; identical everywhere so the teacher is trained once per session
        "teachers": [{"backbone": backbone, "epochs": 4, "learning_rate": 3e-3}],
        "optim": {"epochs": 2, "learning_rate": 3e-3},
    }
    return deep_merge(base, extra or {})


class StepRecorder(Callback):
    def __init__(self):
        self.losses: list[float] = []
        self.logs: list[dict[str, float]] = []

    def on_step_end(self, state, loss, **kw):
        self.losses.append(loss)
        self.logs.append(dict(kw.get("logs") or {}))


@pytest.fixture
def captured(monkeypatch) -> dict:
    """The intermediate-distillation module the run builds, with a copy of its initial parameters."""
    box: dict = {}
    real = distill_module.build_intermediate

    def wrapper(*args, **kwargs):
        module = real(*args, **kwargs)
        box["module"] = module
        if module is not None:
            box["initial"] = {n: p.detach().clone() for n, p in module.named_parameters()}
        return module

    monkeypatch.setattr(distill_module, "build_intermediate", wrapper)
    return box


def run(cfg: dict):
    recorder = StepRecorder()
    result = run_distillation(parse_config(cfg), callbacks=[recorder])
    return result, recorder


def assert_finite_run(result, recorder, expect_logs: tuple[str, ...] = ()) -> None:
    m = result.metrics
    assert m["steps"] > 0 and len(recorder.losses) == m["steps"]
    assert math.isfinite(m["student_score"]), m["student_score"]
    assert all(math.isfinite(x) for x in recorder.losses), recorder.losses
    for logs in recorder.logs:
        assert all(math.isfinite(v) for v in logs.values()), logs
    for key in expect_logs:
        assert any(key in logs for logs in recorder.logs), f"no {key!r} in the step logs {recorder.logs[:2]}"


def changed_parameters(box: dict) -> set[str]:
    module = box["module"]
    return {n for n, p in module.named_parameters() if not torch.equal(p.detach(), box["initial"][n])}


def assert_trained(box: dict, *groups: str) -> None:
    """Every entry of each named group (e.g. ``objective.critics``) had some parameter updated."""
    changed = changed_parameters(box)
    names = list(box["initial"])
    for group in groups:
        members = {n[len(group) + 1:].split(".")[0] for n in names if n.startswith(group + ".")}
        assert members, f"no parameters under {group!r}: {names[:8]}"
        for member in members:
            name = f"{group}.{member}"
            assert any(n == name or n.startswith(name + ".") for n in changed), f"{name} was not trained"


# --------------------------------------------------------------------------- every option, tiny models
AUGMENTATION_CASES = {
    "random": {"augmentation": {"augmenters": [{"name": "random", "p": 0.2}]}},
    "mask": {"augmentation": {"augmenters": [{"name": "mask", "p": 0.2}]}},
    "embedding_neighbour": {"augmentation": {"augmenters": [{"name": "embedding_neighbour", "p": 0.2, "top_k": 5}]}},
    "pipeline_reaugment_repeated": {
        "augmentation": {"augmenters": [{"name": "random", "p": 0.1, "actions": ["swap", "delete"]},
                                        {"name": "embedding_neighbour", "p": 0.1}],
                         "copies": 2, "reaugment_every": 1, "repeated_aug": 2},
        "optim": {"epochs": 2}},
}


@pytest.mark.parametrize("case", list(AUGMENTATION_CASES))
def test_augmenter_end_to_end(tiny_backbone, tiny_data, case):
    result, rec = run(tiny_config(tiny_backbone, tiny_data, AUGMENTATION_CASES[case]))
    assert_finite_run(result, rec, ("kd",))
    aug = AUGMENTATION_CASES[case]["augmentation"]
    copies, repeats = aug.get("copies", 1), aug.get("repeated_aug", 1)
    epochs = AUGMENTATION_CASES[case].get("optim", {}).get("epochs", 1)
    n = result.metrics["train_examples"]
    assert n + result.metrics["dev_examples"] == 64                 # the dev slice is held out of train
    # an epoch covers the pool (originals + teacher-labelled copies); with repeated augmentation a batch
    # holds batch_size / repeats originals, each with `repeats` variants
    per_epoch = math.ceil(n / (16 // repeats)) if repeats > 1 else math.ceil(n * (1 + copies) / 16)
    assert result.metrics["steps"] == epochs * per_epoch
    assert result.metrics["epochs"] == pytest.approx(epochs)


@pytest.mark.parametrize("models, match", [
    (None, "translation_models"),
    (["no-such-org/opus-mt-en-xx", "no-such-org/opus-mt-xx-en"], "no-such-org/opus-mt-en-xx"),
])
def test_backtranslation_unavailable_is_a_clear_error(tiny_backbone, tiny_data, models, match):
    aug = {"name": "backtranslation", **({"translation_models": models} if models else {})}
    cfg = tiny_config(tiny_backbone, tiny_data, {"augmentation": {"augmenters": [aug]}})
    with pytest.raises(AugmentationError, match=match):
        run_distillation(parse_config(cfg))


def test_mixup_end_to_end(tiny_backbone, tiny_data):
    result, rec = run(tiny_config(tiny_backbone, tiny_data,
                                  {"mixup": {"enabled": True, "student_weight": 0.5, "teacher_weight": 2.0}}))
    assert_finite_run(result, rec, ("kd", "mixup_student", "mixup_teacher"))
    # the teacher sees the mixed embeddings online: one forward per mixed example
    assert result.metrics["teacher_forward_examples"] == result.metrics["train_examples"]


PREDICTION_CASES = {
    "kl": {"type": "kl", "temperature": 2.0},
    "soft_ce": {"type": "soft_ce", "temperature": 4.0},
    "mse": {"type": "mse"},
    "annealing": {"type": "annealing", "annealing_max_temperature": 3, "annealing_phase1_fraction": 0.5},
}


@pytest.mark.parametrize("case", list(PREDICTION_CASES))
def test_prediction_loss_end_to_end(tiny_backbone, tiny_data, case):
    extra = {"loss": {"prediction": PREDICTION_CASES[case], "hard_label_weight": 0.5}}
    if case == "annealing":  # 2 epochs: phase 1 (KD on annealed logits), then phase 2 (hard labels only)
        extra["optim"] = {"epochs": 2}
    result, rec = run(tiny_config(tiny_backbone, tiny_data, extra))
    assert_finite_run(result, rec, ("kd",))
    if case == "annealing":
        per_epoch = result.metrics["steps"] // 2
        assert all("kd" in logs for logs in rec.logs[:per_epoch])
        assert all("kd" not in logs for logs in rec.logs[per_epoch:])


# objective -> (extra intermediate settings, parameter groups that must be trained jointly)
OBJECTIVE_CASES = {
    "mse": ({}, ()),
    "hidden_ce": ({}, ()),
    "cos": ({}, ()),
    "pkd": ({}, ()),
    "infonce": ({}, ("objective.critics",)),
    "nwj": ({}, ("objective.critics",)),
    "tuba": ({}, ("objective.critics", "objective.baselines")),
    "mi_alpha_mlp": ({"objective": "mi_alpha", "alpha": 0.5, "critic": "mlp", "critic_hidden": 16,
                      "critic_dim": 8}, ("objective.critics", "objective.baselines")),
    "mi_alpha_transformer": ({"objective": "mi_alpha", "alpha": 0.9, "critic": "transformer", "critic_dim": 8},
                             ("objective.critics", "objective.baselines")),
    "rail_l": ({"projection_dim": 16}, ("objective.student_projections", "objective.teacher_projections")),
    "rail_c": ({"projection_dim": 16}, ("objective.student_projection", "objective.teacher_projection")),
}


@pytest.mark.parametrize("case", list(OBJECTIVE_CASES))
def test_intermediate_objective_end_to_end(tiny_backbone, tiny_data, captured, case):
    settings, trained = OBJECTIVE_CASES[case]
    inter = {"objective": case, "mapping": "skip", **settings}
    result, rec = run(tiny_config(tiny_backbone, tiny_data, {"loss": {"intermediate": inter}}))
    assert_finite_run(result, rec, ("kd", "intermediate"))
    if trained:
        assert_trained(captured, *trained)


def test_mse_projection_trained_for_narrower_fresh_student(tiny_backbone, tiny_data, captured):
    """Widths differ (16 vs 32): MSE goes through a learned projection, trained with the student."""
    extra = {"student": {"kind": "fresh", "num_layers": 2, "hidden_size": 16, "num_attention_heads": 2,
                         "intermediate_size": 32},
             "loss": {"intermediate": {"objective": "mse", "mapping": "uniform"}}}
    result, rec = run(tiny_config(tiny_backbone, tiny_data, extra))
    assert_finite_run(result, rec, ("intermediate",))
    assert_trained(captured, "objective.projections")


# mapping -> (objective, extra intermediate settings, epochs)
MAPPING_CASES = {
    "skip": ("mse", {}, 1),
    "last": ("cos", {}, 1),
    "uniform": ("pkd", {}, 1),
    "emd": ("mse", {}, 1),
    "random_epoch": ("rail_l", {"mapping": "random", "random_resample": "epoch", "projection_dim": 16}, 2),
    "random_batch": ("rail_l", {"mapping": "random", "random_resample": "batch", "projection_dim": 16}, 1),
    "random_rail_c": ("rail_c", {"mapping": "random", "projection_dim": 16}, 2),
    "custom": ("mse", {"pairs": [[0, 0], [1, 2], [2, 4]]}, 1),
}


@pytest.mark.parametrize("case", list(MAPPING_CASES))
def test_layer_mapping_end_to_end(tiny_backbone, tiny_data, captured, case):
    objective, settings, epochs = MAPPING_CASES[case]
    inter = {"objective": objective, "mapping": case, **settings}
    result, rec = run(tiny_config(tiny_backbone, tiny_data,
                                  {"loss": {"intermediate": inter}, "optim": {"epochs": epochs}}))
    assert_finite_run(result, rec, ("intermediate",))
    mapping = captured["module"].mapping
    assert all(0 <= t <= 4 for _, t, _ in mapping.pairs())
    if case == "emd":  # the flow was solved during training and carries the layer weights' mass
        assert mapping.flow.sum() == pytest.approx(1.0, abs=1e-6)
    if objective == "rail_c":
        assert_trained(captured, *OBJECTIVE_CASES["rail_c"][1])
    elif case.startswith("random"):
        # student layers are always mapped; a teacher layer's projection only learns when it is drawn
        assert_trained(captured, "objective.student_projections")
        changed = changed_parameters(captured)
        drawn = {t for _, t, _ in mapping.pairs()} if case == "random_epoch" else set()  # the last epoch's draw
        trained_teacher = {int(n.split(".")[2]) for n in changed if n.startswith("objective.teacher_projections.")}
        assert trained_teacher and drawn <= trained_teacher, (drawn, trained_teacher)


@pytest.mark.parametrize("extra", [
    {"loss": {"intermediate": {"objective": "mi_alpha", "alpha": 0.9, "mapping": "skip", "critic_hidden": 16,
                               "critic_dim": 8}}},
    {"loss": {"intermediate": {"objective": "mse", "mapping": "last"}}, "mixup": {"enabled": True}},
], ids=["mi_alpha", "mse_mixup"])
def test_regression_end_to_end(tiny_backbone, sts_data, captured, extra):
    cfg = tiny_config(tiny_backbone, sts_data, deep_merge({"loss": {"prediction": {"type": "mse"}}}, extra))
    cfg["data"]["max_train_examples"] = 128
    result, rec = run(cfg)
    assert result.metrics["task_type"] == "regression" and result.metrics["metric"] == "pearson"
    assert result.student.config.num_labels == 1
    assert_finite_run(result, rec, ("kd", "intermediate"))
    if "mixup" in extra:
        assert any("mixup_student" in logs for logs in rec.logs)
    else:
        assert_trained(captured, "objective.critics", "objective.baselines")


# --------------------------------------------------------------------------- each family on real data
REAL_FAMILIES = {
    "augmentation": {"augmentation": {"augmenters": [{"name": "random", "p": 0.1},
                                                     {"name": "embedding_neighbour", "p": 0.1}],
                                      "copies": 1, "reaugment_every": 1, "repeated_aug": 2}},
    "mixup": {"mixup": {"enabled": True}},
    "prediction": {"loss": {"prediction": {"type": "soft_ce", "temperature": 4.0}}},
    "intermediate": {"loss": {"intermediate": {"objective": "mi_alpha", "alpha": 0.9, "mapping": "skip"}}},
    "mapping": {"loss": {"intermediate": {"objective": "rail_l", "mapping": "random"}}},
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(REAL_FAMILIES))
def test_family_beats_majority_on_bundled_data(tiny_backbone, family):
    result, rec = run(real_config(tiny_backbone, REAL_FAMILIES[family]))
    assert_finite_run(result, rec)
    m = result.metrics
    assert m["student_score"] > m["majority_baseline"], m


# --------------------------------------------------------------------------- invalid combinations
@pytest.mark.parametrize("alpha", [1.5, -0.1])
def test_mi_alpha_outside_unit_interval_names_field(alpha):
    with pytest.raises(ConfigError, match=r"loss\.intermediate\.alpha"):
        parse_config({"loss": {"intermediate": {"objective": "mi_alpha", "alpha": alpha}}})


def test_alpha_on_other_objective_names_field():
    with pytest.raises(ConfigError, match=r"loss\.intermediate\.alpha"):
        parse_config({"loss": {"intermediate": {"objective": "infonce", "alpha": 0.5}}})


@pytest.mark.parametrize("loss_type", ["kl", "soft_ce"])
def test_classification_loss_on_regression_task(tiny_backbone, sts_data, loss_type):
    cfg = tiny_config(tiny_backbone, sts_data, {"loss": {"prediction": {"type": loss_type}}})
    with pytest.raises(ConfigError, match=r"loss\.prediction\.type"):
        run_distillation(parse_config(cfg))


def test_custom_mapping_beyond_teacher_depth(tiny_backbone, tiny_data):
    cfg = tiny_config(tiny_backbone, tiny_data, {"loss": {"intermediate": {
        "objective": "mse", "mapping": "custom", "pairs": [[1, 2], [2, 9]]}}})
    with pytest.raises(ConfigError, match=r"loss\.intermediate\.pairs.*teacher layer 9"):
        run_distillation(parse_config(cfg))


def test_student_deeper_than_teacher(tiny_backbone, tiny_data):
    cfg = tiny_config(tiny_backbone, tiny_data, {"student": {"num_layers": 6}})
    with pytest.raises(ConfigError, match=r"student\.num_layers"):
        run_distillation(parse_config(cfg))


def test_fresh_deeper_student_with_one_to_one_mapping(tiny_backbone, tiny_data):
    cfg = tiny_config(tiny_backbone, tiny_data, {"student": {"kind": "fresh", "num_layers": 6},
                                                 "loss": {"intermediate": {"objective": "mse", "mapping": "skip"}}})
    with pytest.raises(ConfigError, match=r"loss\.intermediate\.mapping"):
        run_distillation(parse_config(cfg))


def test_rail_c_with_many_to_many_mapping(tiny_backbone, tiny_data):
    cfg = tiny_config(tiny_backbone, tiny_data, {"loss": {"intermediate": {"objective": "rail_c", "mapping": "emd"}}})
    with pytest.raises(ConfigError, match=r"loss\.intermediate\.mapping"):
        run_distillation(parse_config(cfg))


@pytest.mark.parametrize("data, field", [
    ({"loss": {"intermediate": {"objectiv": "mse"}}}, "loss.intermediate.objectiv"),
    ({"optimizer": {"epochs": 1}}, "optimizer"),
    ({"augmentation": {"augmenters": [{"name": "random", "prob": 0.2}]}}, "augmentation.augmenters.0.prob"),
    ({"mixup": {"enabled": True, "alpha": 0.4}}, "mixup.alpha"),
])
def test_unknown_keys_name_the_dotted_field(data, field):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert f"{field}: unknown key" in str(err.value)
