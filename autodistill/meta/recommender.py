"""The recommender: a fitted meta-model + the candidate portfolio + the training datasets' meta-features.

:class:`Recommender` ``.fit(table)`` fits a :class:`~autodistill.meta.model.PipelineScoreRegressor` on a
meta-dataset table; ``recommend(meta_features, top_k, constraints, budget)`` ranks every candidate
(:class:`Recommendation`, best first, with why: the nearest training datasets, the most important
features, and where the model extrapolates: a student or meta-features outside its training data);
``save`` / ``load`` go through :mod:`autodistill.meta.model_files`.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from ..config import PIPELINE_SECTIONS, deep_merge
from .columns import MF_PREFIX, PF_PREFIX, feature_columns, meta_feature_columns, numeric_meta_features, pipeline_features
from .distances import l1_distances, scale_stats
from .model import PipelineScoreRegressor
from .model_files import load_model, save_model
from .portfolio import adapt_for_task, current_candidate

_PIPELINE_PREFIXES = tuple(f"{PF_PREFIX}{section}." for section in PIPELINE_SECTIONS)


@dataclass
class Recommendation:
    """A recommended KD pipeline: ``config`` holds only its :data:`~autodistill.meta.portfolio.PIPELINE_SECTIONS`,
    never the budget the meta-dataset ran it at; :func:`~autodistill.meta.portfolio.with_pipeline` puts
    it on the user's own config (their rows, length, teacher, student and epochs)."""
    rank: int
    candidate: str
    config: dict[str, Any]
    predicted_score: float
    uncertainty: float | None       # the ensemble's spread (std); None for a single model, which has none
    why: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def extrapolation_text(outside: Mapping[str, Mapping[str, Any]], shown: int = 4) -> str:
    """A sentence on :meth:`Recommender.meta_features_outside_training`'s result."""
    items = [f"{name} {v['value']:.4g} (seen {v['seen'][0]:.4g} to {v['seen'][1]:.4g})"
             for name, v in list(outside.items())[:shown]]
    more = f" and {len(outside) - shown} more" if len(outside) > shown else ""
    count = "1 of this dataset's meta-features lies" if len(outside) == 1 else \
        f"{len(outside)} of this dataset's meta-features lie"
    return (f"{count} outside the range of the datasets the meta-model was fitted on: {', '.join(items)}{more}; "
            "its predictions there are extrapolation")


def extrapolation_notes(why: Mapping[str, Any]) -> list[str]:
    """The sentences a user is shown about where a recommendation's model extrapolates (its ``why``)."""
    notes = [why["student_outside_training"]] if why.get("student_outside_training") else []
    if why.get("meta_features_outside_training"):
        notes.append(extrapolation_text(why["meta_features_outside_training"]))
    return notes


def prediction_text(predicted: float, uncertainty: float | None, digits: int = 4) -> str:
    """A predicted score as shown to a user: with its spread only where the model has one."""
    return f"{predicted:.{digits}f}" + ("" if uncertainty is None else f" ± {uncertainty:.{digits}f}")


def _normalise_query(meta_features: Mapping[str, Any]) -> dict[str, float]:
    if meta_features and all(str(k).startswith(MF_PREFIX) for k in meta_features):
        return {k: float(v) if v is not None else float("nan") for k, v in meta_features.items()}
    return numeric_meta_features(meta_features)


