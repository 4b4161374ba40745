"""The honest evaluation: ties at their expected value, the fair single best, the greedy best-of-k
portfolio, paired comparisons, the seed noise floor, nested selection and the warm-start decision.
Golden values on small hand-made tables."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from autodistill.config import PipelineConfig
from autodistill.meta import evaluate as ev
from autodistill.meta import warm_start as ws
from autodistill.meta.recommender import Recommender
from autodistill.meta.table import records_to_table
from autodistill.records import RunRecord


def _table(cells: dict[str, dict[str, float]], **extra_cols) -> pd.DataFrame:
    """{dataset: {candidate: target}} -> a minimal table."""
    rows = [{"dataset": d, "candidate": c, "target": y, "fingerprint": f"fp-{d}"}
            for d, cs in cells.items() for c, y in cs.items()]
    t = pd.DataFrame(rows)
    for k, v in extra_cols.items():
        t[k] = v
    return t


# --------------------------------------------------------------------------- ties
def test_ties_are_scored_at_their_expected_value():
    y = [0.9, 0.5, 0.7]
    m = ev.ranking_metrics(y, [1.0, 1.0, 0.0], k=2)
    assert m["regret1"] == pytest.approx(0.9 - (0.9 + 0.5) / 2)   # not 0.0 nor 0.4: the mean of the tied pair
    assert m["rank1"] == pytest.approx((1 + 3) / 2)
    assert m["regret2"] == pytest.approx(0.0)                      # both tied ones are in the top 2
    # one above, then a tie straddling position 2: E[max(0.5, a random one of {0.9, 0.7})] = 0.8
    m = ev.ranking_metrics([0.5, 0.9, 0.7], [1.0, 0.0, 0.0], k=2)
    assert m["regret1"] == pytest.approx(0.4) and m["rank1"] == 3.0
    assert m["regret2"] == pytest.approx(0.9 - 0.8) and m["regret5"] == 0.0   # all three are in a top 5
    assert m["hit2"] == pytest.approx(0.5) and "hit5" not in m
    # unscored (NaN) candidates come last, tied with each other
    m = ev.ranking_metrics([0.5, 0.9, 0.7], [np.nan, 1.0, np.nan], k=2)
    assert m["regret1"] == 0.0 and m["regret2"] == 0.0
    # the order of rows never matters (it did with a positional tie-break)
    a = ev.ranking_metrics([0.1, 0.3, 0.2, 0.4], [0, 1, 1, 1], k=2)
    b = ev.ranking_metrics([0.4, 0.2, 0.3, 0.1], [1, 1, 1, 0], k=2)
    assert a == pytest.approx(b, nan_ok=True)


def test_random_is_a_ranking_with_every_candidate_tied():
    r = ev.random_metrics([0.0, 1.0, 2.0, 3.0], k=2)
    assert r["regret1"] == pytest.approx(1.5)
    assert r["regret2"] == pytest.approx(3 - 14 / 6)                   # E[max of a random pair]
    assert r["regret3"] == pytest.approx(3 - (2 * 1 + 3 * 3) / 4)      # C(i,2)/C(4,3): maxes 2 (1/4), 3 (3/4)
    assert r["hit2"] == pytest.approx(0.5) and r["rank1"] == pytest.approx(2.5) and r["spearman"] == 0.0
    assert r["regret4"] == r["regret5"] == 0.0


def test_the_top_k_of_hit_is_named_and_a_regret_beyond_five_is_kept():
    y, s = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [6, 5, 4, 3, 2, 1, 0]   # the best ranked last
    m = ev.ranking_metrics(y, s, k=6)
    assert m["hit6"] == 0.0 and m["regret6"] == pytest.approx(1.0) and m["regret5"] == pytest.approx(2.0)
    assert ev.ranking_metrics(y, s)["hit5"] == 0.0


# --------------------------------------------------------------------------- fair single best
def test_fair_single_best_is_not_fooled_by_a_skipped_hard_dataset():
    t = _table({"d1": {"A": 0.90, "B": 0.80, "C": 0.85}, "d2": {"A": 0.90, "B": 0.80, "C": 0.85},
                "hard": {"A": 0.30, "C": 0.20}})   # B skips the hard dataset
    naive = t.groupby("candidate")["target"].mean()
    assert naive.idxmax() == "B"                    # the old baseline's flaw
    effects = ws.candidate_effects(t)
    assert effects.idxmax() == "A" and effects["B"] < effects["C"] < effects["A"]


def test_complete_block_drops_the_dataset_that_lacks_candidates():
    full = {c: 0.5 for c in "ABCDEF"}
    t = _table({"d1": full, "d2": full, "d3": full, "reg": {"A": 0.2, "B": 0.3}})   # 4 candidates skip "reg"
    assert ws.complete_block(t) == (["d1", "d2", "d3"], list("ABCDEF"))           # 18 cells > 4 x 2
    sparse = _table({"d1": {"A": 1.0, "B": 1.0}, "d2": {"B": 1.0, "C": 1.0}, "d3": {"B": 1.0, "D": 1.0}})
    assert ws.complete_block(sparse) == (["d1", "d2", "d3"], ["B"])               # never below half the datasets


def test_complete_block_drops_all_train_sizes_of_a_dataset_together():
    full, reg = {c: 0.5 for c in "ABCDEF"}, {"A": 0.2, "B": 0.3}
    contexts = {"d1@n500": full, "d1@n2000": full, "d2@n500": full, "d2@n2000": full, "d3@n500": full,
                "d3@n2000": full, "reg@n500": reg, "reg@n2000": reg}
    t = _table(contexts)
    t["group"] = t["dataset"].str.split("@").str[0]
    assert ws.complete_block(t) == (sorted(c for c in contexts if not c.startswith("reg")), list("ABCDEF"))
    # one size at a time, no single drop adds cells (7 x 2 < 8 x 2): the block would lose C-F
    assert ws.complete_block(t.drop(columns="group"))[1] == ["A", "B"]
    effects = ws.candidate_effects(t)
    assert set(effects.index) == set("ABCDEF") and effects.max() - effects.min() < 1e-12   # all in the block


def test_fair_single_best_is_the_mean_centred_target_on_a_complete_table():
    t = _table({"d1": {"A": 0.9, "B": 0.8}, "d2": {"A": 0.6, "B": 0.4}})
    effects = ws.candidate_effects(t)
    assert effects["A"] == pytest.approx((0.05 + 0.1) / 2) and effects["B"] == pytest.approx(-0.075)
    s = ev.baseline_scores(t, t[t["dataset"] == "d1"].drop(columns="target"))
    assert list(s["single_best"]) == pytest.approx([0.075, -0.075])


# --------------------------------------------------------------------------- portfolio
def test_greedy_portfolio_golden():
    t = _table({"c1": {"A": 1.0, "B": 0.0, "C": 0.5}, "c2": {"A": 0.0, "B": 1.0, "C": 0.5},
                "c3": {"A": 1.0, "B": 0.0, "C": 0.5}})
    m = ws._matrix(t)
    assert ws.portfolio_regret(m, ["A"]) == pytest.approx(1 / 3)
    assert ws.portfolio_regret(m, ["C"]) == pytest.approx(0.5)
    assert ws.portfolio_regret(m, ["A", "C"]) == pytest.approx(0.5 / 3)
    assert ws.greedy_portfolio(t, 1) == ["A"]
    assert ws.greedy_portfolio(t, 2) == ["A", "B"]     # best-of-2 regret 0; the single best's runner-up C is not
    scores = ws.portfolio_scores(["C", "B", "A", "Z"], ["A", "B"], ws.candidate_effects(t))
    assert list(np.argsort(-scores)) == [2, 1, 0, 3] and scores[3] == -np.inf


# --------------------------------------------------------------------------- paired comparison
def test_paired_comparison_golden():
    method, reference = [0.0, 0.01, 0.02, 0.0], [0.01, 0.01, 0.0, 0.03]
    c = ev.paired_comparison(method, reference, n_boot=500)
    assert (c["wins"], c["ties"], c["losses"], c["n"]) == (2, 1, 1, 4)
    # non-zero d = (0.01, -0.02, 0.03): ranks 1, 2, 3, W+ = 4; exact two-sided p = 2 * P(W+ >= 4) = 2 * 3/8
    assert c["wilcoxon_p"] == pytest.approx(0.75)
    assert c["mean_difference"] == pytest.approx(0.005)
    assert c["ci_low"] < 0.005 < c["ci_high"]
    same = ev.paired_comparison([0.01, 0.02], [0.03, 0.04])
    assert (same["ci_low"], same["ci_high"]) == (pytest.approx(0.02), pytest.approx(0.02))
    assert ev.paired_comparison([0.1], [0.1])["wilcoxon_p"] == 1.0


# --------------------------------------------------------------------------- noise floor
def test_seed_noise_floor_golden():
    recs = []
    for seed, ys in ((42, [0.9, 0.8, 0.7]), (43, [0.7, 0.8, 0.9])):
        for name, y in zip(("a", "b", "c"), ys):
            cfg = {"a": {}, "b": {"mixup": {"enabled": True}}, "c": {"loss": {"prediction": {"temperature": 4.0}}}}[name]
            r = RunRecord.create(dataset_fingerprint="fp", meta_features={}, config=PipelineConfig.model_validate(cfg),
                                 metrics={"student_score": y}, teacher_score=1.0, wall_seconds=1.0,
                                 student_parameters=1, status="completed", search={"dataset": "d", "candidate": name})
            recs.append(r.replace(seed=seed))
    floor = ev.seed_noise_floor(recs).set_index("dataset")
    row = floor.loc["d"]
    assert (row["n_seeds"], row["n_candidates"]) == (2, 3)
    assert row["cross_seed_regret1"] == pytest.approx(0.2)
    assert row["spearman"] == pytest.approx(-1.0)
    assert row["seed_std"] == pytest.approx(2 * 0.2 / np.sqrt(2) / 3)


# --------------------------------------------------------------------------- nested LODO
def _planted_table(n: int = 6) -> pd.DataFrame:
    """A feature equal to the target: the 'oracle' choice reads it, the 'anti' choice its negative.
    Dataset u's teacher is at the majority class."""
    rng = np.random.RandomState(0)
    cells = {f"d{i}": {c: float(rng.uniform(0.5, 1.0)) for c in "ABCDE"} for i in range(n)}
    cells["u"] = {c: float(rng.uniform(0.5, 1.0)) for c in "ABCDE"}
    t = _table(cells)
    t["pf_oracle"] = t["target"]
    t["teacher_score"] = np.where(t["dataset"] == "u", 0.5, 0.9)
    t["majority_baseline"] = 0.6
    return t


