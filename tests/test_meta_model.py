"""The meta-model: table, estimators (scikit-learn checks), LODO guard, metrics, recommender, CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from autodistill.config import PipelineConfig
from autodistill.meta import evaluate as ev
from autodistill.meta.columns import pipeline_feature_columns
from autodistill.meta.model import PairwiseRanker, PipelineScoreRegressor
from autodistill.meta.model_files import SIDECAR_FILE, ModelVersionError
from autodistill.meta.recommender import Recommender
from autodistill.meta.table import records_to_table, table_from_paths
from autodistill.records import RecordStore, RunRecord


# --------------------------------------------------------------------------- scikit-learn checks
# Nothing is skipped or expected to fail: small settings keep the ~50 checks per estimator fast.
@parametrize_with_checks([
    PipelineScoreRegressor(method="hgb", n_estimators=30, n_bags=2),
    PipelineScoreRegressor(method="rf", n_estimators=10),
    PipelineScoreRegressor(method="pairwise", n_estimators=10, n_bags=1, pairwise_base="linear"),
    PairwiseRanker(base="gbm", n_estimators=10, n_reference=8, random_state=0),
], expected_failed_checks=lambda est: {})
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_the_pairwise_ranker_trains_the_rounds_its_label_says():
    """An evaluation's choice label ("pairwise(n_estimators=50)") is what was fitted, not half of it."""
    rng = np.random.RandomState(0)
    X, y, groups = rng.rand(40, 3), rng.rand(40), np.repeat(np.arange(4), 10)
    model = PipelineScoreRegressor(method="pairwise", n_estimators=12, n_bags=1).fit(X, y, groups=groups)
    assert [m.n_estimators for m in model.estimators_] == [12]
    assert ev.default_model_params("pairwise")["n_estimators"] == 50


# --------------------------------------------------------------------------- synthetic meta-dataset
CANDIDATES = {
    "vanilla_kd": {},
    "mse": {"loss": {"intermediate": {"objective": "mse"}}},
    "mi_alpha": {"loss": {"intermediate": {"objective": "mi_alpha", "alpha": 0.9}}},
    "mixup": {"mixup": {"enabled": True}},
    "aug": {"augmentation": {"augmenters": [{"name": "random", "p": 0.3}, {"name": "mask", "p": 0.1}]}},
    "t4": {"loss": {"prediction": {"temperature": 4.0}}},
    "rwkd": {"weighting": {"strategy": "rw_kd"}},
    "dyn": {"dynamic": {"selection": "entropy", "selection_ratio": 0.5}},
}


def _records(n_datasets: int = 6, seed: int = 0) -> list[RunRecord]:
    """Pair datasets favour MI-alpha, single-sentence ones mixup (plus noise)."""
    rng = np.random.RandomState(seed)
    recs = []
    for d in range(n_datasets):
        pair = float(d % 2)
        mf = {"log_n_train": 6 + d * 0.5, "is_pair": pair, "num_labels": 2 + d % 3}
        for name, cfg in CANDIDATES.items():
            eff = {"mi_alpha": 0.06 * pair, "mixup": 0.06 * (1 - pair)}.get(name, 0.0) + rng.normal(0, 0.004)
            recs.append(RunRecord.create(
                dataset_fingerprint=f"fp{d}", meta_features=mf, config=PipelineConfig.model_validate(cfg),
                metrics={"student_score": 0.8 + eff}, teacher_score=0.9, wall_seconds=1.0,
                student_parameters=10, status="completed", search={"dataset": f"ds{d}", "candidate": name}))
    return recs


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return records_to_table(_records())