def task_type_of(meta_features: Mapping[str, Any]) -> str:
    """"regression" or "classification", from the ``is_regression`` meta-feature (raw or ``mf_`` name)."""
    flag = meta_features.get("is_regression", meta_features.get(f"{MF_PREFIX}is_regression"))
    return "regression" if flag is not None and math.isfinite(float(flag)) and float(flag) > 0 else "classification"


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
        self._center, self._scale = scale_stats(mf)
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
                         "n_candidates": len(candidates), "students": _students_in(table),
                         **(dict(info) if info else {})})

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

    def meta_features_outside_training(self, meta_features: Mapping[str, Any], datasets: Iterable[str] | None = None,
                                       margin: float = 0.1) -> dict[str, dict[str, Any]]:
        """The dataset's meta-features outside the range of the datasets the meta-model was fitted on, each
        with its value and that range, most important first: there its predictions extrapolate (e.g. a dataset
        larger than any of the meta-dataset's, or ``--no-backbone``'s zero embedding features for a model
        fitted with them). ``datasets``: the training datasets whose range is shown (the service passes those
        the asking key may see; default all). A value counts when it lies more than ``margin`` x the range
        beyond it (a tree model is flat past its last split: a value just outside is read like the bound).
        Columns constant in training are skipped (the model cannot split on them), and so is a missing value
        (the model's default branch; nothing to compare)."""
        q = _normalise_query(meta_features)
        names = None if datasets is None else set(datasets)
        shown = [i for i, name in enumerate(self._dataset_names) if names is None or name in names]
        importance = {feature: rank for rank, (feature, _) in enumerate(self.importances)}
        out = {}
        for j, column in sorted(enumerate(self.mf_columns), key=lambda jc: importance.get(jc[1], len(importance))):
            every = self._mf_matrix[:, j][np.isfinite(self._mf_matrix[:, j])]
            seen = self._mf_matrix[shown, j][np.isfinite(self._mf_matrix[shown, j])]
            value = q.get(column, np.nan)
            slack = margin * (np.ptp(seen) if len(seen) else 0.0)
            if len(seen) and np.ptp(every) > 0 and np.isfinite(value) \
                    and not seen.min() - slack <= value <= seen.max() + slack:
                out[column.removeprefix(MF_PREFIX)] = {"value": float(value),
                                                       "seen": [float(seen.min()), float(seen.max())]}
        return out

    def student_outside_training(self, budget: Any) -> str | None:
        """A sentence when the student of ``budget`` (the user's config) is none of the students the
        meta-model was fitted on: its ranking is then what worked for those students, not measured for
        this one. None when it is one of them, or for a model saved before students were recorded."""
        seen = self.info.get("students")
        if not seen or budget is None:
            return None
        theirs = pipeline_features(budget)
        yours = {c: _plain(theirs.get(c)) for c in seen[0]}
        if any(_student_fields(yours) == _student_fields(student) for student in seen):
            return None
        return (f"the meta-model was fitted on runs with {' and '.join(map(describe_student, seen))} students; "
                f"yours ({describe_student(yours)}) is not among them, so the ranking is what worked for those")

    def recommend(self, meta_features: Mapping[str, Any], top_k: int = 5,
                  constraints: Mapping[str, Any] | Callable[[Mapping[str, Any]], bool] | None = None,
                  budget: Any = None) -> list[Recommendation]:
        """The ``top_k`` candidates by predicted score (best first).

        ``meta_features``: the dataset's meta-features (raw names, or ``mf_``-prefixed).
        ``budget``: the user's config (a :class:`~autodistill.config.PipelineConfig` or dict): its
        student, data and optimisation settings replace the meta-dataset's in the model's inputs.
        ``constraints``: a callable on the config dict, or ``{dotted.config.path: value or [values]}``
        (e.g. ``{"student.num_layers": 2}``), checked on the candidate as it runs on the dataset's task;
        candidates that fail it are left out, and so are those that do not apply to the task
        (``is_regression``: see :func:`~.portfolio.adapt_for_task`); the others are returned as they run
        there (on regression, a KL/soft-CE prediction loss becomes MSE).
        """
        task_type = task_type_of(meta_features)
        pipelines = {}
        for i, c in enumerate(self.candidates):
            name, pipeline = current_candidate(c["name"], c["config"])
            adapted = adapt_for_task(pipeline, task_type)
            if adapted is not None and matches_constraints(deep_merge(c["config"], adapted), constraints):
                pipelines[i] = (name, adapted)
        keep = list(pipelines)
        if not keep:
            return []
        X = self.candidate_matrix(meta_features, budget)[keep]
        mean, std = self.model.predict_with_uncertainty(X)
        order = np.argsort(-mean, kind="stable")[:max(0, int(top_k))]
        nearest = self.nearest_datasets(meta_features, k=3)
        top_feats = self.importances[:5]
        outside = self.student_outside_training(budget)
        extrapolated = self.meta_features_outside_training(meta_features)
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
            if outside:
                why["student_outside_training"] = outside
            if extrapolated:
                why["meta_features_outside_training"] = extrapolated
            name, pipeline = pipelines[keep[j]]
            out.append(Recommendation(rank=rank, candidate=name, config=pipeline,
                                      predicted_score=float(mean[j]),
                                      uncertainty=float(std[j]) if math.isfinite(std[j]) else None, why=why))
        return out

    # ---------------------------------------------------------------- persistence
    def save(self, folder: str | Path) -> Path:
        return save_model(folder, self.model, {
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "target": self.target, "info": self.info, "feature_columns": self.feature_columns,
            "importances": [[f, float(v)] for f, v in self.importances],
            "candidates": self.candidates, "datasets": self.datasets, "best_by_dataset": self.best_by_dataset,
        })

    @classmethod
    def load(cls, folder: str | Path) -> "Recommender":
        model, side = load_model(folder)
        return cls(model, side["feature_columns"], side["candidates"], side["datasets"],
                   [(f, float(v)) for f, v in side["importances"]], target=side.get("target", "ratio"),
                   best_by_dataset=side.get("best_by_dataset"), info=side.get("info"))


