"""Meta-features (issue 6, part A), the portfolio, the meta build loop and the Distiller import mapping."""
from __future__ import annotations

import json
import math
import random
import typing
from pathlib import Path

import pytest

from autodistill.config import (AugmenterConfig, DataConfig, DynamicKDConfig, IntermediateConfig,
                                PredictionLossConfig, WeightingConfig, parse_config)
from autodistill.data import load_task_data
from autodistill.meta.features import FEATURE_NAMES, META_FEATURES_VERSION, compute_meta_features
from autodistill.meta.portfolio import (EXCLUDED_OPTIONS, META_PRESET, PORTFOLIO, REFERENCES, candidate_config,
                                        validate_portfolio)

WORDS = ("good bad great awful movie film plot actor boring fun slow fast happy sad loud quiet red blue "
         "strange unbelievable tokenisation xylophone").split()


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _sentence(rng, label):
    n = rng.randint(2, 14)
    return " ".join([WORDS[label % len(WORDS)]] + [rng.choice(WORDS) for _ in range(n)]) + rng.choice([".", "!", ""])


def _dataset(tmp_path, name, n_train, n_val, classes=None, pair=False, regression=False, weights=None, seed=0):
    rng = random.Random(seed)
    folder = tmp_path / name
    folder.mkdir()

    def rows(n, offset):
        out = []
        for i in range(n):
            if regression:
                label = round(rng.uniform(0, 5), 2)
                key = int(label)
            elif weights:
                label = rng.choices(range(classes), weights=weights)[0]
                key = label
            else:
                label = (i + offset) % classes   # every class present
                key = label
            text = _sentence(rng, key)
            out.append({"text_a": text, "text_b": _sentence(rng, key), "label": label} if pair
                       else {"text": text, "label": label})
        return out

    train = rows(n_train, 0)
    if weights:  # make sure every class occurs in train at least once
        for c in range(classes):
            train[c]["label"] = c
    _write(folder / "train.jsonl", train)
    _write(folder / "validation.jsonl", rows(n_val, 1))
    return load_task_data(DataConfig(train=str(folder)))


@pytest.fixture(scope="module")
def tokenizer():
    from autodistill.models import load_tokenizer
    return load_tokenizer("default")


SHAPES = {
    "single_2": dict(n_train=60, n_val=12, classes=2),
    "pair_3": dict(n_train=60, n_val=12, classes=3, pair=True),
    "regression_pair": dict(n_train=50, n_val=10, pair=True, regression=True),
    "single_20": dict(n_train=100, n_val=20, classes=20),
    "tiny_12": dict(n_train=12, n_val=4, classes=3),
    "imbalanced": dict(n_train=80, n_val=10, classes=2, weights=[0.97, 0.03]),
    "tiny_imbalanced_5": dict(n_train=8, n_val=3, classes=5, weights=[0.9, 0.025, 0.025, 0.025, 0.025]),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_features_deterministic_and_finite(tmp_path, tokenizer, shape):
    task = _dataset(tmp_path, shape, **SHAPES[shape])
    a = compute_meta_features(task, tokenizer, backbone=None, seed=3)
    b = compute_meta_features(task, tokenizer, backbone=None, seed=3)
    assert a == b
    assert list(a) == list(FEATURE_NAMES)
    assert all(isinstance(v, float) and math.isfinite(v) for v in a.values()), a
    assert a["has_backbone"] == 0.0 and a["emb_pca_evr1"] == 0.0
    assert a["is_regression"] == float(task.task_type == "regression")
    assert a["is_pair"] == float(task.is_pair)
    assert 0.0 <= a["label_entropy"] <= 1.0 + 1e-9
    if task.task_type == "classification":
        assert a["landmark_probe"] == a["majority_share"]  # the documented fill value
    assert META_FEATURES_VERSION >= 1


def test_a_label_sorted_file_over_the_character_budget_keeps_every_class(tmp_path, tokenizer, monkeypatch):
    """A sample over MAX_SAMPLE_CHARS keeps a seeded shuffle's rows, not the file's leading ones: on a file
    sorted by label with noise labels the TF-IDF landmark sees both classes (near chance), where the leading
    rows (one class) made it 1.0. Within the budget the sample is as it was."""
    from autodistill.data import Split
    from autodistill.meta import features as F

    rng = random.Random(0)
    words = [f"w{i}" for i in range(300)]
    rows = [{"text": " ".join(rng.choices(words, k=40)), "label": int(i >= 200)} for i in range(400)]   # sorted
    folder = tmp_path / "sorted"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[::40]), encoding="utf-8")
    task = load_task_data(DataConfig(train=str(folder / "train.jsonl"), validation=str(folder / "validation.jsonl")))
    idx = list(range(len(task.train)))
    assert F._within_budget(task.train, idx, 0, "landmark") == idx                     # within: unchanged
    monkeypatch.setattr(F, "MAX_SAMPLE_CHARS", sum(len(r["text"]) for r in rows) // 2)
    kept = F._within_budget(task.train, idx, 0, "landmark")
    assert kept == sorted(kept) and 150 < len(kept) < 250
    assert 0.35 < sum(task.train.labels[i] for i in kept) / len(kept) < 0.65          # both classes, in proportion
    feats = compute_meta_features(task, tokenizer, backbone=None, seed=0)
    assert feats["landmark_tfidf"] < 0.7                                                # noise labels: near chance


def test_features_with_tiny_backbone_and_teacher(tmp_path, tokenizer, tiny_backbone):
    from autodistill.models import load_classifier

    model = load_classifier(tiny_backbone, 3, "classification")
    for shape in ("pair_3", "tiny_12", "regression_pair"):
        task = _dataset(tmp_path, shape, **SHAPES[shape])
        probs = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]
        a = compute_meta_features(task, tokenizer, backbone=model, teacher_score=0.8, teacher_confidence=probs,
                                  seed=1, embed_rows=40)
        b = compute_meta_features(task, tokenizer, backbone=model, teacher_score=0.8, teacher_confidence=probs,
                                  seed=1, embed_rows=40)
        assert a == b
        assert all(math.isfinite(v) for v in a.values())
        assert a["has_backbone"] == 1.0 and a["emb_pca_evr1"] > 0
        assert a["teacher_score"] == 0.8 and a["has_teacher_score"] == 1.0
        assert a["teacher_confidence"] == pytest.approx(0.75) and a["has_teacher_confidence"] == 1.0
    nan_teacher = compute_meta_features(task, tokenizer, backbone=None, teacher_score=float("nan"))
    assert nan_teacher["teacher_score"] == 0.0 and nan_teacher["has_teacher_score"] == 0.0


