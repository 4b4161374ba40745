"""The meta-model's estimators: predict a candidate pipeline's normalised score on a dataset.

- :class:`PipelineScoreRegressor` — a scikit-learn regressor on (pipeline features, meta-features):
  ``method="hgb"`` (HistGradientBoostingRegressor; with ``n_bags > 1`` a bagged ensemble whose spread
  across the bags is the uncertainty; the product's plain model is one, with none), ``"rf"``
  (RandomForestRegressor: spread across the trees) or ``"pairwise"`` (a bag of :class:`PairwiseRanker`). ``fit(X, y, groups=None)``: ``groups`` (the
  dataset of each row) matters only to the pairwise formulation.
- :class:`PairwiseRanker` — learns P(row a beats row b) from pairs of rows of the same group (dataset)
  and scores a row by its mean win probability against a fixed reference set of training rows
  (Borda count), or by a linear ranker's w·x; a monotone linear map fitted on the training rows puts the
  score back on the target's scale.

The recommender built on them is :class:`autodistill.meta.recommender.Recommender`; saved models name
these classes by this module's path (:data:`autodistill.meta.model_files.TRUSTED_TYPES`), so they live
here. Both estimators pass ``sklearn.utils.estimator_checks`` (see tests/test_meta_model.py). The mixins
come before BaseEstimator (``RegressorMixin, BaseEstimator``): scikit-learn's own check of the MRO
requires that order.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

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
    across bags / trees (NaN for a single model).
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
                m = PairwiseRanker(base=self.pairwise_base, n_estimators=self.n_estimators,
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
        """(mean prediction, std across the forest's trees or the bagged models); the std is NaN for a single
        model (``n_bags=1``): one model has no spread, and 0 would claim a certainty nobody measured."""
        preds = self._all_predictions(X)
        if len(preds) < 2:
            return preds.mean(axis=0), np.full(preds.shape[1], np.nan)
        return preds.mean(axis=0), preds.std(axis=0)


def _zero_missing(X: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``X`` with the missing values of ``columns`` read as 0 (columns a model saw only missing: the
    boosted models' binning cannot handle an all-missing column)."""
    if not len(columns):
        return X
    X = X.copy()
    X[:, columns] = np.where(np.isnan(X[:, columns]), 0.0, X[:, columns])
    return X
