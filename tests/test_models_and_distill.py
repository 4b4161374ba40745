"""Foundation: students cut from teachers, the teacher cache, and an end-to-end distil through the CLI."""
import json
import os

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from autodistill.teacher import fine_tuned as teacher_mod
from autodistill.cli import main
from autodistill.config import ConfigError, StudentConfig, parse_config
from autodistill.data import bundled_dataset_path
from autodistill.device import select_device
from autodistill.distill import run_distillation
from autodistill.models import build_student, load_classifier, load_tokenizer, select_teacher_layers

# Settings under which the tiny random-init teacher learns CR well above the majority class.
TEACHER = {"epochs": 4, "learning_rate": 3e-3}
STUDENT_OPTIM = {"epochs": 3, "learning_rate": 3e-3}


def real_data_config(backbone, **extra):
    cfg = {"data": {"train": str(bundled_dataset_path()), "max_length": 64},
           "teachers": [{"backbone": backbone, **TEACHER}], "optim": dict(STUDENT_OPTIM)}
    cfg.update(extra)
    return parse_config(cfg)


def test_layer_selection():
    assert select_teacher_layers(6, 2, "first") == [0, 1]
    assert select_teacher_layers(6, 2, "uniform") == [0, 5]
    assert select_teacher_layers(12, 4, "uniform") == [0, 4, 7, 11]
    with pytest.raises(ConfigError, match="student.num_layers=7"):
        select_teacher_layers(6, 7, "first")


@pytest.mark.parametrize("selection,expected", [("first", [0, 1]), ("uniform", [0, 3])])
def test_truncated_student_copies_teacher_weights(tiny_backbone, selection, expected):
    teacher = load_classifier(tiny_backbone, 2, "classification")
    student = build_student(teacher, StudentConfig(num_layers=2, layer_selection=selection))
    assert student.config.num_hidden_layers == 2
    t_layers, s_layers = teacher.bert.encoder.layer, student.bert.encoder.layer
    for new, old in enumerate(expected):
        for (name, p_s), (_, p_t) in zip(s_layers[new].named_parameters(), t_layers[old].named_parameters()):
            assert torch.equal(p_s, p_t), name
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)


def test_fresh_student_is_narrower(tiny_backbone):
    teacher = load_classifier(tiny_backbone, 3, "classification")
    student = build_student(teacher, StudentConfig(kind="fresh", num_layers=1, hidden_size=16,
                                                   num_attention_heads=2))
    assert student.config.hidden_size == 16 and student.config.num_hidden_layers == 1
    assert student.config.vocab_size == teacher.config.vocab_size
    with pytest.raises(ConfigError, match="divisible"):
        parse_config({"student": {"kind": "fresh", "hidden_size": 30, "num_attention_heads": 4}})


def test_unknown_backbone_is_a_clear_error(tmp_path, monkeypatch):
    from autodistill.models import ModelLoadError
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="no-such-model"):
        load_tokenizer(str(tmp_path / "no-such-model"))


def test_cpu_device_threads():
    assert select_device("cpu").type == "cpu"
    assert torch.get_num_threads() >= 1


def test_second_teacher_request_hits_cache(tiny_backbone, monkeypatch):
    cfg = parse_config({"data": {"train": str(bundled_dataset_path()), "max_train_examples": 200,
                                 "max_length": 32},
                        "teachers": [{"backbone": tiny_backbone, "epochs": 1}], "optim": {"epochs": 1}})
    first = run_distillation(cfg)
    assert first.metrics["teacher_from_cache"] == [False]

    def no_training(*args, **kwargs):
        raise AssertionError("the cached teacher must not be trained again")
    monkeypatch.setattr(teacher_mod, "Trainer", no_training)
    monkeypatch.setattr(teacher_mod, "load_classifier", no_training)
    second = run_distillation(cfg)
    assert second.metrics["teacher_from_cache"] == [True]
    assert second.metrics["teacher_score"] == first.metrics["teacher_score"]


def test_cached_teacher_outputs_are_not_recomputed_per_step(tiny_backbone):
    result = run_distillation(parse_config({
        "data": {"train": str(bundled_dataset_path()), "max_train_examples": 100, "max_length": 32},
        "teachers": [{"backbone": tiny_backbone, "epochs": 1}], "optim": {"epochs": 2}}))
    assert result.metrics["teacher_outputs"] == "cached"
    assert result.metrics["teacher_forward_examples"] == 0