# --------------------------------------------------------------------------- portfolio
def _literal_values(model, field):
    values = set()
    for arg in typing.get_args(model.model_fields[field].annotation) or ():
        values |= set(typing.get_args(arg)) if typing.get_origin(arg) is typing.Literal else {arg}
    ann = model.model_fields[field].annotation
    if typing.get_origin(ann) is typing.Literal:
        values = set(typing.get_args(ann))
    return {v for v in values if isinstance(v, str)}


def test_portfolio_validates_and_covers_every_option():
    configs = validate_portfolio()
    assert len(PORTFOLIO) >= 24 and set(REFERENCES) <= set(PORTFOLIO)
    used = {"objective": set(), "mapping": set(), "augmenter": set(), "prediction": set(), "weighting": set(),
            "selection": set(), "alpha": set()}
    for name, cfg in configs.items():
        inter = cfg.loss.intermediate
        used["objective"].add(inter.objective)
        if inter.objective != "none" or cfg.dynamic.objective_adaptation:
            used["mapping"].add(inter.mapping)
        if inter.objective == "mi_alpha":
            used["alpha"].add(inter.alpha)
        used["augmenter"] |= {a.name for a in cfg.augmentation.augmenters}
        used["prediction"].add(cfg.loss.prediction.type)
        used["weighting"].add(cfg.weighting.strategy)
        used["selection"].add(cfg.dynamic.selection)
        # the same budget for every run
        assert cfg.data.max_train_examples == META_PRESET["data"]["max_train_examples"]
        assert cfg.optim.epochs == META_PRESET["optim"]["epochs"] and cfg.student.num_layers == 2
    expected = {
        "objective": _literal_values(IntermediateConfig, "objective"),
        "mapping": _literal_values(IntermediateConfig, "mapping") - set(EXCLUDED_OPTIONS["mapping"]),
        "augmenter": _literal_values(AugmenterConfig, "name") - set(EXCLUDED_OPTIONS["augmenter"]),
        "prediction": _literal_values(PredictionLossConfig, "type"),
        "weighting": _literal_values(WeightingConfig, "strategy"),
        "selection": _literal_values(DynamicKDConfig, "selection"),
    }
    assert len(expected["objective"]) >= 11 and "backtranslation" not in expected["augmenter"]
    for kind, names in expected.items():
        assert names <= used[kind], f"{kind}: not covered {names - used[kind]}"
    assert len(used["alpha"]) >= 3 and {0.5, 0.9} <= used["alpha"]   # "MI-α at several α"
    assert any(c.mixup.enabled for c in configs.values())
    assert any(c.dynamic.objective_adaptation for c in configs.values())
    assert any(len(c.augmentation.augmenters) >= 2 for c in configs.values())
    assert {c.loss.prediction.temperature for c in configs.values()} >= {1.0, 2.0, 4.0}
    no_kd = configs["no_kd"].loss
    assert no_kd.hard_label_weight == 1.0 and no_kd.prediction.weight == 0.0
    assert configs["vanilla_kd"].loss == parse_config({}).loss
    # regression: classification-only losses are adapted, probability-based methods skipped
    assert candidate_config("kd_kl_t4", "regression").loss.prediction.type == "mse"
    assert candidate_config("rw_kd", "regression") is None
    assert candidate_config("dyn_select_entropy_weight_linear", "regression") is None