def test_nested_selection_sees_only_training_folds_and_picks_the_planted_choice():
    t = _planted_table()
    oracle, anti = ev.ModelChoice("oracle"), ev.ModelChoice("anti")
    seen = []

    def fit_predict(train, test, choice, seed):
        assert not set(train["dataset"]) & set(test["dataset"]) and "target" not in test
        seen.append((frozenset(train["dataset"]), frozenset(test["dataset"]), choice.drop_uninformative))
        return test["pf_oracle"].to_numpy() * (1 if choice.method == "oracle" else -1)

    res = ev.nested_lodo_evaluate(t, [anti, oracle], fit_predict=fit_predict, portfolio_k=2, n_boot=200)
    assert set(res.per_dataset["dataset"]) == {f"d{i}" for i in range(6)}      # u is never held out
    assert set(res.selections["choice"]) == {"oracle()"}
    meta = res.per_dataset[res.per_dataset["method"] == ev.META_MODEL]
    assert (meta["regret1"] == 0).all()
    assert all("u" not in tr for tr, _, drop in seen if drop)                  # the drop rule is applied
    assert res.info["n_datasets"] == 6 and len(res.portfolio) == 2
    assert {"portfolio", "single_best", "single_best_naive", "random"} <= set(res.summary.index)
    c = res.comparisons.loc[(ev.META_MODEL, "single_best", "regret1")]
    assert c["wins"] + c["ties"] + c["losses"] == 6 and c["losses"] == 0