def test_table_rows_features_and_targets(table, tmp_path):
    assert len(table) == 6 * len(CANDIDATES)
    assert set(table["dataset"]) == {f"ds{d}" for d in range(6)}
    assert {"mf_log_n_train", "mf_is_pair", "mf_num_labels"} <= set(table.columns)
    assert [c for c in table.columns if c.startswith("pf_")] == pipeline_feature_columns()
    row = table[(table["dataset"] == "ds1") & (table["candidate"] == "aug")].iloc[0]
    assert row["pf_augmentation.augmenters.random.position"] == 1.0
    assert row["pf_augmentation.augmenters.mask.position"] == 2.0
    assert row["pf_augmentation.augmenters.mask.p"] == pytest.approx(0.1)
    assert row["pf_loss.intermediate.objective=none"] == 1.0
    assert row["target"] == pytest.approx(row["score"] / 0.9)
    # every Literal option of the config appears as a one-hot column
    assert "pf_loss.intermediate.objective=rail_c" in table.columns
    assert "pf_dynamic.selection=least_confidence" in table.columns
    best = records_to_table(_records(), target="best")
    assert best.groupby("dataset")["target"].max().tolist() == pytest.approx([1.0] * 6)
    # from files: dataset name from the file stem, features file wins over the records' own
    runs, feats = tmp_path / "runs", tmp_path / "features"
    feats.mkdir()
    for r in _records(2):
        r = r.replace(search={})
        RecordStore(runs / f"{'alpha' if r.dataset_fingerprint == 'fp0' else 'beta'}.jsonl").append(r)
    (feats / "alpha.json").write_text(json.dumps({"version": 1, "features": {"log_n_train": 42.0}}))
    t = table_from_paths(runs)
    assert set(t["dataset"]) == {"alpha", "beta"}
    assert t.loc[t["dataset"] == "alpha", "mf_log_n_train"].unique().tolist() == [42.0]
    assert "mf_version" not in t.columns
    # a second source with a dataset of the same name: kept apart, each with its own features
    other = tmp_path / "other"
    (other / "features").mkdir(parents=True)
    for r in _records(2):
        if r.dataset_fingerprint == "fp0":
            RecordStore(other / "records.jsonl").append(r.replace(search={}, dataset="alpha"))
    (other / "features" / "alpha.json").write_text(json.dumps({"features": {"log_n_train": 7.0}}))
    both = table_from_paths([runs, other / "records.jsonl"], target="best")
    assert set(both["dataset"]) == {"alpha@runs", "alpha@other", "beta"}
    assert both.groupby("dataset")["mf_log_n_train"].first()[["alpha@runs", "alpha@other"]].tolist() == [42.0, 7.0]
    assert both.groupby("dataset")["target"].max().tolist() == pytest.approx([1.0] * 3)
    assert list(both.columns) == list(t.columns) and len(both) == len(t) + len(CANDIDATES)
    # two sources of the same folder name (the service's runs beside ours) are told apart too
    service_runs = tmp_path / "service" / "runs"
    service_runs.mkdir(parents=True)
    (service_runs / "alpha.jsonl").write_text((runs / "alpha.jsonl").read_text())
    assert set(table_from_paths([runs, service_runs])["dataset"]) == {
        f"alpha@{tmp_path.name}/runs", "alpha@service/runs", "beta"}
    # one source holds a dataset at two sizes, another at one of them: the first source's sizes stay one group
    sized_a, sized_b = tmp_path / "sized_a", tmp_path / "sized_b"
    for folder, sizes in ((sized_a, (500, 2000)), (sized_b, (500,))):
        for n in sizes:
            for r in _records(1):
                RecordStore(folder / "records.jsonl").append(r.replace(
                    search={}, dataset=f"gamma@n{n}", dataset_group="gamma", dataset_fingerprint=f"fp{n}", key=None))
    groups = table_from_paths([sized_a, sized_b]).groupby("dataset")["group"].first().to_dict()
    assert groups == {"gamma@n500@sized_a": "gamma@sized_a", "gamma@n2000": "gamma@sized_a",
                      "gamma@n500@sized_b": "gamma@sized_b"}