def test_no_candidate_or_search_space_runs_contextual_without_a_masked_lm():
    """Issue 18, defect 7: `contextual` is the masked-LM augmenter only; the offline static-neighbour
    replacement is `embedding_neighbour` in the portfolio and the shipped search spaces."""
    from autodistill.config import check_runnable
    from autodistill.search.space import load_space

    for cfg in validate_portfolio().values():
        check_runnable(cfg)
    assert any(a.name == "embedding_neighbour" for c in validate_portfolio().values()
               for a in c.augmentation.augmenters)
    for preset in ("full", "distiller"):
        text = json.dumps([p.choices for p in load_space(preset).params], default=str)
        assert "embedding_neighbour" in text and '"contextual"' not in text and "'contextual'" not in text


def test_records_of_candidates_changed_by_the_engine_are_not_current():
    from autodistill import ENGINE_VERSION
    from autodistill.meta.portfolio import CHANGED_IN_ENGINE_VERSION, record_is_current

    assert ENGINE_VERSION == max(CHANGED_IN_ENGINE_VERSION)
    assert set().union(*CHANGED_IN_ENGINE_VERSION.values()) <= set(PORTFOLIO)
    assert not record_is_current("inter_pkd_last", None) and not record_is_current("inter_pkd_last", 1)
    assert record_is_current("inter_pkd_last", ENGINE_VERSION)
    assert record_is_current("vanilla_kd", None)


# --------------------------------------------------------------------------- build loop (no training)
def _fake_contexts_and_runs(monkeypatch, B, regression=frozenset()):
    """The build loop without teachers or training: every context made is listed in ``teachers``,
    every run in ``runs`` as (context, seed, candidate) and recorded as 2 s of wall time."""
    runs, teachers = [], []

    def fake_ctx(name, path, preset, features_dir, model, log):
        teachers.append(name)
        return B.DatasetContext(name, path, None, f"fp-{name}", "regression" if name in regression else "classification",
                                {"log_n_train": 1.0}, 0.9, None)

    def fake_run(ctx, candidate, seed, preset, override, store):
        runs.append((ctx.name, seed, candidate))
        store.append({"dataset_fingerprint": ctx.fingerprint, "config": {"c": candidate}, "seed": seed,
                      "dataset": ctx.name, "candidate": candidate, "wall_seconds": 2.0,
                      "provenance": {"preset_hash": B.preset_hash(preset), "build_version": B.BUILD_VERSION,
                                     "engine_version": B.ENGINE_VERSION}})
        return 2.0

    monkeypatch.setattr(B, "_teacher_and_features", fake_ctx)
    monkeypatch.setattr(B, "_run_one", fake_run)
    return runs, teachers


def test_build_is_dataset_major_resumable_and_limited(tmp_path, monkeypatch):
    from autodistill.meta import build as B
    from autodistill.records import RecordStore

    root = tmp_path / "datasets"
    for d in ("d1", "d2"):
        (root / d).mkdir(parents=True)
    runs, teachers = _fake_contexts_and_runs(monkeypatch, B, regression={"d2"})

    def calls():
        return [(name, candidate) for name, _, candidate in runs]

    kw = dict(datasets=["d1", "d2"], portfolio="no_kd,rw_kd,vanilla_kd", out=tmp_path / "runs", backbone=None,
              log=lambda *_: None)
    s1 = B.build(root, limit=3, **kw)
    # dataset-major: every candidate on d1 (portfolio order) before anything on d2
    assert calls() == [("d1", "no_kd"), ("d1", "vanilla_kd"), ("d1", "rw_kd")] and s1.ran == 3
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "d2.json").write_text(json.dumps({"task_type": "regression", "teacher_seconds": 3,
                                                                       "teacher_refits": [{"seconds": 2}],
                                                                       "build_version": B.BUILD_VERSION}))
    st = B.status(tmp_path / "runs", datasets=["d1", "d2"], portfolio="no_kd,rw_kd,vanilla_kd")
    assert st.done == {"no_kd": ["d1"], "rw_kd": ["d1"], "vanilla_kd": ["d1"]}
    assert st.missing == {"no_kd": ["d2"], "rw_kd": [], "vanilla_kd": ["d2"]}    # rw_kd n/a on regression
    assert (st.run_seconds, st.teacher_seconds, st.eta_seconds(processes=2)) == (6.0, 5.0, 2.0)
    s2 = B.build(root, **kw)
    assert calls()[3:] == [("d2", "no_kd"), ("d2", "vanilla_kd")]   # done ones skipped, rw_kd n/a on d2
    assert s2.skipped_done == 3 and s2.not_applicable == 1
    assert len(RecordStore(tmp_path / "runs" / "d1.jsonl").read()) == 3
    n_teachers = len(teachers)
    assert B.build(root, **kw).ran == 0
    assert len(teachers) == n_teachers   # d2 lacks only rw_kd, n/a on regression: its teacher is not made
    assert len(B.DEFAULT_DATASETS) >= 15
    # a record of an older build is not done; on regression kd_mse_logits is vanilla_kd: run once
    RecordStore(tmp_path / "runs" / "d1.jsonl").append(
        {"dataset_fingerprint": "fp-d1", "config": {"c": "old"}, "seed": 42, "candidate": "kd_mse_logits",
         "provenance": {"preset_hash": B.preset_hash(B.META_PRESET), "build_version": B.BUILD_VERSION - 1}})
    s3 = B.build(root, **{**kw, "portfolio": "kd_mse_logits"})
    assert calls()[5:] == [("d1", "kd_mse_logits")] and s3.not_applicable == 1