def test_nested_report_and_decision_file(tmp_path):
    t = _planted_table(4)
    res = ev.nested_lodo_evaluate(t, [ev.ModelChoice("oracle")], portfolio_k=2, n_boot=200,
                                  fit_predict=lambda tr, te, c, s: te["pf_oracle"].to_numpy())
    report = ev.write_nested_report(res, tmp_path, note="OLD PRESET test").read_text()
    assert "OLD PRESET test" in report and "Paired per-dataset comparisons" in report
    assert "## Verdict: the meta-model against the fair single best" in report
    assert report.count("**the meta-model beats the fair single best.**") + \
        report.count("**the meta-model does not beat the fair single best**") == 1
    decision = json.loads((tmp_path / "decision.json").read_text())
    assert decision["source"] in (ws.META_MODEL, ws.PORTFOLIO) and len(decision["portfolio"]) == 2
    # averaging over seeds is vacuous for a deterministic model: the report says so, and only then
    assert "deterministic" not in report
    res = ev.nested_lodo_evaluate(t, [ev.PLAIN_HGB], portfolio_k=2, n_boot=200, seeds=(0, 1),
                                  fit_predict=lambda tr, te, c, s: te["pf_oracle"].to_numpy())
    assert "its seeds give identical figures" in ev.write_nested_report(res, tmp_path / "plain").read_text()