# --------------------------------------------------------------------------- metrics
def test_ranking_metrics_golden():
    y = [0.5, 0.9, 0.7, 0.6, 0.8, 0.4]
    perfect = ev.ranking_metrics(y, y)
    assert perfect == {"regret1": 0.0, "nregret1": 0.0, "regret5": 0.0, "rank1": 1.0, "hit5": 1.0,
                       "spearman": pytest.approx(1.0), "regret2": 0.0, "regret3": 0.0, "regret4": 0.0}
    worst_first = ev.ranking_metrics(y, [-v for v in y], k=2)
    assert worst_first["regret1"] == pytest.approx(0.5)
    assert worst_first["nregret1"] == pytest.approx(1.0)
    assert worst_first["regret2"] == pytest.approx(0.4)   # top-2 = {0.4, 0.5}
    assert worst_first["regret5"] == pytest.approx(0.1)   # top-5 = all but the best
    assert worst_first["rank1"] == 6.0
    assert worst_first["hit2"] == 0.0
    assert worst_first["spearman"] == pytest.approx(-1.0)
    m = ev.ranking_metrics(y, [0, 0, 1, 0, 0, 0], k=5)  # picks 0.7; then 4 of the 5 tied others at random
    assert (m["regret1"], m["rank1"], m["hit5"]) == (pytest.approx(0.2), 3.0, pytest.approx(0.8))
    r = ev.random_metrics([0.0, 1.0, 2.0, 3.0], k=2)
    assert r["regret1"] == pytest.approx(1.5)
    assert r["regret2"] == pytest.approx(3 - 14 / 6)     # E[max of a random pair]
    assert r["hit2"] == pytest.approx(0.5)
    assert r["rank1"] == pytest.approx(2.5)


def _oracle(train, test, choice, seed):
    return test["pf_oracle"].to_numpy()


def test_nested_lodo_oracle_and_baselines_golden(table, tmp_path):
    t = table.copy()
    t["pf_oracle"] = t["target"]     # an input that is the truth: the oracle ranks perfectly
    res = ev.nested_lodo_evaluate(t, [ev.ModelChoice("oracle")], fit_predict=_oracle, n_boot=200)
    s = res.summary
    assert s.loc[ev.META_MODEL, "regret1"] == 0.0 and s.loc[ev.META_MODEL, "hit5"] == 1.0
    assert s.loc[ev.META_MODEL, "rank1"] == 1.0
    # vanilla KD picks the candidate so named
    per = res.per_dataset.set_index(["dataset", "method"])
    ds0 = t[t["dataset"] == "ds0"].set_index("candidate")["target"]
    assert per.loc[("ds0", "vanilla_kd"), "regret1"] == pytest.approx(ds0.max() - ds0["vanilla_kd"])
    # nearest dataset: the nearest dataset of a pair dataset is a pair dataset, whose best is MI-alpha
    assert per.loc[("ds3", "nearest_dataset"), "regret1"] < 0.02
    report = ev.write_nested_report(res, tmp_path)
    assert "Top-1 regret per held-out dataset" in report.read_text()


def test_lodo_planted_leak_is_not_exploited(table):
    held = "ds2"
    only_datasets = [held, "ds0", "ds1", "ds3"]
    rf = ev.ModelChoice("rf", (("n_estimators", 30),))
    guarded_spearman, leaky_spearman = [], []
    # several random targets: on 8 candidates one chance Spearman can be high (it moved to 0.81 on one
    # seed when the config gained an option's columns); its mean over draws is what "no leak" predicts
    for seed in range(1, 6):
        rng = np.random.RandomState(seed)
        t = table.copy()
        t["target"] = rng.uniform(0.5, 1.0, len(t))       # nothing learnable...
        t["pf_leak"] = rng.uniform(0.5, 1.0, len(t))
        is_held = t["dataset"] == held
        t.loc[is_held, "pf_leak"] = t.loc[is_held, "target"]  # ...except a leak on the held-out dataset
        aliased = t.copy()                                  # the same data under another name is dropped too
        aliased["fingerprint"] = aliased["fingerprint"].where(aliased["dataset"] != "ds3", "fp2")
        assert not {held, "ds3"} & set(ev.training_table(aliased, held)["dataset"])
        train = ev.training_table(t, held)
        assert held not in set(train["dataset"]) and "target" not in ev.test_features(t, held)

        def guarded(tr, te, choice, seed):
            assert not set(tr["dataset"]) & set(te["dataset"])
            return ev.guarded_fit_predict(tr, te, "rf", model_params={"n_estimators": 30})

        def leaky(tr, te, choice, seed, t=t):  # deliberately wrong: trains on every dataset, the held-out one too
            return ev.guarded_fit_predict(t, te, "rf", model_params={"n_estimators": 30})

        only = t[t["dataset"].isin(only_datasets)]
        ok = ev.nested_lodo_evaluate(only, [rf], fit_predict=guarded, n_boot=10).per_dataset
        bad = ev.nested_lodo_evaluate(only, [rf], fit_predict=leaky, n_boot=10).per_dataset
        ok_h = ok[ok["method"] == ev.META_MODEL].set_index("dataset").loc[held]
        bad_h = bad[bad["method"] == ev.META_MODEL].set_index("dataset").loc[held]
        guarded_spearman.append(ok_h["spearman"])
        leaky_spearman.append(bad_h["spearman"])
    assert np.mean(leaky_spearman) > 0.9                               # the leak is exploitable...
    assert np.mean(guarded_spearman) < 0.5                             # ...and the guarded code does not use it


