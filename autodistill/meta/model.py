"""The meta-model: predict a candidate pipeline's normalised score on a dataset, and recommend.

- :class:`PipelineScoreRegressor` — a scikit-learn regressor on (pipeline features, meta-features):
  ``method="hgb"`` (a small bagged ensemble of HistGradientBoostingRegressor: the spread across the
  bags is the uncertainty), ``"rf"`` (RandomForestRegressor: spread across the trees) or
  ``"pairwise"`` (a bag of :class:`PairwiseRanker`). ``fit(X, y, groups=None)``: ``groups`` (the
  dataset of each row) matters only to the pairwise formulation.
- :class:`PairwiseRanker` — learns P(row a beats row b) from pairs of rows of the same group (dataset)
  and scores a row by its mean win probability against a fixed reference set of training rows
  (Borda count), or by a linear ranker's w·x; a monotone linear map fitted on the training rows puts the
  score back on the target's scale.
- :class:`Recommender` — the fitted model + the candidate portfolio + the training datasets'
  meta-features. ``recommend(meta_features, top_k, constraints)`` ranks every candidate. Saved with
  skops (an explicit allow-list of types; never pickle) and a JSON sidecar holding the format version
  and library versions; loading a model saved by another version is refused.

Both estimators pass ``sklearn.utils.estimator_checks`` (see tests/test_meta_model.py). The mixins
come before BaseEstimator (``RegressorMixin, BaseEstimator``): scikit-learn's own check of the MRO
requires that order.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from .portfolio import PIPELINE_SECTIONS, current_candidate
from .table import MF_PREFIX, PF_PREFIX, feature_columns, meta_feature_columns, numeric_meta_features, pipeline_features

_PIPELINE_PREFIXES = tuple(f"{PF_PREFIX}{section}." for section in PIPELINE_SECTIONS)

METHODS = ("hgb", "rf", "pairwise")


def _single_thread():
    """Meta-datasets are small: OpenMP threads cost far more than they give (tens of times slower on
    shared CPUs), so the boosted models fit and predict on one thread."""
    return threadpool_limits(limits=1, user_api="openmp")
class _MetaEstimatorMixin:
    """What both meta-estimators share: NaN inputs allowed (meta-features a dataset lacks) and a
    single-threaded ``fit(X, y, groups=None)`` that delegates to ``_fit``."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def fit(self, X, y, groups=None):
        with _single_thread():
            return self._fit(X, y, groups)


FORMAT_VERSION = 1
MODEL_FILE = "model.skops"
SIDECAR_FILE = "model.json"