def test_the_verdict_says_plainly_whether_the_ci_lies_above_zero():
    import pandas as pd
    key = (ev.META_MODEL, "single_best", "regret1")

    def verdict(low, high, p=0.01):
        row = {"n": 15, "wins": 5, "ties": 4, "losses": 6, "mean_difference": (low + high) / 2, "ci_low": low,
               "ci_high": high, "wilcoxon_p": p}
        return ev.primary_verdict(pd.DataFrame([row], index=pd.MultiIndex.from_tuples([key])))
    assert "**the meta-model beats the fair single best.**" in verdict(0.001, 0.02)
    assert "does not beat the fair single best** (the CI does not lie above 0" in verdict(-0.0347, 0.0057)
    assert "does not beat" in verdict(0.001, 0.02, p=0.2)
    assert "does not beat" in verdict(0.0, 0.01)
    assert "5 wins, 4 ties, 6 losses" in verdict(-0.01, 0.01)
    assert ev.primary_verdict(pd.DataFrame()).startswith("No paired comparison")
    empty = pd.DataFrame([{"n": 0, "wins": 0, "ties": 0, "losses": 0, "mean_difference": float("nan"),
                           "ci_low": float("nan"), "ci_high": float("nan")}], index=pd.MultiIndex.from_tuples([key]))
    assert ev.primary_verdict(empty).startswith("No paired comparison")


# --------------------------------------------------------------------------- the decision
def test_decide_needs_the_ci_above_zero_and_a_wilcoxon_p_below_005():
    assert ws.decide({"ci_low": 0.001, "wilcoxon_p": 0.01}) == ws.META_MODEL
    assert ws.decide({"ci_low": 0.0, "wilcoxon_p": 0.01}) == ws.PORTFOLIO
    assert ws.decide({"ci_low": float("nan"), "wilcoxon_p": 0.01}) == ws.PORTFOLIO
    assert ws.decide({}) == ws.PORTFOLIO
    # mostly ties: 4 wins, 11 ties, 0 losses put the CI above 0, but the signed-rank test does not call it
    c = ev.paired_comparison([0.0] * 4 + [0.01] * 11, [0.004, 0.002, 0.003, 0.001] + [0.01] * 11)
    assert c["ci_low"] > 0 and c["wilcoxon_p"] == pytest.approx(0.125)
    assert ws.decide(c) == ws.PORTFOLIO


def test_ties_within_float_noise_cannot_make_a_win():
    tied = ev.paired_comparison([0.1] * 5, [(0.1 + 0.1 + 0.1) / 3] * 5)
    assert (tied["wins"], tied["ties"], tied["losses"]) == (0, 5, 0)
    assert tied["mean_difference"] == 0.0 and tied["ci_low"] == 0.0 and ws.decide(tied) == ws.PORTFOLIO
    one = ev.paired_comparison([0.0], [0.05])
    assert one["wins"] == 1 and np.isnan(one["ci_low"])          # a single dataset has no interval


