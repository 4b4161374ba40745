"""Meta-dataset records -> one tabular row per (dataset, candidate pipeline).

``records_to_table(records)`` turns run records (:class:`autodistill.records.RunRecord`, as
written by the search and by ``autodistill meta build`` / ``import-distiller``) into a
:class:`pandas.DataFrame` with

- ``dataset``: the context's name (see :attr:`RunRecord.dataset_name <autodistill.records.RunRecord.dataset_name>` for where it is looked up): a dataset,
  or one dataset at one train size;
- ``group``: the dataset the context belongs to (:attr:`~autodistill.records.RunRecord.group`; held out together);
- ``candidate``: the candidate's portfolio name when the record carries one, else ``cfg-<hash>`` of
  the canonical config (:func:`autodistill.records.canonical_config_hash`);
- ``fingerprint``, ``config`` (canonical JSON of the full PipelineConfig), ``extra`` (JSON of the
  record's ``extra_features``: choices outside PipelineConfig such as the Distiller import's teacher
  and student; they are part of the candidate's name and give ``pf_extra.*`` columns: numbers as
  they are, strings one-hot), ``score`` (student score),
  ``teacher_score``, ``majority_baseline`` (the score of always predicting the training set's most
  frequent class, as the run measured it; NaN when a record does not say, e.g. regression or the
  Distiller import), ``n_runs`` (records averaged into the row: seeds / repeats);
- ``pf_*``: the pipeline features (:mod:`autodistill.meta.columns`);
- ``mf_*``: the dataset's numeric meta-features (booleans as 0/1; strings dropped; nested dicts
  flattened with ``.``). A per-dataset features file (``meta_dataset/features/<dataset>.json``)
  wins over the meta-features stored inside the records;
- ``target``: the normalised score. ``target="ratio"`` (default): student score / teacher score (a
  a ratio the record states (``target.ratio``, ``metrics.ratio``/``score_ratio``) wins); ``target="best"``:
  student score / the best student score on that dataset.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..records import RunRecord, as_float, load_records
from .columns import (MF_PREFIX, PF_PREFIX, canonical_config, numeric_meta_features, pipeline_feature_columns,
                      pipeline_features)

TARGETS = ("ratio", "best")
ID_COLUMNS = ("dataset", "group", "candidate", "fingerprint", "config", "score", "teacher_score", "majority_baseline",
              "n_runs", "target")

#: statuses of records that are not a finished run at the common budget
SKIPPED_STATUSES = frozenset({"failed", "error", "stopped_early", "pruned", "interrupted", "running"})
#: candidate names / roles that are references, never recommendable candidates
REFERENCE_ROLES = frozenset({"teacher", "reference_teacher"})


def _unwrap_features(data: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in ("features", "meta_features"):
        if isinstance(data.get(key), Mapping):
            return data[key]
    return data


def _extra_columns(extra: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in sorted(extra.items()):
        if isinstance(v, bool):
            out[f"{PF_PREFIX}extra.{k}"] = float(v)
        elif isinstance(v, (int, float)) or v is None:
            out[f"{PF_PREFIX}extra.{k}"] = as_float(v)
        else:
            out[f"{PF_PREFIX}extra.{k}={v}"] = 1.0
    return out


def _dataset_level_extras(records: Sequence[RunRecord]) -> set[str]:
    """``extra_features`` keys whose value is one per dataset and differs between datasets (e.g. the
    Distiller import's task name, #examples): dataset facts. Numeric ones become ``mf_extra.*``
    meta-features, strings (dataset names) are dropped; neither names a candidate."""
    values: dict[str, dict[str, set[str]]] = {}
    for r in records:
        ds = r.dataset_name
        for k, v in r.extra.items():
            values.setdefault(k, {}).setdefault(ds, set()).add(json.dumps(v, default=str))
    out = set()
    for k, per_ds in values.items():
        if len(per_ds) >= 2 and all(len(v) == 1 for v in per_ds.values()) \
                and len(set().union(*per_ds.values())) > 1:
            out.add(k)
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
def records_to_table(records: Sequence[RunRecord | Mapping[str, Any]], *, target: str = "ratio",
                     features: Mapping[str, Mapping[str, Any]] | None = None,
                     candidate_names: Callable[[RunRecord], str] | None = None) -> pd.DataFrame:
    """One row per (dataset, candidate); see the module docstring for the columns.

    ``records``: run records (or their written form, read with :meth:`RunRecord.from_dict`).
    ``features`` maps a dataset name to its meta-feature dict (wins over the records' own).
    Records of failed / early-stopped runs and teacher references are skipped; rows without a
    finite target are dropped. Repeats (seeds) of a candidate on a dataset are averaged.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    features = features or {}
    records = [r for r in map(RunRecord.of, records)
               if r.status not in SKIPPED_STATUSES and r.role not in REFERENCE_ROLES]
    dataset_level = _dataset_level_extras(records)
    if dataset_level:  # facts about the dataset (its name, size...), not choices of the pipeline
        records = [r.replace(extra_features={k: v for k, v in r.extra.items() if k not in dataset_level},
                             meta_features={**(r.meta_features or {}),
                                            **{f"extra.{k}": v for k, v in r.extra.items()
                                               if k in dataset_level and not isinstance(v, str)}})
                   for r in records]
    name_of = candidate_names or (lambda r: r.candidate_name)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    pf_cache: dict[str, tuple[dict[str, float], str]] = {}
    for rec in records:
        dataset, cand = rec.dataset_name, name_of(rec)
        if cand in REFERENCE_ROLES:
            continue
        cfg_key = json.dumps(rec.config, sort_keys=True)
        if cfg_key not in pf_cache:
            canon = canonical_config(rec.config)
            pf_cache[cfg_key] = (pipeline_features(canon), json.dumps(canon, sort_keys=True))
        pf, cfg_json = pf_cache[cfg_key]
        score, teacher, ratio = rec.student_value, rec.teacher_value, rec.ratio
        row = rows.get((dataset, cand))
        if row is None:
            mf = numeric_meta_features(features.get(dataset, rec.meta_features))
            mf.update(numeric_meta_features({k: v for k, v in (rec.meta_features or {}).items()
                                             if k.startswith("extra.")}))
            extra = rec.extra
            row = rows[(dataset, cand)] = {
                "dataset": dataset, "group": rec.group, "candidate": cand,
                "fingerprint": rec.dataset_fingerprint,
                "config": cfg_json, "extra": json.dumps(extra, sort_keys=True, default=str) if extra else "",
                "_scores": [], "_teachers": [], "_ratios": [], "_baselines": [],
                **pf, **_extra_columns(extra), **mf}
        row["_scores"].append(score)
        row["_baselines"].append(rec.majority_baseline)
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
    one dataset per source, named ``<dataset>@<source>`` (``cola@distiller``, ``cola@runs``); its group is
    renamed on every row of that source, so all of its train sizes there stay one group (held out together)."""
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
        in_renamed_group = t["group"].isin(set(t.loc[in_shared, "group"]))
        t.loc[in_shared, "dataset"] = t.loc[in_shared, "dataset"] + "@" + labels[source]
        t.loc[in_renamed_group, "group"] = t.loc[in_renamed_group, "group"] + "@" + labels[source]
    return _ordered(pd.concat(list(tables.values()), ignore_index=True), target)


def groups_of(table: pd.DataFrame) -> pd.Series:
    """Each row's dataset group (all train sizes of one dataset), or its context when the table has none."""
    return table["group"] if "group" in table.columns else table["dataset"]
