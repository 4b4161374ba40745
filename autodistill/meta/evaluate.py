"""Nested leave-one-dataset-out (LODO) evaluation of the meta-model against fair baselines, and its report.

For each held-out dataset D of a table (:func:`autodistill.meta.table.records_to_table`) whose teacher
beats the majority class (:func:`autodistill.meta.table.uninformative_datasets`: elsewhere every ratio
is noise around chance, so those datasets are never scored):

1. :func:`training_table` keeps only the rows of the *other* datasets (and drops any row whose dataset
   fingerprint equals one of D's, so the same data under another name cannot leak).
2. Every modelling choice of the meta-model (:class:`ModelChoice`: family, ensemble size, which
   meta-features it reads, whether to train on the uninformative datasets) is selected by
   :func:`select_choice` in a grouped cross-validation *inside* that training table (by default
   leave-one-dataset-group-out); the chosen one is refitted there and D's candidates are scored from
   their features alone (:func:`test_features`).
3. Baselines see the same training table (its informative datasets): ``single_best`` (fair: the
   best mean centred target over a complete block of contexts and candidates,
   :func:`~autodistill.meta.warm_start.candidate_effects`), ``single_best_naive`` (the old, flawed mean of raw
   targets over whichever datasets a candidate has), ``portfolio`` (the greedy best-of-k,
   :func:`~autodistill.meta.warm_start.greedy_portfolio`, members first), ``nearest_dataset`` (the best
   candidate of the nearest training dataset, L1 on standardised meta-features), ``vanilla_kd`` (by
   name, else the candidate nearest the default config) and ``random`` (exact expectation).

Metrics per held-out dataset (y = the target; y* = D's best), every method's ties scored at their
expected value under a uniformly random tie-break (:func:`ranking_metrics`):

- ``regret<k>`` = y* − E[max y over the top-k], k = 1..5 (``regret1``: the pick's regret, in target
  units); ``nregret1`` = regret1 / (y* − y_min); ``rank1``: 1 + candidates strictly better than the
  pick; ``hit<k>``: P(a best candidate is in the top-k), k = 5 unless asked; ``spearman`` of the scores
  with y.

Paired per-dataset comparisons (:func:`paired_comparison`): wins / ties / losses, Wilcoxon signed-rank
p, bootstrap CI over datasets of the mean regret difference. :func:`seed_noise_floor` gives the
per-context seed noise where several student seeds exist.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations, permutations
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ..config import PipelineConfig
from ..records import RunRecord
from .columns import (FEATURE_SETS, PF_PREFIX, feature_columns, meta_feature_columns, pipeline_features,
                      restrict_features, stated_meta_feature_columns)
from .distances import l1_distances, scale_stats
from .model import METHODS, PipelineScoreRegressor
from .table import groups_of, records_to_table, uninformative_datasets
from .warm_start import candidate_effects, decide, greedy_portfolio, portfolio_scores, shows_a_win

TOP_K = 5
#: best-of-k regrets in every per-dataset table (the product warm-starts its search from a few pipelines)
REGRET_KS = (1, 2, 3, 4, 5)
#: meta-features about an already trained teacher: unknown when a user asks for a recommendation
#: before training one, so they are left out of the models by default
TEACHER_META_FEATURES = ("mf_teacher_score", "mf_has_teacher_score", "mf_teacher_confidence",
                         "mf_has_teacher_confidence")
_HIDDEN = ("target", "score", "teacher_score", "majority_baseline", "n_runs")

class LeakError(AssertionError):
    """The training table of a fold contains the held-out dataset."""


# --------------------------------------------------------------------------- the guard
def training_table(table: pd.DataFrame, held_out: str | Sequence[str]) -> pd.DataFrame:
    """Rows of every dataset except ``held_out`` (one name or several) and except rows sharing their
    fingerprints."""
    held = {held_out} if isinstance(held_out, str) else set(held_out)
    test_fps = set(table.loc[table["dataset"].isin(held), "fingerprint"].dropna()) \
        if "fingerprint" in table else set()
    mask = ~table["dataset"].isin(held)
    if test_fps:
        mask &= ~table["fingerprint"].isin(test_fps)
    train = table[mask]
    if held & set(train["dataset"]) or (test_fps and test_fps & set(train["fingerprint"].dropna())):
        raise LeakError(f"the training table of fold {sorted(held)} contains a held-out dataset")
    return train


def test_features(table: pd.DataFrame, held_out: str | Sequence[str]) -> pd.DataFrame:
    """The held-out dataset's (or datasets') rows without anything derived from its results."""
    held = [held_out] if isinstance(held_out, str) else list(held_out)
    return table[table["dataset"].isin(held)].drop(columns=[c for c in _HIDDEN if c in table.columns])


def drop_meta_features(table: pd.DataFrame, names: Sequence[str] = TEACHER_META_FEATURES) -> pd.DataFrame:
    out = table.drop(columns=[c for c in names if c in table.columns])
    out.attrs.update(table.attrs)
    return out


# --------------------------------------------------------------------------- models
def default_model_params(method: str) -> dict[str, Any]:
    """Large ensembles: candidates on a dataset are often within noise of each other, so with few
    bags / trees the top-1 pick flips with the model seed (measured: hgb with 3 bags had a std of
    0.0056 in mean top-1 regret over 5 seeds, with 10 bags 0.0038)."""
    return {"hgb": {"n_estimators": 150, "n_bags": 10}, "rf": {"n_estimators": 1000},
            "pairwise": {"n_estimators": 50, "n_bags": 1}}[method]


def fit_model(train: pd.DataFrame, method: str, random_state: int = 0,
              model_params: dict[str, Any] | None = None) -> PipelineScoreRegressor:
    cols = feature_columns(train)
    params = {**default_model_params(method), **(model_params or {})}
    if method == "pairwise":
        params.setdefault("context_columns", [cols.index(c) for c in meta_feature_columns(train)])
    model = PipelineScoreRegressor(method=method, random_state=random_state, **params)
    return model.fit(train[cols].to_numpy(dtype=float), train["target"].to_numpy(dtype=float),
                     groups=train["dataset"].to_numpy())


def guarded_fit_predict(train: pd.DataFrame, test: pd.DataFrame, method: str, random_state: int = 0,
                        model_params: dict[str, Any] | None = None) -> np.ndarray:
    model = fit_model(train, method, random_state, model_params)
    return model.predict(test[feature_columns(train)].to_numpy(dtype=float))


# --------------------------------------------------------------------------- metrics
def _expected_best_of_top(y: np.ndarray, s: np.ndarray, k: int) -> tuple[float, float]:
    """(E[max y over the top-k], P(a best candidate is in the top-k)) when the ranking by ``s`` (highest
    first) breaks ties uniformly at random: exact, not sampled.

    The items strictly above the tied group that straddles position k are all in; m = k − (their
    number) of the t tied ones are drawn: P(the max of a random m-subset is the i-th smallest of the
    group) = C(i, m−1) / C(t, m)."""
    n = len(y)
    k = min(k, n)
    best = y.max()
    level = np.sort(s)[::-1][k - 1]
    above, group = y[s > level], np.sort(y[s == level])
    m, t = k - len(above), len(group)
    top_above = above.max() if len(above) else -np.inf
    probs = np.array([math.comb(i, m - 1) for i in range(t)], dtype=float) / math.comb(t, m)
    e_max = float(np.sum(probs * np.maximum(group, top_above)))
    if len(above) and top_above >= best:
        return e_max, 1.0
    n_best = int(np.sum(group >= best))
    return e_max, 1.0 - math.comb(t - n_best, m) / math.comb(t, m)


def best_of_k_regrets(y_true: Sequence[float], scores: Sequence[float], ks: Sequence[int] = REGRET_KS
                      ) -> dict[str, float]:
    """``regret<k>`` = y* − E[max y over the top-k] for each k, ties at their expected value."""
    y = np.asarray(y_true, dtype=float)
    s = _finite_scores(scores)
    return {f"regret{k}": float(y.max() - _expected_best_of_top(y, s, k)[0]) for k in ks}


def _finite_scores(scores: Sequence[float]) -> np.ndarray:
    s = np.asarray(scores, dtype=float)
    return np.where(np.isfinite(s), s, -np.inf)   # unscored candidates: last, tied with each other


def ranking_metrics(y_true: Sequence[float], scores: Sequence[float], k: int = TOP_K,
                    with_spearman: bool = True) -> dict[str, float]:
    """Metrics of one ranking (highest score first). Tied scores are scored at their expected value
    under a uniformly random tie-break, for every method: no order (alphabetical or other) favours
    anyone, and a method that scores everything equal is exactly :func:`random_metrics`."""
    y = np.asarray(y_true, dtype=float)
    s = _finite_scores(scores)
    best, worst = y.max(), y.min()
    tied_top = s == s.max()
    regret1 = float(best - y[tied_top].mean())
    _, p_hit = _expected_best_of_top(y, s, k)
    rank1 = float(np.mean([1 + np.sum(y > v) for v in y[tied_top]]))
    spear = float("nan")
    fin = np.isfinite(s)
    if with_spearman and fin.sum() > 2 and np.ptp(y[fin]) > 0 and np.ptp(s[fin]) > 0:
        spear = float(spearmanr(s[fin], y[fin]).statistic)
    regrets = best_of_k_regrets(y, s, sorted({*REGRET_KS, k}))
    return {**regrets, "regret1": regret1, "nregret1": regret1 / (best - worst) if best > worst else 0.0,
            "rank1": rank1, f"hit{k}": float(p_hit), "spearman": spear}


def random_metrics(y_true: Sequence[float], k: int = TOP_K) -> dict[str, float]:
    """Exact expected metrics of a uniformly random ranking: every candidate tied."""
    return {**ranking_metrics(y_true, np.zeros(len(y_true)), k, with_spearman=False), "spearman": 0.0}


# --------------------------------------------------------------------------- baselines
def _default_features() -> dict[str, float]:
    return pipeline_features(PipelineConfig())


def baseline_scores(train: pd.DataFrame, test: pd.DataFrame, portfolio_k: int | None = None
                    ) -> dict[str, np.ndarray]:
    """Scores of D's candidates (``test`` rows, in order) under each deterministic baseline; with
    ``portfolio_k`` also the greedy best-of-k ``portfolio`` (its members first)."""
    cands = test["candidate"].to_numpy()
    pf_cols = [c for c in test.columns if c.startswith(PF_PREFIX)]
    # the fair single best: candidate effects net of the contexts' levels
    effects = candidate_effects(train)
    sb = np.array([effects.get(c, np.nan) for c in cands], dtype=float)
    # the old single best, kept to show its flaw: raw means over whichever datasets a candidate has
    means = train.groupby("candidate")["target"].mean()
    naive = np.array([means.get(c, np.nan) for c in cands], dtype=float)
    sb_filled = np.where(np.isfinite(sb), sb, (np.nanmin(sb) if np.isfinite(sb).any() else 0.0) - 1.0)
    # vanilla KD: by name, else nearest to the default config's pipeline features
    if "vanilla_kd" in set(cands):
        van = np.where(cands == "vanilla_kd", 1.0, 0.0)
    else:
        default = _default_features()
        ref = np.array([default.get(c, np.nan) for c in pf_cols], dtype=float)
        P = test[pf_cols].to_numpy(dtype=float)
        van = -np.nansum(np.abs(np.nan_to_num(P, nan=0.0) - np.nan_to_num(ref, nan=0.0)), axis=1)
    # nearest dataset
    mf_cols = meta_feature_columns(train)
    per_ds = train.groupby("dataset")
    names = list(per_ds.groups)
    mf = per_ds[mf_cols].first() if mf_cols else pd.DataFrame(index=names)
    near = sb_filled - 10.0  # fallback order: single best, below every observed value
    if mf_cols and len(names):
        center, scale = scale_stats(mf)
        q = test[mf_cols].iloc[0].to_numpy(dtype=float)
        d = l1_distances(q, mf.to_numpy(dtype=float), center, scale)
        nearest = names[int(np.argsort(d, kind="stable")[0])]
        vals = train[train["dataset"] == nearest].set_index("candidate")["target"]
        got = np.array([vals.get(c, np.nan) for c in cands], dtype=float)
        near = np.where(np.isfinite(got), got, near)
    out = {"vanilla_kd": van, "single_best": sb, "single_best_naive": naive, "nearest_dataset": near}
    if portfolio_k:
        out["portfolio"] = portfolio_scores(cands, greedy_portfolio(train, portfolio_k), effects)
    return out


# --------------------------------------------------------------------------- nested LODO
@dataclass(frozen=True)
class ModelChoice:
    """One modelling choice of the meta-model: family, its parameters (ensemble size...), which
    meta-features it reads (``features``: ``all``, or only those the records ``stated`` about their
    dataset, :func:`~autodistill.meta.columns.restrict_features`; the pipeline features always) and
    whether datasets whose teacher is no better than the majority class are left out of its training
    rows."""
    method: str
    params: tuple[tuple[str, Any], ...] = ()
    drop_uninformative: bool = True
    features: str = "all"

    @property
    def label(self) -> str:
        shown = ",".join(f"{k}={v}" for k, v in self.params if k in ("n_bags", "n_estimators"))
        return (f"{self.method}({shown})" + ("" if self.features == "all" else f"[{self.features}]")
                + ("" if self.drop_uninformative else "+uninformative"))

    def applies_to(self, train: pd.DataFrame) -> bool:
        """False when the choice would be the same as another or empty on ``train``: keeping the
        uninformative datasets where there are none, stated meta-features where the records state none."""
        if not self.drop_uninformative and not uninformative_datasets(train):
            return False
        return self.features == "all" or bool(stated_meta_feature_columns(train))

    def fit_rows(self, train: pd.DataFrame) -> pd.DataFrame:
        """The rows (and feature columns) this choice is fitted on."""
        train = restrict_features(train, self.features)
        if not self.drop_uninformative:
            return train
        bad = uninformative_datasets(train)
        return train[~train["dataset"].isin(list(bad))] if bad else train


#: the ensemble sizes the nested selection may choose from, per family
CHOICE_PARAMS: dict[str, list[dict[str, Any]]] = {
    "hgb": [{"n_bags": 1}, {"n_bags": 3}, {"n_bags": 10}], "rf": [{"n_estimators": 300}], "pairwise": [{}]}


def default_choices(methods: Sequence[str] = METHODS, feature_sets: Sequence[str] = FEATURE_SETS) -> list[ModelChoice]:
    """Every family x ensemble size x feature set x leave-out rule (``all`` features and the leave-out
    rule first: ties in the selection go to the earlier choice)."""
    return [ModelChoice(m, tuple(sorted({**default_model_params(m), **p}.items())), drop, fs)
            for drop in (True, False) for fs in feature_sets for m in methods for p in CHOICE_PARAMS[m]]


#: fixed reference models reported beside the nested meta-model: one gradient-boosting model, no
#: bagging, on every feature / on the pipeline features and the meta-features the records state
PLAIN_HGB = ModelChoice("hgb", tuple(sorted({**default_model_params("hgb"), "n_bags": 1}.items())))
PLAIN_HGB_STATED = ModelChoice(PLAIN_HGB.method, PLAIN_HGB.params, features="stated")

ChoiceFitPredict = Callable[[pd.DataFrame, pd.DataFrame, ModelChoice, int], np.ndarray]


def _choice_scores(choice: ModelChoice, train: pd.DataFrame, test: pd.DataFrame, random_state: int,
                   fit_predict: ChoiceFitPredict | None = None) -> np.ndarray:
    rows = choice.fit_rows(train)
    if fit_predict is not None:
        return np.asarray(fit_predict(rows, test, choice, random_state), dtype=float)
    return guarded_fit_predict(rows, test, choice.method, random_state, dict(choice.params))


def _evaluable_contexts(table: pd.DataFrame) -> dict[str, list[str]]:
    """{group: its contexts whose teacher beats the majority class}, groups without any left out."""
    bad = set(uninformative_datasets(table))
    pairs = pd.DataFrame({"group": groups_of(table), "dataset": table["dataset"]}).drop_duplicates()
    pairs = pairs[~pairs["dataset"].isin(bad)]
    return {str(g): sorted(d["dataset"]) for g, d in pairs.groupby("group")}


def _hold_out(table: pd.DataFrame, groups: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """(the training table without every context of ``groups``, those contexts)."""
    held = sorted(set(table.loc[groups_of(table).isin(list(groups)), "dataset"]))
    return training_table(table, held), held


def inner_folds_of(groups: Sequence[str], inner_folds: int | None, random_state: int = 0) -> list[list[str]]:
    """The inner CV's folds of dataset groups: one group each (leave-one-group-out) when ``inner_folds``
    is None (or at least the number of groups), else ``inner_folds`` random folds of whole groups."""
    groups = sorted(groups)
    if inner_folds is None or inner_folds >= len(groups):
        return [[g] for g in groups]
    rng = np.random.RandomState(random_state)
    return [list(f) for f in np.array_split(rng.permutation(groups), inner_folds)]


def select_choice(train: pd.DataFrame, choices: Sequence[ModelChoice], *, inner_folds: int | None = None,
                  random_state: int = 0, metric: str = "regret1",
                  fit_predict: ChoiceFitPredict | None = None) -> tuple[ModelChoice, pd.Series]:
    """The choice with the lowest mean ``metric`` in a grouped cross-validation *inside* ``train``
    (folds of whole dataset groups, :func:`inner_folds_of`: leave-one-group-out by default; only
    contexts whose teacher beats the majority class are scored), and every choice's inner mean. Ties go
    to the earlier choice. Choices that do not apply to ``train`` (:meth:`ModelChoice.applies_to`) are
    not tried."""
    active = [c for c in choices if c.applies_to(train)] or list(choices)
    evaluable = _evaluable_contexts(train)
    if len(active) == 1 or len(evaluable) < 2:
        return active[0], pd.Series(dtype=float)
    folds = inner_folds_of(list(evaluable), inner_folds, random_state)
    totals = {c: [] for c in active}
    for fold in folds:
        inner_train, _ = _hold_out(train, list(fold))
        scored = [d for g in fold for d in evaluable[g]]
        test_rows = train[train["dataset"].isin(scored)]
        test = test_features(train, scored)
        for c in active:
            scores = _choice_scores(c, inner_train, test, random_state, fit_predict)
            for d in scored:
                mask = (test_rows["dataset"] == d).to_numpy()
                m = ranking_metrics(test_rows["target"].to_numpy(dtype=float)[mask], scores[mask], with_spearman=False)
                totals[c].append(m[metric])
    means = pd.Series({c.label: float(np.mean(v)) for c, v in totals.items()})
    best = min(active, key=lambda c: (means[c.label], active.index(c)))
    return best, means


def paired_comparison(method_regret: Sequence[float], reference_regret: Sequence[float], *, n_boot: int = 2000,
                      seed: int = 0, tol: float = 1e-12) -> dict[str, float]:
    """Per-dataset paired comparison of a method with a reference (lower regret is better):
    wins / ties / losses of the method, the two-sided Wilcoxon signed-rank p on the non-zero
    differences, and the mean of d = reference − method (> 0: the method is better) with a percentile
    bootstrap 95% CI over datasets (none for a single dataset). A difference within ``tol`` is a tie and
    counts as 0 in the mean and the CI too, so float noise on ties cannot lift the CI above 0."""
    from scipy.stats import wilcoxon

    d = np.asarray(reference_regret, dtype=float) - np.asarray(method_regret, dtype=float)
    d = d[np.isfinite(d)]
    d = np.where(np.abs(d) <= tol, 0.0, d)
    n = len(d)
    if n == 0:
        return {"n": 0, "wins": 0, "ties": 0, "losses": 0, "wilcoxon_p": float("nan"),
                "mean_difference": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    nonzero = d[np.abs(d) > tol]
    p = float(wilcoxon(nonzero).pvalue) if len(nonzero) else 1.0
    boots = d[np.random.default_rng(seed).integers(0, n, size=(n_boot, n))].mean(axis=1)
    low, high = np.percentile(boots, [2.5, 97.5]) if n > 1 else (float("nan"), float("nan"))
    return {"n": n, "wins": int(np.sum(d > tol)), "ties": int(np.sum(np.abs(d) <= tol)),
            "losses": int(np.sum(d < -tol)), "wilcoxon_p": p, "mean_difference": float(d.mean()),
            "ci_low": float(low), "ci_high": float(high)}


def seed_noise_floor(records: Sequence[RunRecord | Mapping[str, Any]], target: str = "ratio") -> pd.DataFrame:
    """Per context with ≥ 2 student seeds: the candidates in common, the mean (over candidates) std of
    a candidate's target across seeds, the Spearman correlation of the candidates' targets between
    two seeds (mean over seed pairs), and ``cross_seed_regret1``: the top-1 regret at one seed of
    the candidate that was best at another (mean over ordered seed pairs): what even an oracle of one
    seed loses to seed noise."""
    by_seed: dict[Any, list[RunRecord]] = {}
    for r in map(RunRecord.of, records):
        seed = r.seed if r.seed is not None else (r.provenance or {}).get("seed")
        by_seed.setdefault(seed, []).append(r)
    per_seed = {s: records_to_table(rs, target=target).pivot_table(index="candidate", columns="dataset",
                                                                    values="target")
                for s, rs in by_seed.items()}
    rows = []
    datasets = sorted({d for t in per_seed.values() for d in t.columns})
    for d in datasets:
        cols = {s: t[d].dropna() for s, t in per_seed.items() if d in t.columns}
        if len(cols) < 2:
            continue
        common = sorted(set.intersection(*(set(c.index) for c in cols.values())))
        if len(common) < 3:
            continue
        y = pd.DataFrame({s: c[common] for s, c in cols.items()})
        cross = [ranking_metrics(y[b].to_numpy(), y[a].to_numpy(), with_spearman=False)["regret1"]
                 for a, b in permutations(y.columns, 2)]
        spear = [float(spearmanr(y[a], y[b]).statistic) for a, b in combinations(y.columns, 2)]
        rows.append({"dataset": d, "n_seeds": y.shape[1], "n_candidates": len(common),
                     "seed_std": float(y.std(axis=1, ddof=1).mean()), "spearman": float(np.mean(spear)),
                     "cross_seed_regret1": float(np.mean(cross))})
    return pd.DataFrame(rows, columns=["dataset", "n_seeds", "n_candidates", "seed_std", "spearman",
                                       "cross_seed_regret1"])


@dataclass
class NestedResult:
    per_dataset: pd.DataFrame    # dataset, method, n_candidates, regret1..5, nregret1, rank1, hit<k>, spearman
    summary: pd.DataFrame        # method -> mean metrics
    comparisons: pd.DataFrame    # (method, reference, metric) -> paired_comparison
    selections: pd.DataFrame     # held-out dataset, seed, chosen choice, the choices' inner means
    portfolio: list[str]         # the greedy portfolio on every evaluated context (what the product would use)
    decision: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    noise_floor: pd.DataFrame | None = None


#: the meta-model's name in the nested evaluation's tables
META_MODEL = "meta_model"


def nested_lodo_evaluate(table: pd.DataFrame, choices: Sequence[ModelChoice] | None = None, *,
                         seeds: Sequence[int] = (0,), inner_folds: int | None = None, portfolio_k: int = 4,
                         k: int = TOP_K, fit_predict: ChoiceFitPredict | None = None, min_candidates: int = 2,
                         n_boot: int = 2000, fixed: Mapping[str, ModelChoice] | None = None) -> NestedResult:
    """Leave-one-dataset-out with every modelling choice made inside the training folds (one choice in
    ``choices``, e.g. the product's plain model: nothing to select, it is fitted on each training fold).

    For each held-out dataset D whose teacher beats the majority class: the meta-model's choice
    (family, ensemble size, feature set, whether to train on the uninformative datasets) is selected by
    :func:`select_choice` on D's training table alone (``inner_folds``: None = leave-one-group-out),
    refitted there and scored on D, once per model
    seed (D's metrics are the mean over the seeds). The baselines (fair single best, the old naive one,
    the greedy best-of-``portfolio_k`` portfolio, nearest dataset, vanilla KD, random) see the
    informative training contexts. Every method's ties are scored at their expected value. ``fixed``:
    reference models ({name: choice}) fitted in every fold with no selection (e.g. a plain
    gradient-boosting model), as further methods."""
    choices = list(choices or default_choices())
    bad = set(uninformative_datasets(table))
    evaluable = _evaluable_contexts(table)
    rows, selections = [], []
    for group, contexts in evaluable.items():
        train, _ = _hold_out(table, [group])
        if train.empty:
            continue
        informative = train[~train["dataset"].isin(bad)]
        chosen = [select_choice(train, choices, inner_folds=inner_folds, random_state=seed, fit_predict=fit_predict)
                  for seed in seeds]
        selections += [{"dataset": group, "seed": seed, "choice": c.label, **inner.to_dict()}
                       for seed, (c, inner) in zip(seeds, chosen)]
        for held_out in contexts:
            test_rows = table[table["dataset"] == held_out]
            if len(test_rows) < min_candidates:
                continue
            test = test_features(table, held_out)
            y = test_rows["target"].to_numpy(dtype=float)
            points = test_rows["score"].to_numpy(dtype=float) if "score" in test_rows else y

            def measure(s, with_spearman: bool = True) -> dict[str, float]:
                """The ranking's metrics on the target, and its top-1 regret in the metric's own points."""
                return {**ranking_metrics(y, s, k, with_spearman),
                        "regret1_points": ranking_metrics(points, s, k, with_spearman=False)["regret1"]}

            base = dict(dataset=held_out, group=group, n_candidates=len(y))
            per_seed = [measure(_choice_scores(c, train, test, seed, fit_predict)) for seed, (c, _) in zip(seeds, chosen)]
            rows.append({**base, "method": META_MODEL, **pd.DataFrame(per_seed).mean().to_dict()})
            for name, c in (fixed or {}).items():
                fixed_seeds = [measure(_choice_scores(c, train, test, seed, fit_predict)) for seed in seeds]
                rows.append({**base, "method": name, **pd.DataFrame(fixed_seeds).mean().to_dict()})
            for method, s in baseline_scores(informative, test, portfolio_k).items():
                rows.append({**base, "method": method, **measure(s, with_spearman=method != "vanilla_kd")})
            rows.append({**base, "method": "random", **random_metrics(y, k),
                         "regret1_points": random_metrics(points, k)["regret1"]})
    per = pd.DataFrame(rows)
    order = [META_MODEL, *(fixed or {}), "portfolio", "single_best", "single_best_naive", "nearest_dataset",
             "vanilla_kd", "random"]
    metric_cols = [f"regret{j}" for j in REGRET_KS] + ["regret1_points", "nregret1", "rank1", f"hit{k}", "spearman"]
    summary = per.groupby("method")[metric_cols].mean().reindex([m for m in order if m in set(per["method"])])
    summary["n_contexts"] = per.groupby("method")["dataset"].nunique()   # the mean above is over these
    summary["n_datasets"] = per.groupby("method")["group"].nunique()
    comparisons = _comparisons(per, portfolio_k, n_boot, list(fixed or {}))
    informative_all = table[~table["dataset"].isin(bad)]
    portfolio = greedy_portfolio(informative_all, portfolio_k)
    key = (META_MODEL, "portfolio", f"regret{portfolio_k}")
    decision = {"k": portfolio_k, "comparison": comparisons.loc[key].to_dict() if key in comparisons.index else {}}
    decision["source"] = decide(decision["comparison"])
    return NestedResult(per, summary, comparisons, pd.DataFrame(selections), portfolio, decision,
                        info={"n_datasets": len(evaluable), "n_contexts": int(per["dataset"].nunique()),
                              "left_out": {d: uninformative_datasets(table)[d] for d in bad},
                              "n_rows": int(len(table)), "n_candidates": int(table["candidate"].nunique()),
                              "seeds": list(seeds), "inner_folds": inner_folds or "logo", "portfolio_k": portfolio_k,
                              "choices": [c.label for c in choices], "target": table.attrs.get("target", "ratio")})


def _comparisons(per: pd.DataFrame, portfolio_k: int, n_boot: int, fixed: Sequence[str] = ()) -> pd.DataFrame:
    """Every method against the fair single best at top-1 and at the warm-start k, the meta-model
    against the portfolio at the warm-start k (the product's decision) and against each fixed reference
    at top-1; paired over dataset groups."""
    # the datasets are the independent units: a group's contexts (train sizes) are averaged first
    means = per.groupby(["method", "group"])[[f"regret{j}" for j in REGRET_KS]].mean().reset_index()
    wide = {m: g.set_index("group") for m, g in means.groupby("method")}
    pairs = [(m, "single_best", metric) for metric in ("regret1", f"regret{portfolio_k}")
             for m in (META_MODEL, *fixed, "portfolio", "nearest_dataset", "single_best_naive", "vanilla_kd",
                       "random")]
    pairs.append((META_MODEL, "portfolio", f"regret{portfolio_k}"))
    pairs += [(META_MODEL, ref, "regret1") for ref in fixed]   # the meta-model against each fixed reference
    rows = {}
    for method, ref, metric in pairs:
        if method in wide and ref in wide:
            both = pd.concat([wide[method][metric], wide[ref][metric]], axis=1, keys=["m", "r"], join="inner")
            rows[(method, ref, metric)] = paired_comparison(both["m"], both["r"], n_boot=n_boot)
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.names = ["method", "reference", "metric"]
    return out


# --------------------------------------------------------------------------- report
def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "–" if not np.isfinite(v) else f"{v:.4f}"
    return str(v)


def markdown_table(df: pd.DataFrame, index_name: str = "") -> str:
    cols = [index_name or (df.index.name or ""), *map(str, df.columns)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i, idx in enumerate(df.index):
        lines.append("| " + " | ".join([str(idx), *(_fmt(df.iloc[i, j]) for j in range(df.shape[1]))]) + " |")
    return "\n".join(lines)


def primary_verdict(comparisons: pd.DataFrame) -> str:
    """One plain sentence on the primary comparison: does the meta-model beat the fair single best in
    top-1 regret, by the rule of :func:`~autodistill.meta.warm_start.shows_a_win`?"""
    key = (META_MODEL, "single_best", "regret1")
    c = comparisons.loc[key] if key in comparisons.index else None
    if c is None or not c["n"] or not np.isfinite(c["ci_low"]):
        return "No paired comparison of the meta-model with the fair single best (no dataset has both)."
    verdict = ("beats the fair single best.**" if shows_a_win(c.to_dict()) else
               "does not beat the fair single best** (the CI does not lie above 0, or the Wilcoxon p is not "
               "below 0.05).")
    return (f"Paired over {int(c['n'])} held-out datasets: {int(c['wins'])} wins, {int(c['ties'])} ties, "
            f"{int(c['losses'])} losses, mean difference {_fmt(c['mean_difference'])}, 95 % CI "
            f"[{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}]: **the meta-model {verdict}")


def write_nested_report(result: NestedResult, out_dir: str | Path, title: str = "Meta-model: nested leave-one-dataset-out",
                        note: str = "") -> Path:
    """report.md + per_dataset.csv + summary.csv + comparisons.csv + selections.csv (+ noise_floor.csv)
    + decision.json in ``out_dir``."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.per_dataset.to_csv(out / "per_dataset.csv", index=False)
    result.summary.to_csv(out / "summary.csv")
    result.comparisons.to_csv(out / "comparisons.csv")
    result.selections.to_csv(out / "selections.csv", index=False)
    info, k = result.info, result.info.get("portfolio_k", 4)
    decision = {**result.decision, "portfolio": result.portfolio, "note": note}
    (out / "decision.json").write_text(json.dumps(decision, indent=1, default=float), encoding="utf-8")
    lines = [f"# {title}", ""]
    if note:
        lines += [f"**{note}**", ""]
    inner = info.get("inner_folds")
    inner_txt = ("leave-one-dataset-out CV" if inner in (None, "logo") else f"{inner}-fold grouped CV")
    choices = info.get("choices", [])
    how = (f"The meta-model is one fixed choice, {choices[0]}, fitted on each training fold (nothing is "
           "selected, so nothing is chosen on the held-out dataset)" if len(choices) == 1 else
           "The meta-model's modelling choice (family, ensemble size, feature set: `all` "
           "meta-features or only the `[stated]` ones the records give, whether to train on "
           "datasets whose teacher is no better than the majority class) is selected *inside* each training "
           f"fold ({inner_txt} on the training datasets only, lowest mean top-1 "
           f"regret; choices: {', '.join(choices)}), refitted on the training fold")
    lines += [f"{info.get('n_datasets')} held-out datasets, {info.get('n_candidates')} candidates, "
              f"{info.get('n_rows')} (dataset, candidate) rows; target `{info.get('target')}`. Each dataset is held "
              f"out in turn. {how} and scored on the held-out dataset, with model seeds {info.get('seeds')} (a "
              "dataset's figures are the mean over the seeds" + (
                  "; one unbagged HGB is deterministic, so its seeds give identical figures"
                  if len(choices) == 1 and choices[0].startswith("hgb(n_bags=1") else "") +
              "). Ties in any method's ranking are scored at their expected value "
              "(no alphabetical or positional tie-break). `regret<k>` = best target − best target among the "
              "method's top k; `regret1_points`: the top-1 regret in the metric's own points (the student's "
              "score, not its ratio to the teacher).", "",
              "- `single_best` (fair): the best mean centred target (target − the dataset's mean) over a complete "
              "block of the training datasets and candidates (every candidate ran on every dataset of it; a "
              "dataset is dropped from the block when that adds (dataset, candidate) cells, down to half the "
              "datasets); candidates outside the block rank after;",
              "- `single_best_naive`: the old baseline, the mean raw target over whichever datasets a candidate has;",
              f"- `portfolio`: the greedy best-of-{k} portfolio of the training datasets (its members first, "
              "then the fair single-best order);",
              "- `nearest_dataset`, `vanilla_kd`, `random` (exact expectation) as before;",
              "- `plain_hgb` (when present): one HistGradientBoostingRegressor (no bagging) on (pipeline features, "
              "meta-features), fitted in every fold with no selection: a fixed reference, not the product's model;",
              "- `plain_hgb_stated` (when present): the same on the pipeline features and only the meta-features "
              "the records state (`mf_extra.*`; for the Distiller runs the paper's task features, `#example` and "
              "`baseline_score`).",
              ""]
    if info.get("left_out"):
        lines += ["Never held out (teacher no better than the majority class; the ratio is noise around chance): "
                  + ", ".join(f"{d} (teacher {t:.3f}, majority {b:.3f})" for d, (t, b) in info["left_out"].items())
                  + ". Whether the meta-model trains on them is one of its nested choices.", ""]
    lines += ["## Mean over held-out contexts", "",
              "Each (dataset, train size) context counts once here; the paired comparisons below average a "
              "dataset's contexts first.", "", markdown_table(result.summary, "method"), ""]
    comp = result.comparisons.reset_index()
    comp.index = [f"{r.method} vs {r.reference} ({r.metric})" for r in comp.itertuples()]
    lines += ["## Paired per-dataset comparisons", "",
              "d = reference's regret − method's (> 0: the method is better); wins / ties / losses of the "
              "method; two-sided Wilcoxon signed-rank p on the non-zero differences; 95% percentile bootstrap "
              "CI of the mean of d over datasets (2,000 resamples).", "",
              markdown_table(comp.drop(columns=["method", "reference", "metric"]), "comparison"), ""]
    src = decision["source"]
    cmp_ = decision.get("comparison") or {}
    lines += ["## Verdict: the meta-model against the fair single best (top-1 regret)", "",
              primary_verdict(result.comparisons), ""]
    lines += ["## Decision: what the product warm-starts from", "",
              f"Meta-model top-{k} vs the best-of-{k} portfolio: mean difference "
              f"{_fmt(cmp_.get('mean_difference', float('nan')))}, CI [{_fmt(cmp_.get('ci_low', float('nan')))}, "
              f"{_fmt(cmp_.get('ci_high', float('nan')))}]. Rule: the meta-model only when that CI lies above 0 "
              f"and the Wilcoxon p ({_fmt(cmp_.get('wilcoxon_p', float('nan')))}) is below 0.05. "
              f"**Warm start from: {src}**" + (f" (portfolio on all evaluated datasets: {', '.join(result.portfolio)})."
                                               if src == "portfolio" else "."), ""]
    piv = result.per_dataset.pivot(index="dataset", columns="method", values="regret1")
    piv = piv[[m for m in result.summary.index if m in piv.columns]]
    lines += ["## Top-1 regret per held-out dataset", "", markdown_table(piv, "dataset"), ""]
    pk = result.per_dataset.pivot(index="dataset", columns="method", values=f"regret{k}")
    pk = pk[[m for m in result.summary.index if m in pk.columns]]
    lines += [f"## Best-of-{k} regret per held-out dataset", "", markdown_table(pk, "dataset"), ""]
    if not result.selections.empty:
        counts = result.selections["choice"].value_counts().rename("times chosen").to_frame()
        lines += ["## Choices selected inside the training folds", "", markdown_table(counts, "choice"), "",
                  "Every choice's inner mean top-1 regret per fold: `selections.csv`.", ""]
    if result.noise_floor is not None and not result.noise_floor.empty:
        result.noise_floor.to_csv(out / "noise_floor.csv", index=False)
        lines += ["## Seed noise floor", "",
                  "Contexts with ≥ 2 student seeds: `seed_std` = mean over candidates of a candidate's std "
                  "across seeds; `spearman` between the seeds' candidate rankings; `cross_seed_regret1` = the "
                  "top-1 regret at one seed of the candidate best at the other (what an oracle of one seed loses).",
                  "", markdown_table(result.noise_floor.set_index("dataset"), "dataset"), ""]
    has_floor = result.noise_floor is not None and not result.noise_floor.empty
    lines += ["Files: `summary.csv`, `per_dataset.csv`, `comparisons.csv`, `selections.csv`, `decision.json`"
              + (", `noise_floor.csv`" if has_floor else "") + ".", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return out / "report.md"