def test_build_skips_a_dataset_another_process_has_claimed(tmp_path, monkeypatch):
    from filelock import FileLock

    from autodistill.meta import build as B

    root, runs = tmp_path / "datasets", tmp_path / "runs"
    for d in ("d1", "d2", "d3"):
        (root / d).mkdir(parents=True)
    runs.mkdir()
    on_d1 = FileLock(str(runs / ".d1.building"))   # another build process is on d1 ...
    on_d1.acquire()
    on_d3 = FileLock(str(runs / ".d3.building"))   # ... and on d3, till the end
    on_d3.acquire()
    calls = []
    monkeypatch.setattr(B, "_teacher_and_features", lambda name, path, *a: B.DatasetContext(
        name, path, None, f"fp-{name}", "classification", {}, 0.9, None))

    def fake_run(ctx, candidate, seed, preset, override, store):
        calls.append((ctx.name, candidate))
        store.append({"dataset_fingerprint": ctx.fingerprint, "config": {"c": candidate}, "seed": seed,
                      "dataset": ctx.name, "candidate": candidate,
                      "provenance": {"preset_hash": B.preset_hash(preset), "build_version": B.BUILD_VERSION}})
        if (ctx.name, candidate) == ("d2", "vanilla_kd"):  # meanwhile the other process ran d1's no_kd, and left
            calls.pop()
            fake_run(B.DatasetContext("d1", "", None, "fp-d1", "classification", {}, 0.9, None), "no_kd", seed,
                     preset, override, B.RecordStore(runs / "d1.jsonl"))
            calls[-1:] = [("d2", "vanilla_kd")]
            on_d1.release()
        return 1.0

    monkeypatch.setattr(B, "_run_one", fake_run)
    s = B.build(root, datasets=["d1", "d2", "d3"], portfolio="no_kd,vanilla_kd", out=runs, backbone=None,
                log=lambda *_: None)
    # d1 skipped while claimed, taken up after d2 with what the other process recorded; d3 never free
    assert calls == [("d2", "no_kd"), ("d2", "vanilla_kd"), ("d1", "vanilla_kd")]
    assert (s.ran, s.skipped_done, s.claimed_elsewhere) == (3, 1, 1)
    on_d3.release()


def test_build_refuses_a_run_whose_teacher_changed(tmp_path, monkeypatch):
    """A resumed build that fine-tuned a different teacher must not mix its runs into the dataset's records."""
    from types import SimpleNamespace

    from autodistill import distill
    from autodistill.meta import build as B
    from autodistill.records import RecordStore

    ctx = B.DatasetContext("d1", str(tmp_path), None, "fp-d1", "classification", {"log_n_train": 1.0}, 0.9, None)
    metrics = {"teacher_score": 0.8, "student_score": 0.7, "metric": "accuracy", "dataset_fingerprint": "fp-d1"}
    monkeypatch.setattr(distill, "run_distillation", lambda cfg: SimpleNamespace(metrics=metrics))
    store = RecordStore(tmp_path / "d1.jsonl")
    with pytest.raises(B.TeacherMismatch, match="teacher scores 0.800000"):
        B._run_one(ctx, "vanilla_kd", 42, B.META_PRESET, None, store)
    assert store.read() == []
    metrics["teacher_score"] = 0.9
    B._run_one(ctx, "vanilla_kd", 42, B.META_PRESET, None, store)
    assert [r.candidate for r in store.read()] == ["vanilla_kd"]



