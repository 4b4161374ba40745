"""Meta-dataset records -> one tabular row per (dataset, candidate pipeline).

``records_to_table(records)`` turns run records (the format of :mod:`autodistill.search.records`, as
written by the search and by ``autodistill meta build`` / ``import-distiller``) into a
:class:`pandas.DataFrame` with

- ``dataset``: the context's name (see :func:`record_dataset_name` for where it is looked up): a dataset,
  or one dataset at one train size;
- ``group``: the dataset the context belongs to (:func:`record_group`; held out together);
- ``candidate``: the candidate's portfolio name when the record carries one, else ``cfg-<hash>`` of
  the canonical config (:func:`autodistill.search.records.canonical_config_hash`);
- ``fingerprint``, ``config`` (canonical JSON of the full PipelineConfig), ``extra`` (JSON of the
  record's ``extra_features``: choices outside PipelineConfig such as the Distiller import's teacher
  and student; they are part of the candidate's name and give ``pf_extra.*`` columns: numbers as
  they are, strings one-hot), ``score`` (student score),
  ``teacher_score``, ``majority_baseline`` (the score of always predicting the training set's most
  frequent class, as the run measured it; NaN when a record does not say, e.g. regression or the
  Distiller import), ``n_runs`` (records averaged into the row: seeds / repeats);
- ``pf_*``: the pipeline features (below);
- ``mf_*``: the dataset's numeric meta-features (booleans as 0/1; strings dropped; nested dicts
  flattened with ``.``). A per-dataset features file (``meta_dataset/features/<dataset>.json``)
  wins over the meta-features stored inside the records;
- ``target``: the normalised score. ``target="ratio"`` (default): student score / teacher score (a
  a ratio the record states (``target.ratio``, ``metrics.ratio``/``score_ratio``) wins); ``target="best"``:
  student score / the best student score on that dataset.

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
"""
from __future__ import annotations

import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel

from ..config import AugmenterConfig, PipelineConfig
from ..search.records import canonical_config_hash

PF_PREFIX = "pf_"
MF_PREFIX = "mf_"
TARGETS = ("ratio", "best")
ID_COLUMNS = ("dataset", "group", "candidate", "fingerprint", "config", "score", "teacher_score", "majority_baseline",
              "n_runs", "target")

#: config fields (dotted paths) that are bookkeeping, not part of what a pipeline learns
EXCLUDED_FIELDS = frozenset({
    "data.train", "data.validation", "data.format", "data.hf_train_split", "data.hf_validation_split",
    "data.text_column", "data.text_a_column", "data.text_b_column", "data.label_column", "data.task",
    "data.validation_fraction", "data.split_seed", "data.max_file_mb", "data.bad_rows",
    "optim.eval_batch_size", "optim.seed", "optim.metric", "optim.teacher_outputs", "optim.device",
    # the training rule (config.TrainingRule): how long a run trains, the same for every run of a build
    "data.dev_fraction", "data.dev_max_examples", "optim.early_stopping_patience",
    "optim.early_stopping_min_delta", "optim.max_steps", "optim.max_steps_between_evals",
})
#: statuses of records that are not a finished run at the common budget
SKIPPED_STATUSES = frozenset({"failed", "error", "stopped_early", "pruned", "interrupted", "running"})
#: candidate names / roles that are references, never recommendable candidates
REFERENCE_ROLES = frozenset({"teacher", "reference_teacher"})
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


def _num(value: Any) -> float:
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


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
            v = _num(value)
            out[f"{PF_PREFIX}{path}"] = math.log10(v) if v > 0 else float("nan")
        else:
            out[f"{PF_PREFIX}{path}"] = _num(value)
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
                f = _num(v)
                out[MF_PREFIX + key] = f if math.isfinite(f) else float("nan")
    visit(features or {}, "")
    return out


