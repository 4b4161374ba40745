"""Fitting the meta-model: one function, :func:`fit_meta_model`, behind ``autodistill meta fit`` and the
REST service's refit, so that both follow the same rules and give the same model on the same records:

- the table is read from the records by :func:`meta_model_table`, without the trained-teacher
  meta-features unless asked for (a recommendation is made before any teacher is trained);
- the modelling choice is :data:`PRODUCT_METHOD`, ``plain``: one gradient-boosting model, no bagging, on
  every feature (:data:`~autodistill.meta.evaluate.PLAIN_HGB`); or the one the nested selection makes on
  the records (``method="auto"``: family, ensemble size, feature set and leave-out rule chosen by the
  grouped CV that `meta evaluate` runs inside each fold); or one family with its default parameters.
  Why plain: on both meta-datasets evaluated so far the fixed unbagged model beat the nested selection
  (OLD PRESET records: top-1 regret 0.0093 vs 0.0182; the Distiller paper's runs: 0.0310 vs 0.1241;
  with 7-14 training datasets the inner CV picks noisily). Chosen after seeing those two evaluations,
  so they are spent for this choice; the v2 evaluation (``meta_dataset/v2/preregistration.md``) is its test;
- datasets whose teacher is no better than the majority class are left out of the training rows (their
  targets are noise around chance), unless ``keep_uninformative`` or the selection chose to keep them.

:data:`DEFAULT_MODEL_DIR` is the committed meta-model (``meta_dataset/model``), the one `recommend`,
`auto` and the service use when no other is given.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from . import META_DATASET_DIR
from .evaluate import PLAIN_HGB, ModelChoice, default_choices, default_model_params, drop_meta_features, select_choice
from .model import METHODS
from .recommender import Recommender
from .table import table_from_paths

DEFAULT_MODEL_DIR = META_DATASET_DIR / "model"
CHECKOUT_DIR = META_DATASET_DIR.parent


def sidecar_record_path(path: str | Path) -> str:
    """A records path as a model's sidecar keeps it: relative to the checkout when inside it (the committed
    model travels with the repository), else absolute - never relative to the working folder of ``meta fit``."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(CHECKOUT_DIR))
    except ValueError:
        return str(resolved)


def record_path_from_sidecar(name: str | Path) -> Path:
    """The inverse of :func:`sidecar_record_path`."""
    path = Path(name)
    return path if path.is_absolute() else CHECKOUT_DIR / path

#: the product's meta-model (module docstring): what `meta fit`, `meta evaluate` and the service's refit use
PRODUCT_METHOD = "plain"
FIT_METHODS = ("plain", "auto", *METHODS)


def meta_model_table(records: str | Path | Iterable[str | Path], *, target: str = "ratio",
                     features_dir: str | Path | None = None, teacher_features: bool = False) -> pd.DataFrame:
    """The table of the record files/folders ``records`` (per-dataset meta-features found next to them,
    or in ``features_dir``). Uninformative datasets stay in it: whether a model trains on them is one of
    its choices, and an evaluation never holds them out."""
    table = table_from_paths(records, target=target, features_dir=features_dir)
    return table if teacher_features else drop_meta_features(table)


def model_choices(methods: Sequence[str] = METHODS, keep_uninformative: bool = False) -> list[ModelChoice]:
    """The choices the nested selection may make (only those that keep the uninformative datasets with
    ``keep_uninformative``)."""
    choices = default_choices(methods)
    return [c for c in choices if not c.drop_uninformative] if keep_uninformative else choices


@dataclass
class FittedMetaModel:
    recommender: Recommender
    choice: ModelChoice
    rows: pd.DataFrame                    # the rows it was fitted on
    left_out_uninformative: list[str]     # datasets of the table left out of them
    inner_cv: pd.Series | None = None     # each choice's inner-CV regret@1 (the selection's, method="auto")


def fit_meta_model(table: pd.DataFrame, *, method: str = PRODUCT_METHOD, methods: Sequence[str] = METHODS,
                   keep_uninformative: bool = False, inner_folds: int | None = None, seed: int = 0,
                   target: str = "ratio", info: Mapping[str, Any] | None = None) -> FittedMetaModel:
    """The meta-model of ``table`` (from :func:`meta_model_table`), by the rules of the module docstring.

    ``method``: ``plain`` (one unbagged gradient-boosting model), ``auto`` (the nested selection among
    ``methods``' choices; one dataset only: ``hgb``) or one of ``hgb``, ``rf``, ``pairwise`` with its
    default parameters. ``inner_folds``: the selection's
    grouped folds (None: leave-one-dataset-group-out). ``seed``: the selection's and the model's.
    ``info`` is stored with the model, with the choice and the datasets left out. Raises ValueError when
    no row is left to fit on."""
    if method not in FIT_METHODS:
        raise ValueError(f"method must be one of {FIT_METHODS}, got {method!r}")
    if table.empty:
        raise ValueError("no usable records")
    info = {"target": target, **(info or {})}
    inner = None
    if method == "auto" and table["dataset"].nunique() >= 2:
        choice, inner = select_choice(table, model_choices(methods, keep_uninformative), inner_folds=inner_folds,
                                      random_state=seed)
        info["inner_cv_regret1"] = inner.to_dict()
    elif method == "plain":
        choice = replace(PLAIN_HGB, drop_uninformative=not keep_uninformative)
    else:
        family = "hgb" if method == "auto" else method
        choice = ModelChoice(family, tuple(sorted(default_model_params(family).items())), not keep_uninformative)
    rows = choice.fit_rows(table)
    if rows.empty:
        raise ValueError("no usable records: every dataset's teacher is no better than the majority class")
    left_out = sorted(set(table["dataset"]) - set(rows["dataset"]))
    info.update(choice=choice.label, left_out_uninformative=left_out)
    recommender = Recommender.fit(rows, method=choice.method, random_state=seed, model_params=dict(choice.params),
                                  info=info, target=target)
    return FittedMetaModel(recommender, choice, rows, left_out, inner)
