"""What the meta-model sees of a run: its ``pf_*`` columns (the pipeline) and ``mf_*`` columns (the
dataset), and which of them a model may use.

Pipeline features (``pipeline_feature_columns()``) are derived from the pydantic model
:class:`autodistill.config.PipelineConfig` by walking its fields, so a new option shows up as a new
column without touching this file:

- a ``Literal`` field gives one 0/1 column per option: ``pf_<path>=<option>``;
- a ``bool`` gives 0/1, an ``int``/``float`` gives its value (``None`` -> NaN);
  fields named ``*learning_rate`` are log10-transformed;
- ``augmentation.augmenters`` (an ordered list) gives, for each augmenter name of
  ``AugmenterConfig.name``: ``.present`` (0/1), ``.p`` (0 when absent) and ``.position`` (1 = first,
  0 = unused; Distiller's encoding);
- ``teachers`` gives ``pf_teachers.count``;
- free strings, lists of pairs and tuples are skipped, and so are the fields in
  :data:`EXCLUDED_FIELDS` (bookkeeping that does not change what is learned: seeds, devices, eval
  batch size, where and how the data is read).

Meta-features (``numeric_meta_features``) are a meta-feature dict's numbers and booleans (0/1), nested
dicts flattened with ``.``; strings and bookkeeping keys (:data:`NON_FEATURE_KEYS`) are dropped.
"""
from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal, Mapping

import numpy as np
import pandas as pd
from pydantic import BaseModel

from ..config import AugmenterConfig, PipelineConfig
from ..records import as_float

PF_PREFIX = "pf_"
MF_PREFIX = "mf_"

#: config fields (dotted paths) that are bookkeeping, not part of what a pipeline learns
EXCLUDED_FIELDS = frozenset({
    "data.train", "data.validation", "data.format", "data.hf_train_split", "data.hf_validation_split",
    "data.text_column", "data.text_a_column", "data.text_b_column", "data.label_column", "data.task",
    "data.validation_fraction", "data.split_seed", "data.max_file_mb", "data.bad_rows",
    "optim.eval_batch_size", "optim.seed", "optim.metric", "optim.teacher_outputs", "optim.device",
    # the training rule (config.TrainingRule): how long a run trains, the same for every run of a build
    "data.dev_fraction", "data.dev_max_examples", "data.dev_split", "optim.early_stopping_patience",
    "optim.early_stopping_min_delta", "optim.early_stopping_start", "optim.max_steps", "optim.max_steps_between_evals",
    "optim.evaluate_per",
    # how the rows were capped, not how many: the rows trained on are the meta-features' (log_n_train, computed
    # on exactly those rows); a user's budget leaves the cap unset (None), which the model never saw in training
    "data.max_train_examples",
})
#: keys of a features file that are bookkeeping, not features
NON_FEATURE_KEYS = frozenset({"version", "feature_version", "features_version", "schema_version",
                              "seconds", "wall_seconds", "compute_seconds", "seed"})


# --------------------------------------------------------------------------- pipeline features
def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _walk(model: type[BaseModel], prefix: str) -> list[tuple[str, str, Any]]:
    """(dotted path, kind, extra) for every leaf that becomes features."""
    out: list[tuple[str, str, Any]] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        if path in EXCLUDED_FIELDS:
            continue
        tp = _strip_optional(field.annotation)
        origin = typing.get_origin(tp)
        if path == "augmentation.augmenters":
            out.append((path, "augmenters", typing.get_args(AugmenterConfig.model_fields["name"].annotation)))
        elif path == "teachers":
            out.append((path, "count", None))
        elif origin is Literal:
            out.append((path, "onehot", typing.get_args(tp)))
        elif tp is bool:
            out.append((path, "bool", None))
        elif tp in (int, float):
            out.append((path, "log10" if name.endswith("learning_rate") else "num", None))
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            out.extend(_walk(tp, path + "."))
        # free strings, tuples and lists of pairs: not features
    return out


_SCHEMA: list[tuple[str, str, Any]] | None = None


def _schema() -> list[tuple[str, str, Any]]:
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = _walk(PipelineConfig, "")
    return _SCHEMA


def pipeline_feature_columns() -> list[str]:
    """The fixed, ordered list of ``pf_*`` columns (derived from PipelineConfig)."""
    cols: list[str] = []
    for path, kind, extra in _schema():
        if kind == "onehot":
            cols += [f"{PF_PREFIX}{path}={opt}" for opt in extra]
        elif kind == "augmenters":
            for aug in extra:
                cols += [f"{PF_PREFIX}{path}.{aug}.{k}" for k in ("present", "p", "position")]
        elif kind == "count":
            cols.append(f"{PF_PREFIX}{path}.count")
        else:
            cols.append(f"{PF_PREFIX}{path}")
    return cols