# --------------------------------------------------------------------------- recommender
@pytest.fixture(scope="module")
def recommender(table) -> Recommender:
    return Recommender.fit(ev.drop_meta_features(table), method="rf", model_params={"n_estimators": 50})


def test_a_single_model_claims_no_spread_and_an_ensemble_shows_its_own(table):
    from autodistill.meta.recommender import prediction_text
    query = {"log_n_train": 7.0, "is_pair": True, "num_labels": 2}
    rows = ev.drop_meta_features(table)
    single = Recommender.fit(rows, method="hgb", model_params={"n_bags": 1, "n_estimators": 30}).recommend(query, 3)
    assert all(r.uncertainty is None for r in single)                     # not 0: nobody measured a spread
    assert prediction_text(single[0].predicted_score, single[0].uncertainty) == f"{single[0].predicted_score:.4f}"
    bagged = Recommender.fit(rows, method="hgb", model_params={"n_bags": 4, "n_estimators": 30}).recommend(query, 3)
    assert all(r.uncertainty is not None and math.isfinite(r.uncertainty) for r in bagged)
    assert any(r.uncertainty > 0 for r in bagged)
    assert prediction_text(0.5, 0.01, 3) == "0.500 ± 0.010"


def test_meta_features_outside_the_training_range_are_named(recommender):
    from autodistill.meta.recommender import extrapolation_text
    seen = next(iter(recommender.datasets.values()))          # a training dataset: inside by definition
    query = {k.removeprefix("mf_"): v for k, v in seen.items()}
    assert recommender.meta_features_outside_training(query) == {}
    assert "meta_features_outside_training" not in recommender.recommend(query, top_k=1)[0].why
    lo, hi = min(d["mf_log_n_train"] for d in recommender.datasets.values()), \
        max(d["mf_log_n_train"] for d in recommender.datasets.values())
    outside = recommender.meta_features_outside_training({**query, "log_n_train": hi + 2.0})
    assert outside == {"log_n_train": {"value": hi + 2.0, "seen": [lo, hi]}}
    assert recommender.recommend({**query, "log_n_train": hi + 2.0}, top_k=1)[0].why["meta_features_outside_training"] \
        == outside
    assert extrapolation_text(outside).startswith("1 of this dataset's meta-features lies outside")
    assert recommender.meta_features_outside_training({**query, "log_n_train": float("nan")}) == {}   # unknown: not out
    assert list(recommender.meta_features_outside_training({**query, "log_n_train": lo - 1.0})) == ["log_n_train"]
    just_outside = {**query, "log_n_train": hi + 0.05 * (hi - lo)}   # within the 10 % margin: read as the bound
    assert recommender.meta_features_outside_training(just_outside) == {}
    assert recommender.meta_features_outside_training(just_outside, margin=0.0)
    # the range of some training datasets only (the service: those the asking key may see)
    first = next(iter(recommender.datasets))
    narrow = recommender.meta_features_outside_training({**query, "log_n_train": hi}, datasets=[first])
    assert narrow["log_n_train"]["seen"] == [recommender.datasets[first]["mf_log_n_train"]] * 2


