"""The run record: one finished KD run (a search trial, a meta-dataset build run, an imported row),
typed, schema-versioned, with its canonical config hash; and the append-only JSON-lines store.

:class:`RunRecord` is frozen (Optuna's ``FrozenTrial`` is the model): typed fields for what a run
states, derived properties for what the meta-dataset reads off it (its dataset name and group, its
candidate name, its student / teacher scores and their ratio). Every writer makes one with
:meth:`RunRecord.create` (or ``dataclasses.replace`` on one), every reader gets one from
:meth:`RunRecord.from_dict`, which reads every record written so far (schema version 1).

The written form (:meth:`RunRecord.to_dict`, one JSON line with sorted keys) is schema version 1:

- always: ``schema_version``, ``dataset_fingerprint``, ``meta_features``, ``config`` (the full resolved
  PipelineConfig), ``config_hash`` (:func:`canonical_config_hash`), ``metrics``, ``teacher_score``,
  ``wall_seconds``, ``student_parameters``, ``seed``, ``status``, ``versions``; and ``key``
  (``<fingerprint>:<config hash>:<seed>``, the dedup key) once stored;
- when the writer states them: ``params`` (the search space's view of the config), ``search`` (the
  experiment, trial id, origin, finish time), ``created_at``; the meta-dataset build's and imports'
  ``source``, ``dataset``, ``dataset_group``, ``candidate``, ``train_size``, ``target``,
  ``provenance``, ``extra_features`` (choices outside PipelineConfig), ``row_index``;
- any other key a record holds is kept as it is (:attr:`RunRecord.other`) and written back.

Records are deduplicated on (dataset fingerprint, canonical config hash, seed): appending a duplicate
is a no-op. Written by one driver process; a file lock guards the file anyway.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from filelock import FileLock

from .config import PipelineConfig, with_legacy_values, without_legacy_values

SCHEMA_VERSION = 1
RECORDS_FILE = "records.jsonl"
#: the libraries whose versions a run record states
RUN_LIBRARIES = ("torch", "transformers", "ray", "optuna", "autodistill")


def canonical_json(value: Any) -> str:
    """The one JSON text of a value (sorted keys, no spaces): what hashes and equal choices compare."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def config_hash(cfg: PipelineConfig | Mapping[str, Any]) -> str:
    """Hash of a full config (its canonical JSON)."""
    data = cfg.to_dict() if isinstance(cfg, PipelineConfig) else cfg
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:20]


def canonical_config_hash(config: PipelineConfig | Mapping[str, Any]) -> str:
    """Hash of the resolved config without where the data lives (the fingerprint covers the content) and
    without settings at the value configs stored before them ran at (:data:`~autodistill.config.LEGACY_VALUES`)."""
    data = without_legacy_values(config.to_dict() if isinstance(config, PipelineConfig)
                                 else json.loads(json.dumps(config)))
    data.setdefault("data", {})
    data["data"] = {k: v for k, v in data["data"].items() if k not in ("train", "validation")}
    return config_hash(data)


def record_key(dataset_fingerprint: str, config: PipelineConfig | Mapping[str, Any], seed: int | None) -> str:
    return f"{dataset_fingerprint}:{canonical_config_hash(config)}:{seed}"