def test_choose_warm_start_follows_the_committed_decision(tmp_path):
    recs = []
    for d in range(3):
        for name, cfg in {"vanilla_kd": {}, "mixup": {"mixup": {"enabled": True}},
                          "t4": {"loss": {"prediction": {"temperature": 4.0}}}}.items():
            recs.append(RunRecord.create(dataset_fingerprint=f"fp{d}", meta_features={"log_n_train": 6 + d},
                                         config=PipelineConfig.model_validate(cfg),
                                         metrics={"student_score": 0.8 + 0.05 * (name == "mixup") + 0.01 * d},
                                         teacher_score=0.9, wall_seconds=1.0, student_parameters=1, status="completed",
                                         search={"dataset": f"ds{d}", "candidate": name}))
    rec = Recommender.fit(records_to_table(recs), method="rf", model_params={"n_estimators": 20})
    rec.save(tmp_path)
    plain = ws.choose_warm_start(rec, tmp_path, {"log_n_train": 7}, top_k=2)
    assert plain.source == ws.META_MODEL and len(plain.recommendations) == 2
    ws.write_decision(tmp_path, ["t4", "vanilla_kd"], 2, {"ci_low": -0.01, "ci_high": 0.02})
    chosen = ws.choose_warm_start(rec, tmp_path, {"log_n_train": 7}, top_k=2)
    assert chosen.source == ws.PORTFOLIO and "portfolio" in chosen.reason
    assert [r.candidate for r in chosen.recommendations] == ["t4", "vanilla_kd"]
    assert [r.rank for r in chosen.recommendations] == [1, 2]
    longer = ws.choose_warm_start(rec, tmp_path, {"log_n_train": 7}, top_k=3)
    assert [r.why["portfolio_member"] for r in longer.recommendations] == [True, True, False]
    assert longer.reason == ws.PORTFOLIO_FIRST
    # constraints (checked before the ranking) that remove one member: the other comes first
    no_t4 = ws.choose_warm_start(rec, tmp_path, {"log_n_train": 7}, top_k=2,
                                 constraints={"loss.prediction.temperature": 1.0})
    assert no_t4.source == ws.PORTFOLIO and [r.candidate for r in no_t4.recommendations][0] == "vanilla_kd"
    assert [r.why["portfolio_member"] for r in no_t4.recommendations] == [True, False]
    # a filter after the ranking (the service's: what the requester may see, the student's size): ranks 1..n
    kept = longer.keeping([r for r in longer.recommendations if r.candidate != "t4"])
    assert kept.source == ws.PORTFOLIO and [r.rank for r in kept.recommendations] == [1, 2]
    assert [r.rank for r in longer.recommendations] == [1, 2, 3]                     # the original untouched
    assert longer.keeping([longer.recommendations[2]]).source == ws.META_MODEL   # no member left
    # no member left before the ranking either: the meta-model's ranking, and the source says so
    none = ws.choose_warm_start(rec, tmp_path, {"log_n_train": 7}, top_k=2, constraints={"mixup.enabled": True})
    assert none.source == ws.META_MODEL and none.reason == ws.NO_MEMBER_LEFT
    assert [r.candidate for r in none.recommendations] == ["mixup"]
    # a decision file that names no portfolio: the meta-model's ranking, said so (not a crash)
    (tmp_path / ws.DECISION_FILE).write_text(json.dumps({"source": "portfolio", "k": 2}))
    empty = ws.choose_warm_start(rec, tmp_path, {"log_n_train": 7}, top_k=2)
    assert empty.source == ws.META_MODEL and "names no member" in empty.reason
    ws.write_decision(tmp_path, ["t4", "vanilla_kd"], 2, {"ci_low": 0.01, "ci_high": 0.02, "wilcoxon_p": 0.01})
    assert ws.choose_warm_start(rec, tmp_path, {"log_n_train": 7}, top_k=2).source == ws.META_MODEL


def test_all_train_sizes_of_a_dataset_are_held_out_together():
    t = _planted_table(4)
    t = pd.concat([t, t.assign(dataset=t["dataset"] + "@n4000", fingerprint=t["fingerprint"] + "-big")])
    t["group"] = t["dataset"].str.split("@").str[0]
    calls = []

    def fit_predict(train, test, choice, seed):
        assert not set(train["group"]) & set(test["group"])   # no size of a held-out dataset is trained on
        calls.append(set(test["group"]))
        return test["pf_oracle"].to_numpy()

    res = ev.nested_lodo_evaluate(t, [ev.ModelChoice("oracle"), ev.ModelChoice("anti")], fit_predict=fit_predict,
                                  portfolio_k=2, n_boot=100)
    assert set(res.per_dataset["dataset"]) == {f"d{i}{s}" for i in range(4) for s in ("", "@n4000")}
    assert res.info["n_datasets"] == 4 and res.info["n_contexts"] == 8
    # the summary's mean is over contexts; it counts both, each under its own name
    assert (res.summary["n_datasets"] == 4).all() and (res.summary["n_contexts"] == 8).all()
    assert res.comparisons.loc[(ev.META_MODEL, "single_best", "regret1"), "n"] == 4   # paired over datasets
    assert calls