def test_a_meta_feature_constant_in_training_is_never_called_extrapolation():
    records = _records()
    for r in records:
        r.meta_features["has_backbone"] = 1.0          # every training dataset had embeddings
    rec = Recommender.fit(ev.drop_meta_features(records_to_table(records)), method="rf",
                          model_params={"n_estimators": 20})
    query = {"log_n_train": 7.0, "is_pair": 1.0, "num_labels": 2, "has_backbone": 0.0}
    assert "mf_has_backbone" in rec.mf_columns
    assert rec.meta_features_outside_training(query) == {}       # the model cannot split on it: no effect
    assert list(rec.meta_features_outside_training({**query, "log_n_train": 20.0})) == ["log_n_train"]


def test_recommend_top_k_sorted_valid_configs(recommender):
    recs = recommender.recommend({"log_n_train": 7.0, "is_pair": True, "num_labels": 2}, top_k=5)
    assert len(recs) == 5 and [r.rank for r in recs] == [1, 2, 3, 4, 5]
    scores = [r.predicted_score for r in recs]
    assert scores == sorted(scores, reverse=True)
    assert recs[0].candidate == "mi_alpha"              # pair datasets favour MI-alpha
    for r in recs:
        PipelineConfig.model_validate(r.config)
        assert r.uncertainty >= 0 and math.isfinite(r.predicted_score)
    why = recs[0].why
    assert why["nearest_datasets"][0]["dataset"] in {"ds1", "ds3"}
    assert why["nearest_datasets"][0]["distance"] <= why["nearest_datasets"][1]["distance"]
    assert why["top_features"] and why["top_features"][0]["importance"] > 0
    single = recommender.recommend({"log_n_train": 7.0, "is_pair": False, "num_labels": 2}, top_k=1)
    assert single[0].candidate == "mixup"
    only = recommender.recommend({"is_pair": 1.0}, top_k=3, constraints={"mixup.enabled": True})
    assert [r.candidate for r in only] == ["mixup"]
    assert recommender.recommend({"is_pair": 1.0}, constraints=lambda c: False) == []


def test_a_regression_dataset_gets_only_pipelines_that_run_on_regression(recommender):
    """RW-KD weighting and dynamic selection need class probabilities: never recommended for regression;
    the others come as they run there (a KL prediction loss becomes MSE)."""
    names = {r.candidate for r in recommender.recommend({"is_pair": 1.0}, top_k=len(CANDIDATES))}
    assert {"rwkd", "dyn"} <= names
    recs = recommender.recommend({"is_pair": 1.0, "mf_is_regression": 1.0}, top_k=len(CANDIDATES))
    assert {r.candidate for r in recs} == names - {"rwkd", "dyn"}
    assert [r.rank for r in recs] == list(range(1, len(recs) + 1))
    assert all(PipelineConfig.model_validate(r.config).loss.prediction.type == "mse" for r in recs)
    # constraints are checked on the pipeline as it runs there, the one returned
    regression = {"is_pair": 1.0, "mf_is_regression": 1.0}
    assert len(recommender.recommend(regression, top_k=50, constraints={"loss.prediction.type": "mse"})) == len(recs)
    assert recommender.recommend(regression, top_k=50, constraints={"loss.prediction.type": "kl"}) == []


def test_save_load_and_version_refusal(recommender, tmp_path):
    folder = recommender.save(tmp_path / "m")
    assert not list(folder.glob("*.pkl"))
    loaded = Recommender.load(folder)
    q = {"log_n_train": 8.0, "is_pair": 0.0, "num_labels": 3}
    assert [r.candidate for r in loaded.recommend(q)] == [r.candidate for r in recommender.recommend(q)]
    side = json.loads((folder / SIDECAR_FILE).read_text())
    side["versions"]["scikit-learn"] = "0.0.1"
    (folder / SIDECAR_FILE).write_text(json.dumps(side))
    with pytest.raises(ModelVersionError, match=r"scikit-learn 0\.0\.1.*scikit-learn \d"):
        Recommender.load(folder)
    side["format_version"] = 999
    (folder / SIDECAR_FILE).write_text(json.dumps(side))
    with pytest.raises(ModelVersionError, match="format version 999.*format version 1"):
        Recommender.load(folder)