def _unwrap_features(data: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in ("features", "meta_features"):
        if isinstance(data.get(key), Mapping):
            return data[key]
    return data


# --------------------------------------------------------------------------- record accessors
def _sub(rec: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = rec.get(key)
    return v if isinstance(v, Mapping) else {}


def record_dataset_name(rec: Mapping[str, Any]) -> str:
    """``dataset`` / ``dataset_name`` at the top level, in ``search``, ``extra``, ``params`` or
    ``meta_features``; else the records file's stem (``_source``, set by :func:`load_records`);
    else the dataset fingerprint."""
    for key in ("dataset", "dataset_name"):
        if rec.get(key):
            return str(rec[key])
    for sub in ("search", "extra", "params", "meta_features"):
        for key in ("dataset", "dataset_name"):
            if _sub(rec, sub).get(key):
                return str(_sub(rec, sub)[key])
    if rec.get("_source"):
        return str(rec["_source"])
    return str(rec.get("dataset_fingerprint", "unknown"))


def record_group(rec: Mapping[str, Any]) -> str:
    """The dataset a context belongs to: ``dataset_group`` (the build's ``<dataset>@n<rows>`` contexts
    of one dataset at several train sizes share it), else the context's own name. Leave-one-dataset-out
    holds out a whole group."""
    return str(rec.get("dataset_group") or record_dataset_name(rec))


def record_extra_features(rec: Mapping[str, Any]) -> dict[str, Any]:
    """Pipeline choices outside PipelineConfig that a record states in ``extra_features`` (e.g. the
    Distiller import's teacher and student models, ``aug_p``): part of the candidate's identity."""
    extra = rec.get("extra_features")
    return dict(extra) if isinstance(extra, Mapping) else {}


def _extra_columns(extra: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in sorted(extra.items()):
        if isinstance(v, bool):
            out[f"{PF_PREFIX}extra.{k}"] = float(v)
        elif isinstance(v, (int, float)) or v is None:
            out[f"{PF_PREFIX}extra.{k}"] = _num(v)
        else:
            out[f"{PF_PREFIX}extra.{k}={v}"] = 1.0
    return out


def _dataset_level_extras(records: Sequence[Mapping[str, Any]]) -> set[str]:
    """``extra_features`` keys whose value is one per dataset and differs between datasets (e.g. the
    Distiller import's task name, #examples): dataset facts. Numeric ones become ``mf_extra.*``
    meta-features, strings (dataset names) are dropped; neither names a candidate."""
    values: dict[str, dict[str, set[str]]] = {}
    for r in records:
        ds = record_dataset_name(r)
        for k, v in record_extra_features(r).items():
            values.setdefault(k, {}).setdefault(ds, set()).add(json.dumps(v, default=str))
    out = set()
    for k, per_ds in values.items():
        if len(per_ds) >= 2 and all(len(v) == 1 for v in per_ds.values()) \
                and len(set().union(*per_ds.values())) > 1:
            out.add(k)
    return out


def record_candidate_name(rec: Mapping[str, Any]) -> str:
    for key in ("candidate", "candidate_name", "pipeline"):
        if isinstance(rec.get(key), str) and rec[key]:
            return rec[key]
        for sub in ("search", "extra", "params"):
            if isinstance(_sub(rec, sub).get(key), str) and _sub(rec, sub)[key]:
                return _sub(rec, sub)[key]
    h = rec.get("config_hash") or canonical_config_hash(rec["config"])
    extra = record_extra_features(rec)
    if extra:
        import hashlib
        tag = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode()).hexdigest()[:6]
        return f"cfg-{str(h)[:12]}+{tag}"
    return f"cfg-{str(h)[:12]}"


def record_role(rec: Mapping[str, Any]) -> str | None:
    for src in (rec, _sub(rec, "search"), _sub(rec, "extra")):
        if src.get("role"):
            return str(src["role"])
    return None


def record_student_score(rec: Mapping[str, Any]) -> float:
    m = _sub(rec, "metrics")
    for key in ("student_score", "score"):
        if m.get(key) is not None:
            return _num(m[key])
    return _num(rec.get("score"))


def record_teacher_score(rec: Mapping[str, Any]) -> float:
    if rec.get("teacher_score") is not None:
        return _num(rec["teacher_score"])
    return _num(_sub(rec, "metrics").get("teacher_score"))


def record_majority_baseline(rec: Mapping[str, Any]) -> float:
    for src in (_sub(rec, "target"), _sub(rec, "metrics")):
        if src.get("majority_baseline") is not None:
            return _num(src["majority_baseline"])
    return float("nan")


def record_ratio(rec: Mapping[str, Any]) -> float:
    """A ratio the record states (``target.ratio``, ``metrics.ratio`` / ``score_ratio``: e.g. the
    Distiller paper's own), else student score / teacher score."""
    for src in (_sub(rec, "target"), _sub(rec, "metrics"), rec):
        for key in ("ratio", "score_ratio"):
            if isinstance(src.get(key), (int, float)) and math.isfinite(float(src[key])):
                return float(src[key])
    s, t = record_student_score(rec), record_teacher_score(rec)
    if math.isfinite(s) and math.isfinite(t) and t > 0:
        return s / t
    return float("nan")


# --------------------------------------------------------------------------- loading
def load_records(paths: str | Path | Iterable[str | Path]) -> list[dict[str, Any]]:
    """Read JSONL record files; a folder means every ``*.jsonl`` below it (sorted). Each record gets
    ``_source`` = its file's stem (the dataset name for ``meta_dataset/runs/<dataset>.jsonl``)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.rglob("*.jsonl"))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"records not found: {p}")
    out: list[dict[str, Any]] = []
    for f in files:
        stem = f.stem if f.stem != "records" else f.parent.name
        for line in f.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line
            if isinstance(rec, dict) and "config" in rec:
                rec.setdefault("_source", stem)
                out.append(rec)
    return out


def find_feature_files(paths: str | Path | Iterable[str | Path]) -> dict[str, dict[str, Any]]:
    """Per-dataset meta-feature files near the records: ``features/<dataset>.json`` in the nearest of
    a given folder (or a file's folder) and its parent."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: dict[str, dict[str, Any]] = {}
    seen: set[Path] = set()
    for p in map(Path, paths):
        base = p if p.is_dir() else p.parent
        nearest = next((c.resolve() for c in (base / "features", base.parent / "features") if c.is_dir()), None)
        if nearest is not None and nearest not in seen:
            seen.add(nearest)
            out.update(load_feature_dir(nearest))
    return out


def load_feature_dir(folder: str | Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for f in sorted(Path(folder).glob("*.json")):
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            out[f.stem] = dict(_unwrap_features(data))
    return out


# --------------------------------------------------------------------------- the table
def records_to_table(records: Sequence[Mapping[str, Any]], *, target: str = "ratio",
                     features: Mapping[str, Mapping[str, Any]] | None = None,
                     candidate_names: Callable[[Mapping[str, Any]], str] | None = None) -> pd.DataFrame:
    """One row per (dataset, candidate); see the module docstring for the columns.

    ``features`` maps a dataset name to its meta-feature dict (wins over the records' own).
    Records of failed / early-stopped runs and teacher references are skipped; rows without a
    finite target are dropped. Repeats (seeds) of a candidate on a dataset are averaged.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    features = features or {}
    records = [r for r in records
               if r.get("status") not in SKIPPED_STATUSES and record_role(r) not in REFERENCE_ROLES]
    dataset_level = _dataset_level_extras(records)
    if dataset_level:  # facts about the dataset (its name, size...), not choices of the pipeline
        records = [{**r, "extra_features": {k: v for k, v in record_extra_features(r).items()
                                            if k not in dataset_level},
                    "meta_features": {**(r.get("meta_features") or {}),
                                      **{f"extra.{k}": v for k, v in record_extra_features(r).items()
                                         if k in dataset_level and not isinstance(v, str)}}}
                   for r in records]
    name_of = candidate_names or record_candidate_name
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    pf_cache: dict[str, tuple[dict[str, float], str]] = {}
    for rec in records:
        dataset, cand = record_dataset_name(rec), name_of(rec)
        if cand in REFERENCE_ROLES:
            continue
        cfg_key = json.dumps(rec["config"], sort_keys=True)
        if cfg_key not in pf_cache:
            canon = canonical_config(rec["config"])
            pf_cache[cfg_key] = (pipeline_features(canon), json.dumps(canon, sort_keys=True))
        pf, cfg_json = pf_cache[cfg_key]
        score, teacher, ratio = record_student_score(rec), record_teacher_score(rec), record_ratio(rec)
        row = rows.get((dataset, cand))
        if row is None:
            mf = numeric_meta_features(features.get(dataset, rec.get("meta_features")))
            mf.update(numeric_meta_features({k: v for k, v in (rec.get("meta_features") or {}).items()
                                             if k.startswith("extra.")}))
            extra = record_extra_features(rec)
            row = rows[(dataset, cand)] = {
                "dataset": dataset, "group": record_group(rec), "candidate": cand,
                "fingerprint": rec.get("dataset_fingerprint"),
                "config": cfg_json, "extra": json.dumps(extra, sort_keys=True, default=str) if extra else "",
                "_scores": [], "_teachers": [], "_ratios": [], "_baselines": [],
                **pf, **_extra_columns(extra), **mf}
        row["_scores"].append(score)
        row["_baselines"].append(record_majority_baseline(rec))
        row["_teachers"].append(teacher)
        row["_ratios"].append(ratio)
    out = []
    for row in rows.values():
        scores, teachers, ratios, baselines = (np.array(row.pop(k), dtype=float)
                                               for k in ("_scores", "_teachers", "_ratios", "_baselines"))
        row["n_runs"] = len(scores)
        row["score"], row["teacher_score"], row["majority_baseline"], row["_ratio"] = map(
            _finite_mean, (scores, teachers, baselines, ratios))
        out.append(row)
    pf_cols = pipeline_feature_columns()
    if not out:
        return pd.DataFrame(columns=[*ID_COLUMNS, "extra", *pf_cols])
    df = pd.DataFrame(out)
    if target == "ratio":
        df["target"] = df.pop("_ratio")
    else:
        df.pop("_ratio")
        best = df.groupby("dataset")["score"].transform("max")
        df["target"] = np.where(best > 0, df["score"] / best, np.nan)
    df = df[np.isfinite(df["target"].to_numpy(dtype=float))]
    return _ordered(df, target)


def _finite_mean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def uninformative_datasets(table: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Datasets whose teacher scores no better than the majority-class baseline:
    ``{dataset: (teacher score, majority baseline)}``.

    There the teacher has learned nothing to distil: the student/teacher ratio of every candidate
    measures seed noise around chance (at the meta-dataset's preset: cola, whose teacher and
    students all predict the majority class, and rte, whose teacher is below it). Datasets whose
    records do not state the baseline (regression, the Distiller import) are never listed."""
    per_ds = table.groupby("dataset")[["teacher_score", "majority_baseline"]].mean()
    bad = per_ds[np.isfinite(per_ds["majority_baseline"]) &
                 (per_ds["teacher_score"] <= per_ds["majority_baseline"])]
    return {str(d): (float(r.teacher_score), float(r.majority_baseline)) for d, r in bad.iterrows()}


def drop_uninformative(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, tuple[float, float]]]:
    """The table without :func:`uninformative_datasets`, and what was dropped."""
    dropped = uninformative_datasets(table)
    kept = table[~table["dataset"].isin(list(dropped))].reset_index(drop=True)
    kept.attrs.update(table.attrs)
    return kept, dropped


def _ordered(df: pd.DataFrame, target: str) -> pd.DataFrame:
    """Columns in table order (ids, pipeline features, extra-choice features, meta-features), rows
    sorted; a one-hot extra column is 0 where a row lacks that choice."""
    mf_cols = sorted(c for c in df.columns if c.startswith(MF_PREFIX))
    xf_cols = sorted(c for c in df.columns if c.startswith(PF_PREFIX + "extra."))
    if xf_cols:
        df[[c for c in xf_cols if "=" in c]] = df[[c for c in xf_cols if "=" in c]].fillna(0.0)
    df = df[[*ID_COLUMNS, "extra", *pipeline_feature_columns(), *xf_cols, *mf_cols]]
    df = df.sort_values(["dataset", "candidate"]).reset_index(drop=True)
    df.attrs["target"] = target
    return df


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


def _source_dir(path: str | Path) -> Path:
    """The meta-dataset a record file or folder belongs to: the folder itself, or the file's folder
    (``meta_dataset/runs/cr.jsonl`` -> ``meta_dataset/runs``)."""
    path = Path(path).resolve()
    return path if path.is_dir() else path.parent


def _source_labels(dirs: Sequence[Path]) -> dict[Path, str]:
    """Short names of source folders: the folder's name (``runs``, ``distiller``), with its parent's
    name in front where two sources share a name."""
    names = [d.name for d in dirs]
    return {d: d.name if names.count(d.name) == 1 else f"{d.parent.name}/{d.name}" for d in dirs}


def table_from_paths(paths: str | Path | Iterable[str | Path], *, target: str = "ratio",
                     features_dir: str | Path | None = None) -> pd.DataFrame:
    """``records_to_table`` on record files/folders, with the per-dataset feature files found next to
    them (or in ``features_dir``).

    Each source (a records folder, or a record file's folder) is tabled on its own, with its own
    feature files and its own ``best`` normalisation. A dataset name that several sources share (the Distiller import's
    ``cola`` and our build's ``cola``: other teachers, other budgets, targets not comparable) stays
    one dataset per source, named ``<dataset>@<source>`` (``cola@distiller``, ``cola@runs``)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    by_source: dict[Path, list[str | Path]] = {}
    for p in paths:
        by_source.setdefault(_source_dir(p), []).append(p)
    tables = {}
    for source, group in by_source.items():
        feats = load_feature_dir(features_dir) if features_dir else find_feature_files(group)
        tables[source] = records_to_table(load_records(group), target=target, features=feats)
    if len(tables) == 1:
        return next(iter(tables.values()))
    labels = _source_labels(list(tables))
    counts = pd.Series([d for t in tables.values() for d in set(t["dataset"])]).value_counts()
    shared = set(counts[counts > 1].index)
    for source, t in tables.items():
        in_shared = t["dataset"].isin(shared)
        t.loc[in_shared, "dataset"] = t.loc[in_shared, "dataset"] + "@" + labels[source]
        t.loc[in_shared, "group"] = t.loc[in_shared, "group"] + "@" + labels[source]
    return _ordered(pd.concat(list(tables.values()), ignore_index=True), target)