def test_a_teacher_refit_on_a_new_machine_is_checked_and_timed(tmp_path, monkeypatch):
    """The features file exists (made on another machine) but the teacher cache does not: the teacher
    is re-fine-tuned before any run, must score what the file says, and its time is recorded."""
    from autodistill.data import load_task_data
    from autodistill.meta import build as B

    data = tmp_path / "d1"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps({"text": f"row {i} is {'good' if i % 2 else 'bad'}",
                                                          "label": i % 2}) + "\n" for i in range(40)))
    fingerprint = load_task_data(B.candidate_config("vanilla_kd", "classification", B.META_PRESET,
                                                    {"train": str(data)}).data).fingerprint
    feat_file = tmp_path / "features" / "d1.json"
    feat_file.parent.mkdir()
    feat_file.write_text(json.dumps({
        "version": B.META_FEATURES_VERSION, "build_version": B.BUILD_VERSION, "dataset_fingerprint": fingerprint,
        "preset_hash": B.preset_hash(B.META_PRESET), "teacher_score": 0.9, "teacher_confidence": 0.8,
        "meta_features": {"log_n_train": 1.0}}))
    teacher = {"from_cache": False, "score": 0.9}
    monkeypatch.setattr(B, "_teacher", lambda cfg, task: (None, "accuracy", teacher["from_cache"], teacher["score"], None))
    make = lambda: B._teacher_and_features("d1", str(data), B.META_PRESET, feat_file.parent, None,  # noqa: E731
                                           lambda *_: None)
    ctx = make()
    assert (ctx.teacher_score, ctx.meta_features) == (0.9, {"log_n_train": 1.0})
    assert len(json.loads(feat_file.read_text())["teacher_refits"]) == 1
    teacher["from_cache"] = True
    make()
    assert len(json.loads(feat_file.read_text())["teacher_refits"]) == 1
    teacher["score"] = 0.85
    with pytest.raises(B.TeacherMismatch, match="0.850000"):
        make()

# --------------------------------------------------------------------------- Distiller import
DISTILLER_CSV = """Model,Teacher,intermediate_loss_type,alpha,intermediate_strategy,kd_loss_type,mixup,repeated_aug,aug_p,#example,score,task,ratio,baseline_score,contextual,backtranslation,random
ELECTRA_SMALL,BERT_BASE,mi,0.9,skip,mse,FALSE,1,0.3,393000,0.83681737,mnli,0.995026599,56.2,0,0,0
TinyBERT4,Roberta-large,pkd,0.1,emd,ce,TRUE,4,0.5,3700,0.85,mrpc,0.93,81.5,2,0,1
TinyBERT4,BERT_BASE,ce,0.5,last,ce,FALSE,1,0.1,67000,0.9,sst-2,0.967,80,2,1,3
"""
TEACHERS_CSV = "\ufefftask,model,score\nmnli,BERT_BASE,84.4\nmrpc,Roberta-large,91.3\nsst-2,BERT_BASE,93.0\n"
PAPER_FEATURES_CSV = ("\ufefftask , 0,1 ,#example,#label\nmnli,1.5,-0.25,393000,3\nmrpc,0.5,0.75,3700,2\n"
                      "sst-2,-1.0,2.0,67000,2\nboolq,0.1,0.2,9400,2\n")


def test_distiller_rows_map_onto_our_config():
    from autodistill.meta.distiller_import import (DistillerImportError, map_row, paper_train_sizes,
                                                   read_paper_task_features, read_rows, read_teacher_scores,
                                                   runs_train_size, to_records)

    rows = read_rows(DISTILLER_CSV)
    p0, e0 = map_row(rows[0])
    c0 = parse_config(p0)
    assert c0.loss.intermediate.objective == "mi_alpha" and c0.loss.intermediate.alpha == 0.9
    assert c0.loss.intermediate.mapping == "skip" and c0.loss.prediction.type == "mse"
    assert not c0.mixup.enabled and c0.augmentation.augmenters == [] and c0.augmentation.repeated_aug == 1
    assert e0["teacher"] == "BERT_BASE" and e0["student"] == "ELECTRA_SMALL" and e0["aug_p"] == 0.3

    c1 = parse_config(map_row(rows[1])[0])
    assert c1.loss.intermediate.objective == "pkd" and c1.loss.intermediate.alpha is None   # alpha only for mi
    assert c1.loss.intermediate.mapping == "emd" and c1.loss.prediction.type == "soft_ce"
    assert c1.mixup.enabled and c1.augmentation.repeated_aug == 4
    assert [(a.name, a.p) for a in c1.augmentation.augmenters] == [("random", 0.5), ("contextual", 0.5)]

    c2 = parse_config(map_row(rows[2])[0])
    assert c2.loss.intermediate.objective == "hidden_ce" and c2.loss.intermediate.mapping == "last"
    assert [a.name for a in c2.augmentation.augmenters] == ["backtranslation", "contextual", "random"]

    # our mnli copy is a 9,000-row subset of the runs' 393,000 rows; mrpc and sst2 are the whole sets
    ours = {"mnli": 9000, "mrpc": 3668, "sst2": 67349}
    feats = {t: {"fingerprint": f"fp-{t}", "meta_features": {"teacher_score": 0.0, "has_teacher_score": 0.0,
                                                             "log_n_train": math.log1p(n)}}
             for t, n in ours.items()}
    paper = read_paper_task_features(PAPER_FEATURES_CSV)
    recs = to_records(rows, read_teacher_scores(TEACHERS_CSV), feats, paper)
    assert [r.dataset for r in recs] == ["mnli", "mrpc", "sst2"]
    # the paper's own task features travel as dataset-level extras (the paper's "sst-2" is our sst2; boolq has no runs)
    assert sorted(paper) == ["mnli", "mrpc", "sst2"]
    assert {k: v for k, v in recs[2].extra_features.items() if k.startswith(("distiller_task_f", "distiller_n_l"))} \
        == {"distiller_task_f00": -1.0, "distiller_task_f01": 2.0, "distiller_n_labels": 2.0}
    with pytest.raises(DistillerImportError, match="sst-2"):
        to_records(rows, read_teacher_scores(TEACHERS_CSV), feats, {k: v for k, v in paper.items() if k != "sst2"})
    with pytest.raises(DistillerImportError, match="'#label': not a number"):
        read_paper_task_features(PAPER_FEATURES_CSV.replace("67000,2", "67000,NA"))
    assert recs[1].target["ratio"] == 0.93 and recs[1].teacher_score == pytest.approx(0.913)
    assert recs[1].meta_features["teacher_score"] == pytest.approx(0.913)
    assert recs[1].extra_features["teacher"] == "Roberta-large"
    assert len({r.key for r in recs}) == 3
    # log_n_train describes the rows the runs trained on: the paper's #example for a subset copy only
    sizes = paper_train_sizes(rows)
    assert sizes == {"mnli": 393000.0, "mrpc": 3700.0, "sst2": 67000.0}
    runs_feats = {t: {**f["meta_features"], **runs_train_size(t, sizes[t])}["log_n_train"] for t, f in feats.items()}
    assert runs_feats == {"mnli": round(math.log1p(393000), 6), "mrpc": math.log1p(3668), "sst2": math.log1p(67349)}
    assert runs_train_size("mnli", float("nan")) == {}
    with pytest.raises(DistillerImportError, match="several #example"):
        paper_train_sizes([*rows, {**rows[0], "#example": "392702"}])
    assert recs[1].ratio == 0.93 and recs[1].candidate_name.startswith("cfg-") and "+" in recs[1].candidate_name
    assert set(recs[0].to_dict()) == {"schema_version", "key", "source", "row_index", "dataset", "dataset_fingerprint",
                                      "meta_features", "config", "config_hash", "extra_features", "target", "metrics",
                                      "teacher_score", "wall_seconds", "student_parameters", "seed", "status",
                                      "versions", "provenance"}     # the import's written form, as committed