def library_versions(dists: Sequence[str] = RUN_LIBRARIES) -> dict[str, str | None]:
    """The installed versions of ``dists`` (None where one is not installed)."""
    out: dict[str, str | None] = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def as_float(value: Any) -> float:
    """A stated value as a float: NaN for None and for what is no number."""
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _sub(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


#: fields written whatever their value; the other optional fields are written when not None
_ALWAYS = ("schema_version", "dataset_fingerprint", "meta_features", "config", "config_hash", "metrics",
           "teacher_score", "wall_seconds", "student_parameters", "seed", "status", "versions")


@dataclass(frozen=True)
class RunRecord:
    """One finished run; see the module docstring for the fields and their written form."""

    dataset_fingerprint: str
    config: Mapping[str, Any]                  # the full resolved PipelineConfig, as a dict
    status: str                                # "completed", "stopped_early" (search), "ok" (build, import)
    seed: int | None = None
    meta_features: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    teacher_score: float | None = None
    wall_seconds: float | None = None
    student_parameters: int | None = None
    versions: Mapping[str, Any] = field(default_factory=dict)
    config_hash: str | None = None             # canonical_config_hash(config)
    key: str | None = None                     # the dedup key, set once stored
    schema_version: int = SCHEMA_VERSION
    created_at: str | None = None
    params: Mapping[str, Any] | None = None    # the search space's view of the config
    search: Mapping[str, Any] | None = None    # experiment, trial_id, origin, finished_at
    # what the meta-dataset build and the imports state about the run's context
    source: str | None = None
    dataset: str | None = None
    dataset_group: str | None = None
    candidate: str | None = None
    train_size: int | None = None
    target: Mapping[str, Any] | None = None
    provenance: Mapping[str, Any] | None = None
    extra_features: Mapping[str, Any] | None = None
    row_index: int | None = None
    other: Mapping[str, Any] = field(default_factory=dict)   # keys of the record that no field names
    file_stem: str | None = field(default=None, compare=False)  # the records file it was read from; not written

    # ------------------------------------------------------------------ making, reading, writing
    @classmethod
    def create(cls, *, dataset_fingerprint: str, meta_features: Mapping[str, Any], config: PipelineConfig,
               metrics: Mapping[str, Any], teacher_score: float | None, wall_seconds: float | None,
               student_parameters: int | None, status: str, search: Mapping[str, Any] | None = None,
               params: Mapping[str, Any] | None = None, **context: Any) -> "RunRecord":
        """A new record of a run of ``config`` (seeded by ``config.optim.seed``); ``context``: the
        optional context fields (``dataset``, ``candidate``, ``target``, ``provenance`` ...)."""
        return cls(
            key=record_key(dataset_fingerprint, config, config.optim.seed),
            dataset_fingerprint=dataset_fingerprint, meta_features=dict(meta_features), config=config.to_dict(),
            config_hash=canonical_config_hash(config), params=dict(params or {}), metrics=dict(metrics),
            teacher_score=teacher_score, wall_seconds=wall_seconds, student_parameters=student_parameters,
            seed=config.optim.seed, status=status, search=dict(search or {}), versions=library_versions(),
            **context)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], file_stem: str | None = None) -> "RunRecord":
        """A record from its written form (schema version 1; keys no field names go to ``other``)."""
        if "config" not in data:
            raise ValueError("a run record needs its 'config'")
        known = {k: v for k, v in data.items() if k in _FIELDS}
        other = {k: v for k, v in data.items() if k not in _FIELDS}
        known.setdefault("dataset_fingerprint", None)
        known.setdefault("status", None)
        if known.get("schema_version") is None:
            known.pop("schema_version", None)
        return cls(**known, other=other, file_stem=file_stem)

    @classmethod
    def of(cls, record: "RunRecord | Mapping[str, Any]") -> "RunRecord":
        return record if isinstance(record, RunRecord) else cls.from_dict(record)

    def to_dict(self) -> dict[str, Any]:
        """The written form: JSON-ready, the same keys as the record was read or made with."""
        out: dict[str, Any] = dict(self.other)
        for f in dataclasses.fields(self):
            if f.name in ("other", "file_stem"):
                continue
            value = getattr(self, f.name)
            if f.name in _ALWAYS or value is not None:
                out[f.name] = dict(value) if isinstance(value, Mapping) else value
        return out

    def stored(self) -> "RunRecord":
        """This record as the store writes it: with its schema version, dedup key and creation time."""
        return dataclasses.replace(
            self, key=self.key or record_key(self.dataset_fingerprint, self.config, self.seed),
            created_at=self.created_at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def replace(self, **changes: Any) -> "RunRecord":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ derived
    def _get(self, name: str) -> Any:
        """A top-level key of the written form (or the file stem for ``_source``)."""
        if name == "_source":
            return self.other.get("_source", self.file_stem)
        if name in self.other:
            return self.other[name]
        return getattr(self, name) if name in _FIELDS else None

    @property
    def pipeline_config(self) -> PipelineConfig:
        return PipelineConfig.model_validate(with_legacy_values(self.config))

    @property
    def extra(self) -> dict[str, Any]:
        """Pipeline choices outside PipelineConfig that the record states in ``extra_features`` (e.g. the
        Distiller import's teacher and student models, ``aug_p``): part of the candidate's identity."""
        return dict(self.extra_features) if isinstance(self.extra_features, Mapping) else {}

    @property
    def dataset_name(self) -> str:
        """``dataset`` / ``dataset_name`` at the top level, in ``search``, ``extra``, ``params`` or
        ``meta_features``; else the records file's stem; else the dataset fingerprint."""
        for key in ("dataset", "dataset_name"):
            if self._get(key):
                return str(self._get(key))
        for sub in ("search", "extra", "params", "meta_features"):
            for key in ("dataset", "dataset_name"):
                if _sub(self._get(sub)).get(key):
                    return str(_sub(self._get(sub))[key])
        if self._get("_source"):
            return str(self._get("_source"))
        return str(self.dataset_fingerprint if self.dataset_fingerprint is not None else "unknown")

    @property
    def group(self) -> str:
        """The dataset a context belongs to: ``dataset_group`` (the build's ``<dataset>@n<rows>`` contexts
        of one dataset at several train sizes share it), else the context's own name. Leave-one-dataset-out
        holds out a whole group."""
        return str(self.dataset_group or self.dataset_name)

    @property
    def candidate_name(self) -> str:
        """``candidate`` / ``candidate_name`` / ``pipeline`` (top level, ``search``, ``extra``, ``params``),
        else ``cfg-<config hash>`` (with a tag of the extra features where the record has some)."""
        for key in ("candidate", "candidate_name", "pipeline"):
            if isinstance(self._get(key), str) and self._get(key):
                return self._get(key)
            for sub in ("search", "extra", "params"):
                value = _sub(self._get(sub)).get(key)
                if isinstance(value, str) and value:
                    return value
        h = self.config_hash or canonical_config_hash(self.config)
        extra = self.extra
        if extra:
            tag = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode()).hexdigest()[:6]
            return f"cfg-{str(h)[:12]}+{tag}"
        return f"cfg-{str(h)[:12]}"

    @property
    def role(self) -> str | None:
        for src in (self.other, _sub(self.search), _sub(self._get("extra"))):
            if src.get("role"):
                return str(src["role"])
        return None

    @property
    def student_value(self) -> float:
        """The student's score (NaN when the record states none)."""
        for key in ("student_score", "score"):
            if self.metrics.get(key) is not None:
                return as_float(self.metrics[key])
        return as_float(self._get("score"))

    @property
    def teacher_value(self) -> float:
        """The teacher's score (NaN when the record states none)."""
        if self.teacher_score is not None:
            return as_float(self.teacher_score)
        return as_float(self.metrics.get("teacher_score"))

    @property
    def majority_baseline(self) -> float:
        """The score of always predicting the training set's most frequent class, as the run measured
        it (NaN when the record does not say)."""
        for src in (_sub(self.target), self.metrics):
            if src.get("majority_baseline") is not None:
                return as_float(src["majority_baseline"])
        return float("nan")

    @property
    def ratio(self) -> float:
        """A ratio the record states (``target.ratio``, ``metrics.ratio`` / ``score_ratio``: e.g. the
        Distiller paper's own), else student score / teacher score."""
        for src in (_sub(self.target), self.metrics, self.other):
            for key in ("ratio", "score_ratio"):
                if isinstance(src.get(key), (int, float)) and math.isfinite(float(src[key])):
                    return float(src[key])
        s, t = self.student_value, self.teacher_value
        if math.isfinite(s) and math.isfinite(t) and t > 0:
            return s / t
        return float("nan")


