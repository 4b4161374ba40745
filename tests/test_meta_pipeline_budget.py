"""A recommendation is a KD pipeline, never the meta-dataset's budget; build and recommend compute the
meta-features with one function on the rows that are trained on."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from autodistill.config import PIPELINE_SECTIONS, DataConfig, PipelineConfig, deep_merge, with_pipeline
from autodistill.meta.portfolio import META_PRESET, candidate_config
from autodistill.meta.recommender import Recommender
from autodistill.meta.table import records_to_table
from autodistill.records import RunRecord

BUDGET_KEYS = ("data", "optim", "student", "teachers")


def _recommender_at_build_budget() -> Recommender:
    """A meta-model fitted on records whose configs carry the build's budget (1,000 rows, 2 epochs, len 64)."""
    recs = []
    for d in range(3):
        for name, y in (("vanilla_kd", 0.80), ("mixup", 0.85), ("kd_kl_t4", 0.82)):
            cfg = candidate_config(name)
            assert cfg.data.max_train_examples == 1000 and cfg.optim.epochs == 2.0 and cfg.data.max_length == 64
            recs.append(RunRecord.create(dataset_fingerprint=f"fp{d}", meta_features={"log_n_train": 6.0 + d},
                                         config=cfg, metrics={"student_score": y + 0.01 * d}, teacher_score=0.9,
                                         wall_seconds=1.0, student_parameters=1, status="completed",
                                         search={"dataset": f"ds{d}", "candidate": name}))
    return Recommender.fit(records_to_table(recs), method="rf", model_params={"n_estimators": 20})


def test_a_recommendation_never_carries_the_build_budget(tmp_path):
    rec = _recommender_at_build_budget()
    recs = rec.recommend({"log_n_train": 9.2}, top_k=3)
    assert recs and recs[0].candidate == "mixup"
    for r in recs:
        assert set(r.config) <= set(PIPELINE_SECTIONS) and not set(r.config) & set(BUDGET_KEYS)
    users = PipelineConfig.model_validate({"data": {"train": "mine.jsonl", "max_length": 128},
                                           "optim": {"epochs": 5.0}})
    full = with_pipeline(users, recs[0].config)
    assert full.data.max_train_examples is None and full.data.max_length == 128 and full.optim.epochs == 5.0
    assert full.data.train == "mine.jsonl" and full.mixup.enabled          # the user's rows, the pipeline's mixup