# --------------------------------------------------------------------------- pairwise ranker
class PairwiseRanker(_MetaEstimatorMixin, RegressorMixin, BaseEstimator):
    """Pairwise ranking as a regressor.

    Pairs (a, b) of rows of the same group with different targets are drawn (all pairs, or
    ``max_pairs_per_group`` random ones); both orders are used (antisymmetric labels). With
    ``base="linear"`` a logistic regression without intercept on the standardised differences
    ``x_a - x_b`` gives a linear score ``w·x``. With ``base="gbm"`` a HistGradientBoostingClassifier
    sees ``[x_a - x_b, context]`` where the context is the rows' shared ``context_columns`` (the
    meta-features; default: the pair's mean), so it can learn which pipeline wins *on which kind of
    dataset*; a row is scored by its mean win probability against ``n_reference`` training rows (their
    context columns replaced by the row's own). ``calibrate`` fits target ≈ a·score + b (a > 0) on the
    training rows so predictions are on the target's scale; rankings are unchanged by it.

    ``groups`` is a fit parameter; without it all rows form one group.
    """

    def __init__(self, base: str = "gbm", max_pairs_per_group: int = 2000, n_reference: int = 32,
                 C: float = 1.0, n_estimators: int = 100, context_columns: Sequence[int] | None = None,
                 calibrate: bool = True, random_state: int | None = None):
        self.base = base
        self.max_pairs_per_group = max_pairs_per_group
        self.n_reference = n_reference
        self.C = C
        self.n_estimators = n_estimators
        self.context_columns = context_columns
        self.calibrate = calibrate
        self.random_state = random_state


    def _pairs(self, y: np.ndarray, groups: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
        a_all, b_all = [], []
        for g in np.unique(groups):
            idx = np.flatnonzero(groups == g)
            m = len(idx)
            if m < 2:
                continue
            if m * (m - 1) // 2 <= self.max_pairs_per_group:
                ia, ib = np.triu_indices(m, k=1)
            else:
                ia = rng.randint(0, m, size=self.max_pairs_per_group)
                ib = rng.randint(0, m, size=self.max_pairs_per_group)
            a, b = idx[ia], idx[ib]
            keep = y[a] != y[b]
            a_all.append(a[keep])
            b_all.append(b[keep])
        if not a_all:
            return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
        return np.concatenate(a_all), np.concatenate(b_all)

    def _ctx(self) -> np.ndarray | None:
        if self.context_columns is None or len(self.context_columns) == 0:
            return None
        ctx = np.asarray(self.context_columns, dtype=int)
        if ctx.min() < 0 or ctx.max() >= self.n_features_in_:
            raise ValueError(f"context_columns must index the {self.n_features_in_} features")
        return ctx

    def _pair_features(self, za: np.ndarray, zb: np.ndarray, ctx: np.ndarray | None) -> np.ndarray:
        diff = za - zb
        if self.base == "linear":
            return diff
        context = za[:, ctx] if ctx is not None else (za + zb) / 2.0
        return np.hstack([diff, context])


    def _fit(self, X, y, groups):
        X, y = validate_data(self, X, y, y_numeric=True, ensure_all_finite="allow-nan")
        y = y.astype(float)
        if self.base not in ("gbm", "linear"):
            raise ValueError(f"base must be 'gbm' or 'linear', got {self.base!r}")
        groups = np.zeros(len(y)) if groups is None else np.asarray(groups)
        if len(groups) != len(y):
            raise ValueError(f"groups has {len(groups)} entries for {len(y)} rows")
        rng = check_random_state(self.random_state)
        ctx = self._ctx()
        self.imputer_ = SimpleImputer(strategy="median", keep_empty_features=True).fit(X)
        self.scaler_ = StandardScaler().fit(self.imputer_.transform(X))
        Z = self.scaler_.transform(self.imputer_.transform(X))
        a, b = self._pairs(y, groups, rng)
        self.constant_ = float(np.mean(y))
        self.model_ = None
        if len(a):
            F = self._pair_features(Z[a], Z[b], ctx)
            F = np.vstack([F, self._pair_features(Z[b], Z[a], ctx)])
            labels = np.concatenate([(y[a] > y[b]), (y[b] > y[a])]).astype(int)
            if self.base == "linear":
                self.model_ = LogisticRegression(C=self.C, fit_intercept=False, max_iter=1000).fit(F, labels)
            else:
                self.model_ = HistGradientBoostingClassifier(
                    max_iter=self.n_estimators, learning_rate=0.1, max_leaf_nodes=15, early_stopping=False,
                    random_state=rng.randint(2**31 - 1)).fit(F, labels)
        n_ref = min(len(Z), max(1, self.n_reference))
        self.reference_ = Z[rng.choice(len(Z), size=n_ref, replace=False)]
        self.slope_, self.intercept_ = 0.0, self.constant_
        if self.model_ is not None and self.calibrate:
            raw = self._raw(Z)
            if np.std(raw) > 0:
                slope, intercept = np.polyfit(raw, y, 1)
                if not (np.isfinite(slope) and slope > 0):
                    slope = 1e-6 * (np.std(y) or 1.0) / np.std(raw)
                    intercept = self.constant_ - slope * np.mean(raw)
                self.slope_, self.intercept_ = float(slope), float(intercept)
        elif self.model_ is not None:
            self.slope_, self.intercept_ = 1.0, 0.0
        return self

    def _raw(self, Z: np.ndarray) -> np.ndarray:
        if self.base == "linear":
            return Z @ self.model_.coef_.ravel()
        ctx = self._ctx()
        R = self.reference_
        n, r = len(Z), len(R)
        za = np.repeat(Z, r, axis=0)
        zb = np.tile(R, (n, 1))
        if ctx is not None:
            zb[:, ctx] = za[:, ctx]
        p = self.model_.predict_proba(self._pair_features(za, zb, ctx))[:, 1]
        return p.reshape(n, r).mean(axis=1)

    def rank_score(self, X) -> np.ndarray:
        """The raw ranking score (mean win probability, or w·x)."""
        check_is_fitted(self, "constant_")
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        if self.model_ is None:
            return np.zeros(len(X))
        with _single_thread():
            return self._raw(self.scaler_.transform(self.imputer_.transform(X)))

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "constant_")
        raw = self.rank_score(X)
        if self.model_ is None:
            return np.full(len(raw), self.constant_)
        return self.slope_ * raw + self.intercept_