def test_build_workers_run_as_processes(tmp_path, capfd):
    from autodistill.cli import main

    for d in ("d1", "d2", "d3"):
        (tmp_path / d).mkdir()
    argv = ["meta", "build", "--datasets-root", str(tmp_path), "--datasets", "d1,d2,d3", "--out", str(tmp_path / "runs"),
            "--limit", "0", "--no-backbone"]
    assert main(argv + ["--workers", "2"]) == 0
    assert capfd.readouterr().out.count("ran 0 runs") == 2        # one summary per worker process
    assert main(argv + ["--workers", "2", "--datasets", "d1,missing"]) == 2   # a worker's error is the result
    assert "datasets not found" in capfd.readouterr().err


def test_build_contexts_at_train_sizes_and_students_carry_their_dataset(tmp_path, monkeypatch):
    """`--sizes` / `--student`: one context per (dataset, size, student), each with its own records,
    features and preset; records name the dataset (held out together), the rows and the git commit."""
    from types import SimpleNamespace

    from autodistill import distill
    from autodistill.meta import build as B
    from autodistill.meta.table import records_to_table
    from autodistill.records import RecordStore

    root = tmp_path / "datasets"
    (root / "d1").mkdir(parents=True)
    seen = []

    def fake_ctx(name, path, preset, features_dir, model, log):
        seen.append((name, preset["data"]["max_train_examples"], preset["student"]["kind"]))
        return B.DatasetContext(name, path, None, f"fp-{name}", "classification", {"log_n_train": 1.0}, 0.9, None)

    def fake_distill(cfg):   # the engine is not under test: what the build records about the run is
        return SimpleNamespace(metrics={"teacher_score": 0.9, "student_score": 0.8, "metric": "accuracy",
                                        "dataset_fingerprint": "fp", "train_examples": cfg.data.max_train_examples,
                                        "history": [{"step": 4, "accuracy": 0.8}], "steps": 4})

    monkeypatch.setattr(B, "_teacher_and_features", fake_ctx)
    monkeypatch.setattr(distill, "run_distillation", fake_distill)
    B.build(root, datasets=["d1"], portfolio="vanilla_kd", out=tmp_path / "runs", backbone=None,
            log=lambda *_: None, train_sizes=(50, 400), student="fresh4x128")
    assert seen == [("d1@n50@fresh4x128", 50, "fresh"), ("d1@n400@fresh4x128", 400, "fresh")]
    recs = [r for f in ("d1@n50@fresh4x128", "d1@n400@fresh4x128") for r in RecordStore(tmp_path / "runs" / f"{f}.jsonl").read()]
    assert [(r.dataset_group, r.train_size) for r in recs] == [("d1", 50), ("d1", 400)]
    assert all(r.provenance["git"]["commit"] for r in recs) and recs[0].metrics["history"]
    assert recs[1].config["student"]["hidden_size"] == 128
    assert [r.group for r in recs] == ["d1", "d1"] and recs[0].dataset_name == "d1@n50@fresh4x128"
    table = records_to_table(recs)
    assert sorted(table["dataset"]) == ["d1@n400@fresh4x128", "d1@n50@fresh4x128"] and set(table["group"]) == {"d1"}
    st = B.status(tmp_path / "runs", datasets=["d1"], portfolio="vanilla_kd", train_sizes=(400,), student="fresh4x128")
    assert st.done == {"vanilla_kd": ["d1@n400@fresh4x128"]} and st.n_missing == 0
    st = B.status(tmp_path / "runs", datasets=["d1"], portfolio="vanilla_kd", train_sizes=(50, 400),
                  student="fresh4x128", seeds=(42, 43))
    assert st.done == {"vanilla_kd": ["d1@n50@fresh4x128#42", "d1@n400@fresh4x128#42"]}
    assert st.missing == {"vanilla_kd": ["d1@n50@fresh4x128#43", "d1@n400@fresh4x128#43"]}