# --------------------------------------------------------------------------- CLI
def test_cli_evaluate_fit_recommend(tmp_path, monkeypatch, capsys):
    from autodistill import cli
    from autodistill.meta import features

    runs = tmp_path / "runs"
    for r in _records(4):
        RecordStore(runs / f"{r.search['dataset']}.jsonl").append(r)
    assert cli.main(["meta", "evaluate", "--records", str(runs), "--out", str(tmp_path / "rep"),
                     "--methods", "rf", "--meta-model", "auto"]) == 0
    assert (tmp_path / "rep" / "report.md").is_file() and (tmp_path / "rep" / "decision.json").is_file()
    assert cli.main(["meta", "fit", "--records", str(runs), "--out", str(tmp_path / "model"),
                     "--method", "rf"]) == 0
    assert cli.main(["meta", "decide", "--evaluation", str(tmp_path / "rep"), "--model", str(tmp_path / "model")]) == 0
    stored = json.loads((tmp_path / "model" / "warm_start.json").read_text())
    evaluated = json.loads((tmp_path / "rep" / "decision.json").read_text())
    assert {k: stored[k] for k in ("source", "portfolio", "k")} == {k: evaluated[k] for k in ("source", "portfolio", "k")}
    # the stub replaces the real meta-features only here, in the test
    monkeypatch.setattr(features, "compute_meta_features",
                        lambda task, tok, backbone=None, **kw: {"log_n_train": 7.0, "is_pair": 1.0, "num_labels": 2})
    capsys.readouterr()
    assert cli.main(["recommend", "--model", str(tmp_path / "model"), "--top-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["meta_model_ranking"][0]["candidate"] == "mi_alpha"        # the model's own ranking ...
    # ... but what it recommends follows the stored decision: here the portfolio, first member first
    assert out["source"] == stored["source"] == "portfolio" and stored["portfolio"][0] == "mixup"
    assert [r["candidate"] for r in out["recommendations"]][:1] == ["mixup"] and len(out["recommendations"]) == 3
    assert out["top_config"]["mixup"]["enabled"]
    assert cli.main(["recommend", "--model", str(tmp_path / "nothing")]) == 2
    assert cli.main(["recommend", "--model", str(tmp_path / "model"), "--top-k", "-2"]) == 2
    assert "--top-k must be at least 1" in capsys.readouterr().err


def test_datasets_whose_teacher_is_no_better_than_majority_are_left_out(tmp_path, capsys):
    from autodistill import cli
    from autodistill.meta.table import drop_uninformative, uninformative_datasets

    baselines = {"ds0": 0.5, "ds1": 0.95, "ds2": None, "ds3": 0.9, "ds4": 0.5}  # teacher 0.9 everywhere
    runs = tmp_path / "runs"
    for r in _records(5):
        r = r.replace(metrics={**r.metrics, "majority_baseline": baselines[r.search["dataset"]]})
        RecordStore(runs / f"{r.search['dataset']}.jsonl").append(r)
    table = table_from_paths(runs)
    assert uninformative_datasets(table) == {"ds1": (0.9, 0.95), "ds3": (0.9, 0.9)}
    kept, dropped = drop_uninformative(table)
    assert sorted(kept["dataset"].unique()) == ["ds0", "ds2", "ds4"] and set(dropped) == {"ds1", "ds3"}

    assert cli.main(["meta", "evaluate", "--records", str(runs), "--out", str(tmp_path / "rep"),
                     "--methods", "rf", "--meta-model", "auto"]) == 0
    per = pd.read_csv(tmp_path / "rep" / "per_dataset.csv")
    assert set(per["dataset"]) == {"ds0", "ds2", "ds4"}   # ds1, ds3 never held out: their ratios are noise
    assert "ds1 (teacher 0.900, majority 0.950)" in (tmp_path / "rep" / "report.md").read_text()
    choices = set(pd.read_csv(tmp_path / "rep" / "selections.csv").columns)
    assert {"rf(n_estimators=300)", "rf(n_estimators=300)+uninformative"} <= choices   # a nested choice
    assert cli.main(["meta", "evaluate", "--records", str(runs), "--out", str(tmp_path / "all"),
                     "--methods", "rf", "--keep-uninformative", "--meta-model", "auto"]) == 0
    assert set(pd.read_csv(tmp_path / "all" / "selections.csv")["choice"]) == {"rf(n_estimators=300)+uninformative"}
    # the committed model's choice is selected by the same grouped CV, on all records
    assert cli.main(["meta", "fit", "--records", str(runs), "--out", str(tmp_path / "model"), "--methods", "rf",
                     "--method", "auto"]) == 0
    info = json.loads((tmp_path / "model" / SIDECAR_FILE).read_text())["info"]
    assert info["choice"] in info["inner_cv_regret1"] and len(info["inner_cv_regret1"]) == 2
    # by default the product's meta-model: one unbagged gradient-boosting model, nothing selected
    assert cli.main(["meta", "evaluate", "--records", str(runs), "--out", str(tmp_path / "plain")]) == 0
    assert "The meta-model is one fixed choice, hgb(n_bags=1,n_estimators=150)" in (tmp_path / "plain" / "report.md").read_text()
    assert pd.read_csv(tmp_path / "plain" / "selections.csv")["choice"].unique().tolist() == ["hgb(n_bags=1,n_estimators=150)"]
    assert cli.main(["meta", "fit", "--records", str(runs), "--out", str(tmp_path / "plain_model")]) == 0
    info = json.loads((tmp_path / "plain_model" / SIDECAR_FILE).read_text())["info"]
    assert info["choice"] == "hgb(n_bags=1,n_estimators=150)" and "inner_cv_regret1" not in info


def test_cli_repeats_must_be_positive(tmp_path, capsys):
    from autodistill import cli

    with pytest.raises(SystemExit):
        cli.main(["meta", "evaluate", "--records", str(tmp_path), "--out", str(tmp_path / "r"), "--repeats", "0"])
    assert "must be >= 1" in capsys.readouterr().err


def test_table_extra_features_and_stated_ratio():
    base = _records(1)[:2]
    recs = []
    for teacher in ("BERT_BASE", "ELECTRA_BASE"):
        for r in base:
            r = r.replace(search={"dataset": "rte"}, extra_features={"teacher": teacher, "aug_p": 0.3},
                          metrics={"score": 0.7, "ratio": 0.95})
            recs.append(r)
    t = records_to_table(recs)
    assert len(t) == 4 and t["candidate"].nunique() == 4            # the teacher is part of the identity
    assert t["candidate"].str.contains(r"^cfg-[0-9a-f]{12}\+[0-9a-f]{6}$").all()
    assert t["pf_extra.teacher=BERT_BASE"].sum() == 2 and t["pf_extra.aug_p"].eq(0.3).all()
    assert t["target"].eq(0.95).all()                                # the stated ratio wins


def test_a_column_set_by_few_rows_survives_bootstrap_bags_that_miss_them():
    """A rare pipeline option (set in 2 of 60 rows) is all-missing in most bootstrap samples; each bag
    reads its own empty columns as 0 (HistGradientBoosting cannot bin an all-missing column)."""
    rng = np.random.RandomState(0)
    X = rng.rand(60, 3)
    X[:, 2] = np.nan
    X[:2, 2] = 1.0
    y = X[:, 0] + rng.rand(60) * 0.01
    model = PipelineScoreRegressor(method="hgb", n_bags=8, n_estimators=20, random_state=0).fit(X, y)
    assert any(2 in empty for empty in model.bag_empty_columns_)          # the case happened
    assert not any(2 in empty for empty in [model.empty_columns_])         # not empty over the whole table
    mean, std = model.predict_with_uncertainty(X)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(std))
    assert np.corrcoef(mean, y)[0, 1] > 0.9