# --------------------------------------------------------------------------- the regressor
class PipelineScoreRegressor(_MetaEstimatorMixin, RegressorMixin, BaseEstimator):
    """Predicts a pipeline's normalised score from (pipeline features, meta-features).

    ``method``: ``"hgb"`` (``n_bags`` HistGradientBoostingRegressors on bootstrap samples; with
    ``n_bags=1`` one model on all rows), ``"rf"`` (RandomForestRegressor) or ``"pairwise"``
    (``n_bags`` :class:`PairwiseRanker` with different pair samples). NaN inputs are allowed (meta-
    features a dataset lacks). :meth:`predict_with_uncertainty` returns the mean and the spread (std)
    across bags / trees.
    """

    def __init__(self, method: str = "hgb", n_estimators: int = 200, learning_rate: float = 0.05,
                 max_leaf_nodes: int = 15, min_samples_leaf: int = 5, max_features: float = 0.5,
                 n_bags: int = 5, pairwise_base: str = "gbm", context_columns: Sequence[int] | None = None,
                 random_state: int | None = 0):
        self.method = method
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.n_bags = n_bags
        self.pairwise_base = pairwise_base
        self.context_columns = context_columns
        self.random_state = random_state



    def _fit(self, X, y, groups):
        X, y = validate_data(self, X, y, y_numeric=True, ensure_all_finite="allow-nan")
        y = y.astype(float)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.n_bags < 1:
            raise ValueError("n_bags must be >= 1")
        rng = check_random_state(self.random_state)
        n = len(y)
        # all-missing columns (e.g. an option no training pipeline sets) carry nothing, and the boosted
        # models' binning cannot handle them: they are read as 0
        self.empty_columns_ = np.flatnonzero(np.all(np.isnan(X), axis=0)) if n else np.zeros(0, dtype=int)
        X = self._fill_empty(X)
        self.estimators_ = []
        if self.method == "rf":
            rf = RandomForestRegressor(n_estimators=self.n_estimators, max_features=self.max_features,
                                       min_samples_leaf=1, random_state=rng.randint(2**31 - 1), n_jobs=1)
            self.estimators_.append(rf.fit(X, y))
            self.feature_importances_ = rf.feature_importances_
        elif self.method == "hgb":
            self.bag_empty_columns_ = []
            for b in range(self.n_bags):
                idx = rng.randint(0, n, size=n) if self.n_bags > 1 else np.arange(n)
                m = HistGradientBoostingRegressor(
                    max_iter=self.n_estimators, learning_rate=self.learning_rate,
                    max_leaf_nodes=self.max_leaf_nodes, min_samples_leaf=self.min_samples_leaf,
                    early_stopping=False, random_state=rng.randint(2**31 - 1))
                # a bootstrap sample can miss every row that sets a rare column: empty in this bag alone
                empty = np.flatnonzero(np.all(np.isnan(X[idx]), axis=0))
                self.bag_empty_columns_.append(empty)
                self.estimators_.append(m.fit(_zero_missing(X[idx], empty), y[idx]))
        else:
            for b in range(self.n_bags):
                m = PairwiseRanker(base=self.pairwise_base, n_estimators=self.n_estimators // 2 or 1,
                                   context_columns=self.context_columns,
                                   random_state=rng.randint(2**31 - 1))
                self.estimators_.append(m.fit(X, y, groups=groups))
        return self

    def _fill_empty(self, X: np.ndarray) -> np.ndarray:
        return _zero_missing(X, self.empty_columns_)

    def _all_predictions(self, X) -> np.ndarray:
        check_is_fitted(self, "estimators_")
        X = self._fill_empty(validate_data(self, X, reset=False, ensure_all_finite="allow-nan"))
        if self.method == "rf":
            rf = self.estimators_[0]
            return np.stack([t.predict(X) for t in rf.estimators_])
        per_bag = getattr(self, "bag_empty_columns_", None) or [np.zeros(0, dtype=int)] * len(self.estimators_)
        with _single_thread():
            return np.stack([m.predict(_zero_missing(X, empty)) for m, empty in zip(self.estimators_, per_bag)])

    def predict(self, X) -> np.ndarray:
        if self.method == "rf":
            check_is_fitted(self, "estimators_")
            X = self._fill_empty(validate_data(self, X, reset=False, ensure_all_finite="allow-nan"))
            return self.estimators_[0].predict(X)
        return self._all_predictions(X).mean(axis=0)

    def predict_with_uncertainty(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(mean prediction, std across the forest's trees or the bagged models)."""
        preds = self._all_predictions(X)
        return preds.mean(axis=0), preds.std(axis=0)


# --------------------------------------------------------------------------- recommender
@dataclass
class Recommendation:
    """A recommended KD pipeline: ``config`` holds only its :data:`~autodistill.meta.portfolio.PIPELINE_SECTIONS`,
    never the budget the meta-dataset ran it at; :func:`~autodistill.meta.portfolio.with_pipeline` puts
    it on the user's own config (their rows, length, teacher, student and epochs)."""
    rank: int
    candidate: str
    config: dict[str, Any]
    predicted_score: float
    uncertainty: float
    why: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelVersionError(RuntimeError):
    """A saved meta-model from another format or library version."""


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("autodistill", "scikit-learn", "skops", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


#: versions that must match for a saved model to load (the skops file holds scikit-learn objects)
_MUST_MATCH = ("scikit-learn",)

#: the only types (beyond skops' default-trusted ones) a model file may contain; kept in code, never
#: read from the file or its sidecar
TRUSTED_TYPES = (
    "autodistill.meta.model.PipelineScoreRegressor",
    "autodistill.meta.model.PairwiseRanker",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn._loss.loss.HalfSquaredError",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.Interval",
    "sklearn._loss._loss.CyHalfSquaredError",
    "sklearn._loss._loss.CyHalfBinomialLoss",
    "sklearn.tree._tree.Tree",
    "sklearn.utils._bunch.Bunch",
    "numpy.random._mt19937.MT19937",
    "numpy.random.mtrand.RandomState",
    "numpy.dtype",
    "builtins.slice",
)


def _scale_stats(mf: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    center = np.nanmean(mf.to_numpy(dtype=float), axis=0) if len(mf) else np.zeros(mf.shape[1])
    scale = np.nanstd(mf.to_numpy(dtype=float), axis=0) if len(mf) else np.ones(mf.shape[1])
    center = np.where(np.isfinite(center), center, 0.0)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return center, scale


def l1_distances(query: np.ndarray, refs: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """L1 distance on standardised meta-features; dimensions missing in either side are skipped and the
    sum is rescaled to all dimensions (so a missing feature neither helps nor hurts)."""
    q = (np.asarray(query, dtype=float) - center) / scale
    r = (np.asarray(refs, dtype=float) - center) / scale
    diff = np.abs(r - q)
    ok = np.isfinite(diff)
    n_ok = ok.sum(axis=1)
    total = np.where(ok, diff, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_ok > 0, total * diff.shape[1] / np.maximum(n_ok, 1), np.inf)


def _normalise_query(meta_features: Mapping[str, Any]) -> dict[str, float]:
    if meta_features and all(str(k).startswith(MF_PREFIX) for k in meta_features):
        return {k: float(v) if v is not None else float("nan") for k, v in meta_features.items()}
    return numeric_meta_features(meta_features)


def matches_constraints(config: Mapping[str, Any], constraints) -> bool:
    if constraints is None:
        return True
    if callable(constraints):
        return bool(constraints(config))
    for path, allowed in constraints.items():
        cur: Any = config
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, Mapping) else None
        allowed = allowed if isinstance(allowed, (list, tuple, set, frozenset)) else [allowed]
        if cur not in allowed:
            return False
    return True


class Recommender:
    """A fitted meta-model + candidate portfolio + training datasets' meta-features."""

    def __init__(self, model: PipelineScoreRegressor, feature_columns: list[str],
                 candidates: list[dict[str, Any]], datasets: dict[str, dict[str, float]],
                 importances: list[tuple[str, float]], target: str = "ratio",
                 best_by_dataset: dict[str, dict[str, Any]] | None = None, info: dict[str, Any] | None = None):
        self.model = model
        self.feature_columns = list(feature_columns)
        self.candidates = candidates  # [{"name", "config", "features": {pf_*: value}}]
        self.datasets = datasets      # {dataset: {mf_*: value}}
        self.importances = importances
        self.target = target
        self.best_by_dataset = best_by_dataset or {}
        self.info = info or {}
        self.mf_columns = [c for c in self.feature_columns if c.startswith(MF_PREFIX)]
        mf = pd.DataFrame([{c: v.get(c, np.nan) for c in self.mf_columns} for v in datasets.values()],
                          columns=self.mf_columns)
        self._center, self._scale = _scale_stats(mf)
        self._mf_matrix = mf.to_numpy(dtype=float)
        self._dataset_names = list(datasets)
        self._pf_matrix: np.ndarray | None = None
        self._mf_index: list[int] = []

    # ---------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, table: pd.DataFrame, method: str = "hgb", random_state: int = 0,
            model_params: Mapping[str, Any] | None = None, importance_rows: int = 400,
            info: Mapping[str, Any] | None = None, target: str | None = None) -> "Recommender":
        cols = feature_columns(table)
        mf_cols = meta_feature_columns(table)
        X = table[cols].to_numpy(dtype=float)
        y = table["target"].to_numpy(dtype=float)
        params = dict(model_params or {})
        if method == "pairwise":
            params.setdefault("context_columns", [cols.index(c) for c in mf_cols])
        model = PipelineScoreRegressor(method=method, random_state=random_state, **params)
        model.fit(X, y, groups=table["dataset"].to_numpy())
        importances = _importances(model, X, y, cols, importance_rows, random_state)
        candidates = []
        for name, rows in table.groupby("candidate", sort=True):
            first = rows.iloc[0]
            extra = first.get("extra", "") if hasattr(first, "get") else ""
            candidates.append({"name": str(name), "config": json.loads(first["config"]),
                               **({"extra": json.loads(extra)} if isinstance(extra, str) and extra else {}),
                               "features": {c: float(first[c]) for c in cols if c.startswith(PF_PREFIX)}})
        datasets, best = {}, {}
        for name, rows in table.groupby("dataset", sort=True):
            datasets[str(name)] = {c: float(rows.iloc[0][c]) for c in mf_cols}
            top = rows.loc[rows["target"].idxmax()]
            best[str(name)] = {"candidate": str(top["candidate"]), "target": float(top["target"])}
        target = target or table.attrs.get("target", "ratio")
        return cls(model, cols, candidates, datasets, importances, target=target, best_by_dataset=best,
                   info={"method": method, "n_rows": int(len(table)), "n_datasets": len(datasets),
                         "n_candidates": len(candidates), **(dict(info) if info else {})})

    # ---------------------------------------------------------------- recommending
    def nearest_datasets(self, meta_features: Mapping[str, Any], k: int = 3) -> list[dict[str, Any]]:
        q = _normalise_query(meta_features)
        qv = np.array([q.get(c, np.nan) for c in self.mf_columns], dtype=float)
        if not self._dataset_names:
            return []
        d = l1_distances(qv, self._mf_matrix, self._center, self._scale)
        order = np.argsort(d, kind="stable")[:k]
        return [{"dataset": self._dataset_names[i], "distance": round(float(d[i]), 4),
                 "its_best_candidate": self.best_by_dataset.get(self._dataset_names[i], {}).get("candidate")}
                for i in order]

    def candidate_matrix(self, meta_features: Mapping[str, Any], budget: Any = None) -> np.ndarray:
        """One row per candidate: its pipeline features, then the query dataset's meta-features. With
        ``budget`` (the user's config), the columns of the budget sections (data, teachers, student,
        optim) are the user's, for every candidate: a candidate is a pipeline, the budget is the
        request's (a meta-dataset built at several students learns how the budget changes the ranking)."""
        if self._pf_matrix is None:   # built once: the candidates' columns never change
            self._pf_matrix = np.array(
                [[cand["features"].get(c, np.nan) if c.startswith(PF_PREFIX) else np.nan
                  for c in self.feature_columns] for cand in self.candidates],
                dtype=float).reshape(len(self.candidates), len(self.feature_columns))
            self._mf_index = [i for i, c in enumerate(self.feature_columns) if not c.startswith(PF_PREFIX)]
        q = _normalise_query(meta_features)
        X = self._pf_matrix.copy()
        X[:, self._mf_index] = [q.get(self.feature_columns[i], np.nan) for i in self._mf_index]
        if budget is not None:
            theirs = pipeline_features(budget)
            for i, c in enumerate(self.feature_columns):
                if c in theirs and not c.startswith(_PIPELINE_PREFIXES):
                    X[:, i] = theirs[c]
        return X

    def recommend(self, meta_features: Mapping[str, Any], top_k: int = 5,
                  constraints: Mapping[str, Any] | Callable[[Mapping[str, Any]], bool] | None = None,
                  budget: Any = None) -> list[Recommendation]:
        """The ``top_k`` candidates by predicted score (best first).

        ``meta_features``: the dataset's meta-features (raw names, or ``mf_``-prefixed).
        ``budget``: the user's config (a :class:`~autodistill.config.PipelineConfig` or dict): its
        student, data and optimisation settings replace the meta-dataset's in the model's inputs.
        ``constraints``: a callable on the config dict, or ``{dotted.config.path: value or [values]}``
        (e.g. ``{"student.num_layers": 2}``); candidates that fail it are left out.
        """
        keep = [i for i, c in enumerate(self.candidates) if matches_constraints(c["config"], constraints)]
        if not keep:
            return []
        X = self.candidate_matrix(meta_features, budget)[keep]
        mean, std = self.model.predict_with_uncertainty(X)
        order = np.argsort(-mean, kind="stable")[:max(0, int(top_k))]
        nearest = self.nearest_datasets(meta_features, k=3)
        top_feats = self.importances[:5]
        out = []
        for rank, j in enumerate(order, start=1):
            cand = self.candidates[keep[j]]
            row = X[j]
            why = {
                "nearest_datasets": nearest,
                "top_features": [{"feature": f, "importance": round(float(imp), 5),
                                  "value": (None if not math.isfinite(row[self.feature_columns.index(f)])
                                            else float(row[self.feature_columns.index(f)]))}
                                 for f, imp in top_feats],
            }
            if cand.get("extra"):
                why["outside_the_config"] = cand["extra"]
            name, pipeline = current_candidate(cand["name"], cand["config"])
            out.append(Recommendation(rank=rank, candidate=name, config=pipeline,
                                      predicted_score=float(mean[j]), uncertainty=float(std[j]), why=why))
        return out

    # ---------------------------------------------------------------- persistence
    def save(self, folder: str | Path) -> Path:
        import skops.io as sio

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        sio.dump({"model": self.model}, folder / MODEL_FILE)
        sidecar = {
            "format_version": FORMAT_VERSION, "versions": library_versions(),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "target": self.target, "info": self.info, "feature_columns": self.feature_columns,
            "importances": [[f, float(v)] for f, v in self.importances],
            "candidates": self.candidates, "datasets": self.datasets, "best_by_dataset": self.best_by_dataset,
        }
        (folder / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=1, sort_keys=True, default=_nan_safe),
                                           encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Recommender":
        import skops.io as sio

        folder = Path(folder)
        side_path, model_path = folder / SIDECAR_FILE, folder / MODEL_FILE
        if not side_path.is_file() or not model_path.is_file():
            raise FileNotFoundError(f"no meta-model in {folder} (needs {SIDECAR_FILE} and {MODEL_FILE}); "
                                    "fit one with `autodistill meta fit --records ... --out DIR`")
        side = json.loads(side_path.read_text(encoding="utf-8"))
        check_versions(side, folder)
        untrusted = sio.get_untrusted_types(file=model_path)
        unknown = sorted(set(untrusted) - set(TRUSTED_TYPES))
        if unknown:
            raise ModelVersionError(f"{model_path} contains types this version does not trust: {unknown}; "
                                    "refusing to load it")
        model = sio.load(model_path, trusted=[t for t in untrusted if t in TRUSTED_TYPES])["model"]
        if not isinstance(model, PipelineScoreRegressor):
            raise ModelVersionError(f"{model_path} does not hold a PipelineScoreRegressor")
        return cls(model, side["feature_columns"], side["candidates"], side["datasets"],
                   [(f, float(v)) for f, v in side["importances"]], target=side.get("target", "ratio"),
                   best_by_dataset=side.get("best_by_dataset"), info=side.get("info"))


def check_versions(sidecar: Mapping[str, Any], where: Any = "") -> None:
    """Refuse a model saved with another format version or scikit-learn version (naming both)."""
    saved_fmt = sidecar.get("format_version")
    if saved_fmt != FORMAT_VERSION:
        raise ModelVersionError(
            f"meta-model {where} has format version {saved_fmt}, this autodistill reads format version "
            f"{FORMAT_VERSION}: refit it with `autodistill meta fit`")
    now = library_versions()
    saved = sidecar.get("versions") or {}
    for lib in _MUST_MATCH:
        if saved.get(lib) != now.get(lib):
            raise ModelVersionError(
                f"meta-model {where} was saved with {lib} {saved.get(lib)}, this environment has {lib} "
                f"{now.get(lib)}: refusing to load it; refit it with `autodistill meta fit`")


def _nan_safe(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _importances(model: PipelineScoreRegressor, X: np.ndarray, y: np.ndarray, cols: list[str],
                 max_rows: int, random_state: int) -> list[tuple[str, float]]:
    """The forest's impurity importances for ``rf``; permutation importance (on up to ``max_rows``
    training rows, non-constant columns only) otherwise. Sorted, largest first."""
    if model.method == "rf":
        imp = np.asarray(model.feature_importances_, dtype=float)
    else:
        rng = np.random.RandomState(random_state)
        idx = rng.choice(len(X), size=min(len(X), max_rows), replace=False)
        Xs, ys = X[idx], y[idx]
        base = np.mean((model.predict(Xs) - ys) ** 2)
        imp = np.zeros(X.shape[1])
        for j in range(X.shape[1]):
            col = Xs[:, j]
            if np.all(col == col[0]) or np.all(~np.isfinite(col)):
                continue
            Xp = Xs.copy()
            Xp[:, j] = col[rng.permutation(len(col))]
            imp[j] = np.mean((model.predict(Xp) - ys) ** 2) - base
    order = np.argsort(-imp, kind="stable")
    return [(cols[j], float(imp[j])) for j in order if imp[j] > 0]


def _zero_missing(X: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``X`` with the missing values of ``columns`` read as 0 (columns a model saw only missing: the
    boosted models' binning cannot handle an all-missing column)."""
    if not len(columns):
        return X
    X = X.copy()
    X[:, columns] = np.where(np.isnan(X[:, columns]), 0.0, X[:, columns])
    return X