def test_build_is_context_major_every_seed_of_a_context_before_the_next(tmp_path, monkeypatch):
    """A session that ends mid-build leaves whole contexts: the next fresh machine re-fine-tunes the
    teacher of one context only."""
    from autodistill.meta import build as B

    root = tmp_path / "datasets"
    for d in ("d1", "d2"):
        (root / d).mkdir(parents=True)
    calls, teachers = _fake_contexts_and_runs(monkeypatch, B)
    kw = dict(datasets=["d1", "d2"], portfolio="no_kd,vanilla_kd", out=tmp_path / "runs", backbone=None,
              log=lambda *_: None, train_sizes=(50, 400), student="fresh4x128", seeds=(42, 43))
    assert B.build(root, limit=5, **kw).ran == 5
    assert calls == [("d1@n50@fresh4x128", s, c) for s in (42, 43) for c in ("no_kd", "vanilla_kd")] + \
        [("d1@n400@fresh4x128", 42, "no_kd")]
    assert teachers == ["d1@n50@fresh4x128", "d1@n400@fresh4x128"]
    assert B.build(root, **kw).ran == 11   # resumed: the rest of d1@n400 (its teacher again), then d2's two
    assert teachers[2:] == ["d1@n400@fresh4x128", "d2@n50@fresh4x128", "d2@n400@fresh4x128"]
    assert [c[0] for c in calls[5:]] == ["d1@n400@fresh4x128"] * 3 + ["d2@n50@fresh4x128"] * 4 + \
        ["d2@n400@fresh4x128"] * 4


def test_the_v2_preset_is_the_pilots_rule_with_patience_from_learning():
    """A v2 context (a student preset) trains under CONVERGED_RULE with the student's learning rate:
    the pilot's first rule (passed as an override) plus patience counted once the student beats the
    constant prediction; without a student, the OLD PRESET of the v1 records is unchanged."""
    from autodistill.meta import build as B
    from autodistill.meta.portfolio import META_PRESET

    pilot = json.loads((Path(__file__).parents[1] / "meta_dataset/v2_pilot/rule_fresh4x128.json").read_text())
    from autodistill.config import deep_merge
    from autodistill.meta.portfolio import STUDENT_PRESETS
    first_pilot = {**deep_merge(deep_merge(META_PRESET, pilot), {"data": {"max_train_examples": 1000}}),
                   "student": STUDENT_PRESETS["fresh4x128"]}          # how the pilot's commit made its preset
    assert B.preset_hash(first_pilot) == "548c81482707c05f"          # the hash in the first pilot records
    assert B.preset_hash(B.build_preset(None, 1000, "fresh4x128")) != "548c81482707c05f"   # not done under the new rule
    start = {"early_stopping_start": "above_trivial"}
    pilot_now = {"teachers": [{**pilot["teachers"][0], **start}], "optim": {**pilot["optim"], **start}}
    assert B.build_preset(None, 1000, "fresh4x128") == B.build_preset(pilot_now, 1000, "fresh4x128")
    preset = B.build_preset(None, 500, "fresh4x128")
    assert preset["optim"]["early_stopping_patience"] == 3 and preset["optim"]["max_steps"] == 3000
    assert preset["teachers"][0]["early_stopping_patience"] == 2 and preset["data"]["max_train_examples"] == 500
    assert B.build_preset(None, 500, "cut2")["optim"]["learning_rate"] == 1e-4
    assert B.build_preset() == META_PRESET