def test_cli_recommend_keeps_the_users_rows_and_budget(tmp_path, capsys):
    from autodistill import cli

    _recommender_at_build_budget().save(tmp_path / "model")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": f"row {i} {'good' if i % 2 else 'bad'}", "label": i % 2}) + "\n"
                            for i in range(60)))
    assert cli.main(["recommend", "--model", str(tmp_path / "model"), "--data", str(data), "--no-backbone",
                     "--top-k", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert all("data" not in r["config"] and "optim" not in r["config"] for r in out["recommendations"])
    top = out["top_config"]
    assert top["data"]["max_train_examples"] is None and top["data"]["train"] == str(data)
    assert top["optim"]["epochs"] == PipelineConfig().optim.epochs and top["data"]["max_length"] == 128
    assert out["meta_features"]["log_n_train"] == pytest.approx(math.log1p(54), abs=1e-6)  # 60 rows - 10% validation


def test_build_and_recommend_compute_the_same_features_on_the_same_rows(tmp_path, monkeypatch):
    """The build's features file and `recommend` on the data config the build trains with are equal,
    and log_n_train is the number of rows trained on (not a constant)."""
    from autodistill.data import load_task_data
    from autodistill.meta import build as B
    from autodistill.meta.recommend import recommend_for
    from autodistill.models import load_tokenizer

    folder = tmp_path / "d1"
    folder.mkdir()
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    (folder / "train.jsonl").write_text("".join(
        json.dumps({"text": f"{words[i % 6]} row {i} with {words[(i * 7) % 6]} words", "label": i % 2}) + "\n"
        for i in range(300)))
    preset = deep_merge(META_PRESET, {"data": {"max_train_examples": 120}})
    # the teacher is not what this test is about: its score is given (no fine-tuning in a unit test)
    monkeypatch.setattr(B, "_teacher", lambda cfg, task: (load_tokenizer("default"), "accuracy", True, 0.9, None))
    ctx = B._teacher_and_features("d1", str(folder), preset, tmp_path / "features", None, lambda *_: None)
    build_cfg = candidate_config("vanilla_kd", "classification", preset, {"train": str(folder)})
    _recommender_at_build_budget().save(tmp_path / "model")
    _, _, feats = recommend_for(build_cfg.data, tmp_path / "model", 3, embeddings=False)
    teacher = {"teacher_score", "has_teacher_score", "teacher_confidence", "has_teacher_confidence"}
    assert {k: v for k, v in ctx.meta_features.items() if k not in teacher} == \
        {k: v for k, v in feats.items() if k not in teacher}
    assert len(load_task_data(build_cfg.data).train) == 120
    assert feats["log_n_train"] == pytest.approx(math.log1p(120), abs=1e-6)
    _, _, all_rows = recommend_for(DataConfig(train=str(folder)), tmp_path / "model", 3, embeddings=False)
    assert all_rows["log_n_train"] == pytest.approx(math.log1p(270), abs=1e-6)   # the user's whole train split


def test_build_recommend_the_service_and_a_search_compute_the_same_features_embeddings_included(
        tmp_path, monkeypatch, tiny_backbone):
    """The four consumers of the meta-features, with a backbone's embedding features on: the build's
    features file, `recommend`, the service's `POST /datasets` and a search's records agree on the same rows."""
    from autodistill.data import load_task_data
    from autodistill.meta import build as B
    from autodistill.meta.features import resolve_backbone_model, search_meta_features
    from autodistill.meta.recommend import recommend_for
    from autodistill.models import load_tokenizer
    from service.datasets import meta_features as service_meta_features

    folder = tmp_path / "d1"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(
        json.dumps({"text": f"{['good', 'bad', 'fine'][i % 3]} row {i} of {i % 7} words", "label": i % 2}) + "\n"
        for i in range(200)))
    preset = deep_merge(META_PRESET, {"data": {"max_train_examples": 100}})
    monkeypatch.setattr(B, "_teacher", lambda cfg, task: (load_tokenizer(tiny_backbone), "accuracy", True, 0.9, None))
    build = B._teacher_and_features("d1", str(folder), preset, tmp_path / "features",
                                    resolve_backbone_model(tiny_backbone), lambda *_: None).meta_features
    data = candidate_config("vanilla_kd", "classification", preset, {"train": str(folder)}).data
    _recommender_at_build_budget().save(tmp_path / "model")
    _, _, recommended = recommend_for(data, tmp_path / "model", 3, backbone=tiny_backbone)
    task = load_task_data(data)
    served = service_meta_features(task, tiny_backbone)
    searched = search_meta_features(PipelineConfig.model_validate({"teachers": [{"backbone": tiny_backbone}]}),
                                    task, 0.9)
    teacher = {"teacher_score", "has_teacher_score", "teacher_confidence", "has_teacher_confidence"}
    same = [{k: v for k, v in f.items() if k not in teacher} for f in (build, recommended, served, searched)]
    assert same[0] == same[1] == same[2] == same[3]
    assert same[0]["has_backbone"] == 1.0 and same[0]["emb_mean_cosine"] != 0.0
    assert same[0]["log_n_train"] == pytest.approx(math.log1p(100), abs=1e-6)


def test_the_users_budget_not_the_candidates_enters_the_model():
    """A meta-dataset at two students where the best pipeline depends on the student: the ranking
    follows the student of the user's config (one candidate name per pipeline, whatever student it ran with)."""
    from autodistill.meta.portfolio import STUDENT_PRESETS

    recs = []
    for d in range(4):
        for student in ("cut2", "fresh4x128"):
            preset = {**META_PRESET, "student": STUDENT_PRESETS[student]}
            for name in ("vanilla_kd", "mixup"):
                good = (name == "vanilla_kd") == (student == "cut2")
                recs.append(RunRecord.create(
                    dataset_fingerprint=f"fp{d}-{student}", meta_features={"log_n_train": 6.0 + d},
                    config=candidate_config(name, "classification", preset),
                    metrics={"student_score": 0.8 + 0.05 * good}, teacher_score=0.9, wall_seconds=1.0,
                    student_parameters=1, status="completed",
                    search={"dataset": f"ds{d}@{student}", "candidate": name}))
    rec = Recommender.fit(records_to_table(recs), method="rf", model_params={"n_estimators": 50})
    small = PipelineConfig.model_validate({"student": STUDENT_PRESETS["fresh4x128"]})
    assert rec.recommend({"log_n_train": 7.0}, top_k=1, budget=small)[0].candidate == "mixup"
    assert rec.recommend({"log_n_train": 7.0}, top_k=1, budget=PipelineConfig())[0].candidate == "vanilla_kd"


def test_a_student_the_model_never_saw_is_said(tmp_path):
    """Fitted on fresh 4x128 students only: a recommendation for the default (cut 2-layer) student says
    that its ranking comes from other students; for the fresh student it says nothing."""
    from autodistill.meta.portfolio import STUDENT_PRESETS

    fresh = {**META_PRESET, "student": STUDENT_PRESETS["fresh4x128"]}
    recs = [RunRecord.create(
        dataset_fingerprint=f"fp{d}", meta_features={"log_n_train": 6.0 + d},
        config=candidate_config(name, "classification", fresh),
        metrics={"student_score": 0.8 + 0.01 * d + 0.05 * (name == "mixup")}, teacher_score=0.9, wall_seconds=1.0,
        student_parameters=1, status="completed", search={"dataset": f"ds{d}", "candidate": name})
        for d in range(3) for name in ("vanilla_kd", "mixup")]
    rec = Recommender.fit(records_to_table(recs), method="rf", model_params={"n_estimators": 10})
    same = rec.recommend({"log_n_train": 7.0}, top_k=2,
                         budget=PipelineConfig.model_validate({"student": STUDENT_PRESETS["fresh4x128"]}))
    assert all("student_outside_training" not in r.why for r in same)
    other = rec.recommend({"log_n_train": 7.0}, top_k=2, budget=PipelineConfig())
    note = other[0].why["student_outside_training"]
    assert "fresh 4-layer hidden-128 4-head ffn-512 students" in note, note
    assert "yours (truncated 2-layer (uniform layers))" in note, note
    first = PipelineConfig.model_validate({"student": {**STUDENT_PRESETS["fresh4x128"], "layer_selection": "first"}})
    assert rec.student_outside_training(first) is None          # a fresh student has no layer selection
    assert rec.recommend({"log_n_train": 7.0}, top_k=1)[0].why.get("student_outside_training") is None  # no budget
    rec.save(tmp_path / "model")
    assert Recommender.load(tmp_path / "model").student_outside_training(PipelineConfig()) == note
    rec.info.pop("students")                                  # a model saved before students were recorded
    assert rec.student_outside_training(PipelineConfig()) is None


def test_the_row_cap_is_no_model_input_the_rows_trained_on_are():
    """The build caps rows (500, 2,000); a user's budget leaves the cap unset. The model reads how many rows
    are trained on from the meta-features, so an unset cap is not a value it never saw."""
    rec = _recommender_at_build_budget()
    assert not [c for c in rec.feature_columns if "max_train_examples" in c]
    capped = PipelineConfig.model_validate({"data": {"train": "mine.jsonl", "max_train_examples": 1000}})
    uncapped = PipelineConfig.model_validate({"data": {"train": "mine.jsonl"}})
    for log_n in (6.0, 8.0):
        query = {"log_n_train": log_n}
        assert np.array_equal(rec.candidate_matrix(query, budget=capped), rec.candidate_matrix(query, budget=uncapped),
                              equal_nan=True)