#: the record's keys that are fields (the others are kept in ``other``)
_FIELDS = frozenset(f.name for f in dataclasses.fields(RunRecord)) - {"other", "file_stem"}


def _json_default(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


class RecordStore:
    """Append-only JSONL file of run records, deduplicated on (dataset, config, seed)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir() or self.path.suffix != ".jsonl":
            self.path = self.path / RECORDS_FILE
        self.lock = FileLock(str(self.path) + ".lock")

    def __iter__(self) -> Iterator[RunRecord]:
        return iter(self.read())

    def read(self) -> list[RunRecord]:
        return read_records(self.path) if self.path.is_file() else []

    def keys(self) -> set[str]:
        return {r.key for r in self.read() if r.key is not None}

    def __len__(self) -> int:
        return len(self.read())

    def append(self, record: RunRecord | Mapping[str, Any]) -> bool:
        """Append ``record`` unless a record with the same key exists; returns whether it was written."""
        rec = RunRecord.of(record).stored()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            if rec.key in self.keys():
                return False
            line = json.dumps(rec.to_dict(), sort_keys=True, default=_json_default)
            with self.path.open("a", encoding="utf-8") as fh:
                # a torn line from a killed writer must not glue onto ours
                if fh.tell() and not self._ends_with_newline():
                    fh.write("\n")
                fh.write(line + "\n")
                fh.flush()
            return True

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as fh:
            fh.seek(-1, 2)
            return fh.read(1) == b"\n"


def read_records(path: str | Path, file_stem: str | None = None) -> list[RunRecord]:
    """The records of one JSONL file (a torn last line after a hard kill, and lines that are no run
    record, are skipped); each remembers ``file_stem``."""
    out = []
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line after a hard kill: skip it
            if isinstance(data, dict) and "config" in data:
                out.append(RunRecord.from_dict(data, file_stem))
    return out


def load_records(paths: str | Path | Sequence[str | Path]) -> list[RunRecord]:
    """Read JSONL record files; a folder means every ``*.jsonl`` below it (sorted). Each record
    remembers its file's stem (the dataset name for ``meta_dataset/runs/<dataset>.jsonl``; the folder's
    name for a ``records.jsonl``)."""
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
    out: list[RunRecord] = []
    for f in files:
        out += read_records(f, f.stem if f.stem != "records" else f.parent.name)
    return out