def test_fixed_reference_models_are_reported_and_compared():
    t = _planted_table(4)
    res = ev.nested_lodo_evaluate(t, [ev.ModelChoice("anti")], portfolio_k=2, n_boot=100,
                                  fixed={"oracle_ref": ev.ModelChoice("oracle")},
                                  fit_predict=lambda tr, te, c, s: te["pf_oracle"].to_numpy() * (1 if c.method == "oracle" else -1))
    assert res.summary.loc["oracle_ref", "regret1"] == 0.0 and res.summary.loc[ev.META_MODEL, "regret1"] > 0
    assert res.comparisons.loc[("oracle_ref", "single_best", "regret1"), "losses"] == 0


# --------------------------------------------------------------------------- inner CV scheme, feature sets
def test_inner_cv_is_leave_one_group_out_by_default():
    assert ev.inner_folds_of(["c", "a", "b"], None) == [["a"], ["b"], ["c"]]
    assert ev.inner_folds_of(["a", "b"], 5) == [["a"], ["b"]]              # more folds than groups: LOGO
    folds = ev.inner_folds_of([f"g{i}" for i in range(7)], 3, random_state=1)
    assert len(folds) == 3 and sorted(g for f in folds for g in f) == [f"g{i}" for i in range(7)]
    t = _planted_table(5)
    inner_tests = []

    def fit_predict(train, test, choice, seed):
        assert not set(train["dataset"]) & set(test["dataset"])
        inner_tests.append(tuple(sorted(set(test["dataset"]))))
        return test["pf_oracle"].to_numpy()

    choice, means = ev.select_choice(ev.training_table(t, "d0"), [ev.ModelChoice("oracle"), ev.ModelChoice("anti")],
                                     fit_predict=fit_predict)
    # d1..d4 are evaluable (u is not): 4 inner folds of one dataset each, for each of the 2 choices
    assert sorted(inner_tests) == sorted([(f"d{i}",) for i in range(1, 5)] * 2)
    assert choice.method == "oracle" and means["oracle()"] == 0.0


def test_stated_feature_set_is_a_nested_choice():
    t = _planted_table(5)
    t["mf_ours"] = np.repeat(np.arange(len(set(t["dataset"]))), 5).astype(float)
    t["mf_extra.n_examples"] = 100.0
    stated = ev.ModelChoice("hgb", features="stated")
    rows = stated.fit_rows(t)
    assert "mf_ours" not in rows and "mf_extra.n_examples" in rows and "pf_oracle" in rows
    assert "mf_ours" in ev.ModelChoice("hgb").fit_rows(t)
    assert stated.label == "hgb()[stated]"
    assert stated.applies_to(t) and not stated.applies_to(t.drop(columns=["mf_extra.n_examples"]))
    labels = [c.label for c in ev.default_choices(["hgb"])]
    assert "hgb(n_bags=1,n_estimators=150)" in labels and "hgb(n_bags=1,n_estimators=150)[stated]" in labels

    def fit_predict(train, test, choice, seed):   # only a model that cannot see mf_ours ranks well
        return test["pf_oracle"].to_numpy() * (-1 if "mf_ours" in train else 1)

    res = ev.nested_lodo_evaluate(t, [ev.ModelChoice("hgb"), stated], fit_predict=fit_predict, portfolio_k=2,
                                  n_boot=100, fixed={"plain_stated": ev.PLAIN_HGB_STATED})
    assert set(res.selections["choice"]) == {"hgb()[stated]"} and res.info["inner_folds"] == "logo"
    assert res.summary.loc[ev.META_MODEL, "regret1"] == 0.0
    assert (ev.META_MODEL, "plain_stated", "regret1") in res.comparisons.index


def test_stated_feature_set_fits_a_real_model():
    t = _planted_table(4)
    t["mf_ours"] = 1.0
    t["mf_extra.n_examples"] = np.repeat([10.0, 20.0, 30.0, 40.0, 50.0], 5)
    model = ev.fit_model(ev.PLAIN_HGB_STATED.fit_rows(t), "hgb", model_params={"n_bags": 1, "n_estimators": 5})
    assert model.n_features_in_ == 2                                        # pf_oracle, mf_extra.n_examples


def test_inner_folds_option():
    from autodistill.cli.meta import _inner_folds

    assert _inner_folds("logo") is None and _inner_folds("LOGO") is None and _inner_folds("5") == 5
    for bad in ("1", "x"):
        with pytest.raises(Exception, match="logo"):
            _inner_folds(bad)
