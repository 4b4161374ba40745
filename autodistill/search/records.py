"""The meta-dataset store: one JSON line per finished search trial (append-only, schema-versioned).

Each record holds the dataset fingerprint and meta-features, the full resolved pipeline config, the
metrics, the teacher score, wall time, student size, seed and library versions. Records are
deduplicated on (dataset fingerprint, canonical config hash, seed): appending a duplicate is a no-op.
Written by one driver process; a file lock guards the file anyway.
"""
from __future__ import annotations

import json
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping

from filelock import FileLock

from ..config import PipelineConfig
from .space import config_hash

SCHEMA_VERSION = 1
RECORDS_FILE = "records.jsonl"


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("torch", "transformers", "ray", "optuna", "autodistill"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def canonical_config_hash(config: PipelineConfig | Mapping[str, Any]) -> str:
    """Hash of the resolved config without where the data lives (the fingerprint covers the content)."""
    data = config.to_dict() if isinstance(config, PipelineConfig) else json.loads(json.dumps(config))
    data.setdefault("data", {})
    data["data"] = {k: v for k, v in data["data"].items() if k not in ("train", "validation")}
    return config_hash(data)


def record_key(dataset_fingerprint: str, config: PipelineConfig | Mapping[str, Any], seed: int) -> str:
    return f"{dataset_fingerprint}:{canonical_config_hash(config)}:{seed}"


class RecordStore:
    """Append-only JSONL file of trial records, deduplicated on (dataset, config, seed)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir() or self.path.suffix != ".jsonl":
            self.path = self.path / RECORDS_FILE
        self.lock = FileLock(str(self.path) + ".lock")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.read())

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue  # a torn last line after a hard kill: skip it
        return out

    def keys(self) -> set[str]:
        return {r["key"] for r in self.read() if "key" in r}

    def __len__(self) -> int:
        return len(self.read())

    def append(self, record: Mapping[str, Any]) -> bool:
        """Append ``record`` unless a record with the same key exists; returns whether it was written."""
        rec = dict(record)
        rec.setdefault("schema_version", SCHEMA_VERSION)
        rec.setdefault("key", record_key(rec["dataset_fingerprint"], rec["config"], rec["seed"]))
        rec.setdefault("created_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            if rec["key"] in self.keys():
                return False
            line = json.dumps(rec, sort_keys=True, default=_json_default)
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


def _json_default(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def make_record(*, dataset_fingerprint: str, meta_features: Mapping[str, Any], config: PipelineConfig,
                metrics: Mapping[str, Any], teacher_score: float | None, wall_seconds: float | None,
                student_parameters: int | None, status: str, search: Mapping[str, Any] | None = None,
                params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "key": record_key(dataset_fingerprint, config, config.optim.seed),
        "dataset_fingerprint": dataset_fingerprint,
        "meta_features": dict(meta_features),
        "config": config.to_dict(),
        "config_hash": canonical_config_hash(config),
        "params": dict(params or {}),
        "metrics": dict(metrics),
        "teacher_score": teacher_score,
        "wall_seconds": wall_seconds,
        "student_parameters": student_parameters,
        "seed": config.optim.seed,
        "status": status,
        "search": dict(search or {}),
        "versions": library_versions(),
    }