_STUDENT_PREFIX = f"{PF_PREFIX}student."


def _plain(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _students_in(table: pd.DataFrame) -> list[dict[str, float | None]]:
    """The distinct students of a meta-dataset table, as their ``pf_student.*`` columns."""
    cols = sorted(c for c in table.columns if c.startswith(_STUDENT_PREFIX))
    if not cols:
        return []
    rows = table[cols].astype(float).drop_duplicates()
    return [{c: _plain(v) for c, v in row.items()} for _, row in rows.iterrows()]


#: the fields that make a student of each kind (a cut student's width is the teacher's; a fresh one has no
#: layer selection)
_STUDENT_FIELDS = {"truncated": ("num_layers", "layer_selection"),
                   "fresh": ("num_layers", "hidden_size", "num_attention_heads", "intermediate_size")}


def _student_fields(student: Mapping[str, float | None]) -> dict[str, Any]:
    """A student's kind and the fields that matter for it, from its ``pf_student.*`` columns."""
    def option(field: str) -> str | None:
        return next((c.split("=", 1)[1] for c, v in student.items()
                     if c.startswith(f"{_STUDENT_PREFIX}{field}=") and v), None)
    kind = option("kind") or "?"
    out: dict[str, Any] = {"kind": kind}
    for name in _STUDENT_FIELDS.get(kind, ()):
        out[name] = option(name) if name == "layer_selection" else student.get(f"{_STUDENT_PREFIX}{name}")
    return out


def describe_student(student: Mapping[str, float | None]) -> str:
    """``pf_student.*`` columns in words, e.g. 'fresh 4-layer hidden-128 4-head ffn-512' or
    'truncated 2-layer (uniform layers)'."""
    f = _student_fields(student)
    words = [f["kind"]]
    if f.get("num_layers"):
        words.append(f"{f['num_layers']:.0f}-layer")
    for key, label in (("hidden_size", "hidden-{:.0f}"), ("num_attention_heads", "{:.0f}-head"),
                       ("intermediate_size", "ffn-{:.0f}")):
        if f.get(key):
            words.append(label.format(f[key]))
    if f.get("layer_selection"):
        words.append(f"({f['layer_selection']} layers)")
    return " ".join(words)


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