def _get(data: Mapping[str, Any], path: str) -> Any:
    cur: Any = data
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur



def pipeline_features(config: PipelineConfig | Mapping[str, Any]) -> dict[str, float]:
    """The ``pf_*`` features of one config (validated through PipelineConfig, so defaults are filled)."""
    cfg = config if isinstance(config, PipelineConfig) else PipelineConfig.model_validate(dict(config))
    data = cfg.to_dict()
    out: dict[str, float] = {}
    for path, kind, extra in _schema():
        value = _get(data, path)
        if kind == "onehot":
            for opt in extra:
                out[f"{PF_PREFIX}{path}={opt}"] = 1.0 if value == opt else 0.0
        elif kind == "augmenters":
            augs = value or []
            for aug in extra:
                pos = next((i + 1 for i, a in enumerate(augs) if a.get("name") == aug), 0)
                out[f"{PF_PREFIX}{path}.{aug}.present"] = 1.0 if pos else 0.0
                out[f"{PF_PREFIX}{path}.{aug}.p"] = float(augs[pos - 1].get("p", 0.0)) if pos else 0.0
                out[f"{PF_PREFIX}{path}.{aug}.position"] = float(pos)
        elif kind == "count":
            out[f"{PF_PREFIX}{path}.count"] = float(len(value or []))
        elif kind == "bool":
            out[f"{PF_PREFIX}{path}"] = 1.0 if value else 0.0
        elif kind == "log10":
            v = as_float(value)
            out[f"{PF_PREFIX}{path}"] = math.log10(v) if v > 0 else float("nan")
        else:
            out[f"{PF_PREFIX}{path}"] = as_float(value)
    return out


def canonical_config(config: PipelineConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The full config dict without where the data lives (the same view the config hash uses)."""
    cfg = config if isinstance(config, PipelineConfig) else PipelineConfig.model_validate(dict(config))
    data = cfg.to_dict()
    data["data"] = {k: v for k, v in data["data"].items() if k not in ("train", "validation")}
    return data


# --------------------------------------------------------------------------- meta-features
def numeric_meta_features(features: Mapping[str, Any] | None) -> dict[str, float]:
    """``mf_*`` columns: numbers and booleans of a meta-feature dict (nested dicts flattened)."""
    out: dict[str, float] = {}

    def visit(d: Mapping[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if not prefix and k in NON_FEATURE_KEYS:
                continue
            key = f"{prefix}{k}"
            if isinstance(v, Mapping):
                visit(v, key + ".")
            elif isinstance(v, (bool, np.bool_)):
                out[MF_PREFIX + key] = 1.0 if v else 0.0
            elif isinstance(v, (int, float, np.integer, np.floating)) or v is None:
                f = as_float(v)
                out[MF_PREFIX + key] = f if math.isfinite(f) else float("nan")
    visit(features or {}, "")
    return out


def feature_columns(table: pd.DataFrame) -> list[str]:
    """Model inputs of a table: its ``pf_*`` then ``mf_*`` columns, in table order."""
    return [c for c in table.columns if c.startswith(PF_PREFIX)] + \
        [c for c in table.columns if c.startswith(MF_PREFIX)]


def meta_feature_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith(MF_PREFIX)]


#: meta-features that the records themselves state about their dataset (``extra_features`` that are one
#: value per dataset, e.g. the Distiller paper's ``#example`` and ``baseline_score``), not computed by us
STATED_PREFIX = MF_PREFIX + "extra."
#: which meta-features a model may use: ``all``, or only the ``stated`` ones (plus every pipeline feature)
FEATURE_SETS = ("all", "stated")


def stated_meta_feature_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith(STATED_PREFIX)]


def restrict_features(table: pd.DataFrame, feature_set: str) -> pd.DataFrame:
    """``table`` without the meta-feature columns outside ``feature_set`` (:data:`FEATURE_SETS`)."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"feature set must be one of {FEATURE_SETS}, got {feature_set!r}")
    if feature_set == "all":
        return table
    keep = set(stated_meta_feature_columns(table))
    out = table.drop(columns=[c for c in meta_feature_columns(table) if c not in keep])
    out.attrs.update(table.attrs)
    return out