def test_a_contexts_size_and_student_come_from_their_options_not_the_override(tmp_path, capsys):
    from autodistill import cli
    from autodistill.meta import build as B

    with pytest.raises(ValueError, match="not in the preset override"):
        B.build_preset({"data": {"max_train_examples": 200}}, 500, "fresh4x128")
    with pytest.raises(ValueError, match="not in the preset override"):
        B.build_preset({"student": {"kind": "fresh"}}, 500, "fresh4x128")
    assert B.build_preset({"data": {"max_train_examples": 200}})["data"]["max_train_examples"] == 200   # v1: fine
    (tmp_path / "cr").mkdir()
    out = ["--out", str(tmp_path / "runs"), "--datasets-root", str(tmp_path), "--datasets", "cr"]
    assert cli.main(["meta", "build", "--old-preset", "--sizes", "500", *out]) == 2
    assert "--old-preset has no --sizes" in capsys.readouterr().err
    assert cli.main(["meta", "build", "--preset-override", '{"data": {"max_train_examples": 200}}', *out]) == 2
    assert "not in the preset override" in capsys.readouterr().err


def test_the_status_eta_prices_each_size_and_the_missing_teachers():
    from autodistill.meta.build import _missing_seconds

    walls = {("a", 500): [10.0, 10.0], ("b", 500): [30.0], ("a", 2000): [40.0]}
    teachers = {500: [100.0], 2000: [300.0]}
    # a at 2000: its own mean there (40); b at 2000: its 500-row mean x how much slower 2000 rows are for
    # the candidates run at both sizes (a: 40 / 10); c, never run: the 2000-row mean of all runs (40)
    assert _missing_seconds(walls, [("a", 2000)], teachers, []) == 40.0
    assert _missing_seconds(walls, [("b", 2000)], teachers, []) == pytest.approx(30.0 * 4.0)
    assert _missing_seconds(walls, [("c", 2000)], teachers, []) == pytest.approx(40.0)
    # no candidate at both sizes: the ratio of the sizes' means over all candidates (40 / 20)
    assert _missing_seconds({("a", 500): [10.0], ("b", 500): [30.0], ("c", 2000): [40.0]},
                            [("b", 2000)], {}, []) == pytest.approx(30.0 * 2.0)
    # a size nothing ran at yet: priced like the sizes that have runs
    assert _missing_seconds(walls, [("b", 8000)], {}, []) == pytest.approx(30.0)
    # two contexts still without a teacher, one per size
    assert _missing_seconds(walls, [], teachers, [500, 2000]) == 400.0
    assert _missing_seconds({}, [("a", 500)], {}, [500]) == 0.0   # nothing recorded: nothing to price from


def test_build_and_status_default_to_the_candidates_the_pilot_kept(tmp_path, capsys):
    from autodistill import cli
    from autodistill.meta.build import V2_PORTFOLIO
    from autodistill.meta.portfolio import PORTFOLIO

    # the build's script (run from a worktree at the build's fixed commit) names the same candidates
    script = (Path(__file__).parents[1] / "meta_dataset" / "v2" / "run_build.sh").read_text(encoding="utf-8")
    line = next(x for x in script.splitlines() if x.startswith("PORTFOLIO="))
    assert tuple(line.removeprefix("PORTFOLIO=").split(",")) == V2_PORTFOLIO
    assert set(V2_PORTFOLIO) < set(PORTFOLIO)
    (tmp_path / "cr").mkdir()
    common = ["--out", str(tmp_path / "runs"), "--datasets", "cr", "--json"]
    assert cli.main(["meta", "status", *common]) == 0
    assert set(json.loads(capsys.readouterr().out)["candidates"]) == set(V2_PORTFOLIO)
    assert cli.main(["meta", "status", "--old-preset", *common]) == 0
    assert set(json.loads(capsys.readouterr().out)["candidates"]) == set(PORTFOLIO)
    # `meta build --workers 2` hands its worker processes the same default
    from autodistill.cli.meta import _worker_argv

    def handed(*argv):
        tail = _worker_argv(cli.build_parser().parse_args(["meta", "build", "--workers", "2", *argv]))
        return tail[tail.index("--portfolio") + 1]
    assert handed() == ",".join(V2_PORTFOLIO)
    assert handed("--old-preset") == "all" and handed("--portfolio", "no_kd") == "no_kd"


def test_the_committed_distiller_table_sees_the_runs_train_sizes():
    """What the evaluation and `meta fit` read (the records with their features files): mnli, qqp and qnli
    at the paper's #example, the whole-set copies at their own row counts."""
    from autodistill.meta.fitting import meta_model_table
    from autodistill.meta.table import find_feature_files

    records = Path(__file__).parents[1] / "meta_dataset" / "distiller" / "records.jsonl"
    sizes = meta_model_table([records]).groupby("dataset")["mf_log_n_train"].first().round(4).to_dict()
    assert sizes["mnli"] == round(math.log1p(393000), 4) and sizes["qqp"] == round(math.log1p(364000), 4)
    assert sizes["qnli"] == round(math.log1p(105000), 4) and sizes["cola"] == round(math.log1p(8551), 4)
    files = find_feature_files([records])
    assert files["mnli"]["log_n_train"] == pytest.approx(math.log1p(393000), abs=1e-6)