def test_prepared_teachers_and_logits_are_what_a_trial_uses(tiny_backbone, monkeypatch):
    """The one builder (autodistill.prepare): a search's driver prepares the task, its teacher and the
    teacher's logits on train; shipped to a trial, run_distillation fine-tunes nothing and computes no
    teacher output, and scores the same teacher."""
    from autodistill import prepare as prepare_module
    from autodistill.prepare import prepare
    from autodistill.shipping import materialize, pack

    cfg = parse_config({"data": {"train": str(bundled_dataset_path()), "max_train_examples": 100, "max_length": 32},
                        "teachers": [{"backbone": tiny_backbone, "epochs": 1}], "optim": {"epochs": 1}})
    prepared = prepare(cfg, teacher_logits=True)
    assert len(prepared.teachers) == 1 and len(prepared.outputs) == 1
    assert len(prepared.train) + len(prepared.dev) == len(prepared.task.train)
    assert next(iter(prepared.outputs.values())).logits.shape == (len(prepared.train), prepared.task.num_labels)
    given = materialize(pack(cfg, prepared.task, prepared.tokenizer, prepared.teachers, prepared.outputs))

    def no_work(*args, **kwargs):
        raise AssertionError("a trial given the prepared teacher and logits must not recompute them")
    monkeypatch.setattr(teacher_mod, "Trainer", no_work)
    monkeypatch.setattr(prepare_module, "compute_teacher_outputs", no_work)
    result = run_distillation(cfg, given=given)
    assert result.metrics["teacher_outputs"] == "cached" and result.metrics["teacher_forward_examples"] == 0
    assert result.metrics["teacher_score"] == prepared.teachers[0].score


def test_a_killed_trial_process_leaves_no_inputs_behind(tmp_path):
    """A trial's materialized inputs (the teachers' weights) are named by its process: those of a process
    that is gone (killed, so no exit hook ran) are removed; a live process's are kept."""
    import subprocess
    import sys

    from autodistill.shipping import INPUTS_PREFIX, remove_stale_inputs
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale, live = tmp_path / f"{INPUTS_PREFIX}{gone}-abc", tmp_path / f"{INPUTS_PREFIX}{os.getpid()}-def"
    for folder in (stale, live):
        (folder / "teachers").mkdir(parents=True)
    assert remove_stale_inputs(tmp_path) == [stale]
    assert not stale.exists() and live.is_dir()


def test_distil_cli_beats_majority_and_exports(tiny_backbone, tmp_path, capsys):
    cfg = real_data_config(tiny_backbone)
    cfg_path = tmp_path / "cfg.yaml"
    cfg.save(cfg_path)
    out = tmp_path / "out"
    assert main(["distill", "--data", str(bundled_dataset_path()), "--config", str(cfg_path),
                 "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "student" in report and "majority" in report
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("teacher_score", "student_score", "teacher_parameters", "student_parameters",
                "teacher_cpu_ms_per_example", "student_cpu_ms_per_example"):
        assert key in metrics
    assert metrics["student_score"] > metrics["majority_baseline"]
    assert metrics["student_parameters"] < metrics["teacher_parameters"]
    student = AutoModelForSequenceClassification.from_pretrained(out / "student")
    assert student.config.num_hidden_layers == 2
    assert (out / "config.yaml").is_file()


def test_regression_path(tiny_backbone, tmp_path):
    rows = [{"text_a": f"the cat sat {i % 7}", "text_b": f"a dog ran {i % 5}", "label": (i % 7) / 1.5}
            for i in range(120)]
    path = tmp_path / "sts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    result = run_distillation(parse_config({
        "data": {"train": str(path), "max_length": 16}, "loss": {"prediction": {"type": "mse"}},
        "teachers": [{"backbone": tiny_backbone, "epochs": 1}], "optim": {"epochs": 1}}))
    assert result.metrics["task_type"] == "regression" and result.metrics["metric"] == "pearson"
    assert result.student.config.num_labels == 1


def test_cli_reports_config_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  learnig_rate: 0.1\n")
    assert main(["distill", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "optim.learnig_rate: unknown key" in capsys.readouterr().err


@pytest.mark.parametrize("student", [{}, {"kind": "fresh", "hidden_size": 16, "num_attention_heads": 2,
                                          "intermediate_size": 32}])
def test_run_does_not_depend_on_earlier_random_draws(tiny_backbone, tmp_path, monkeypatch, student):
    """Long-lived processes (the meta build, Ray actors) run many configs in a row: a run's teacher and
    student must be a function of its config, not of what the process drew from the global RNGs before."""
    import random

    cfg = parse_config({"data": {"train": str(bundled_dataset_path()), "max_train_examples": 100, "max_length": 32},
                        "teachers": [{"backbone": tiny_backbone, "epochs": 1}], "student": student,
                        "loss": {"intermediate": {"objective": "infonce"}}, "optim": {"epochs": 1}})
    runs = []
    # a fresh cache (the teacher is fine-tuned again), then the same cache (the teacher is loaded)
    for cache, draws in (("a", 1), ("b", 1000), ("b", 7)):
        monkeypatch.setenv("AUTODISTILL_CACHE", str(tmp_path / cache))
        torch.manual_seed(draws)
        torch.rand(draws)
        random.seed(draws)
        result = run_distillation(cfg)
        weights = torch.cat([p.detach().flatten() for p in result.student.parameters()])
        runs.append((result.metrics, weights))
    assert [m["teacher_from_cache"] for m, _ in runs] == [[False], [False], [True]]
    assert runs[0][0]["teacher_score"] == runs[1][0]["teacher_score"] == runs[2][0]["teacher_score"]
    curves = [[{k: v for k, v in row.items() if k != "seconds"} for row in m["history"]] for m, _ in runs]
    assert curves[0] == curves[1] == curves[2]
    assert torch.equal(runs[0][1], runs[1][1]) and torch.equal(runs[0][1], runs[2][1])
