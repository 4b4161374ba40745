"""What a search hands out: the best student (``out_dir/best``), its progress, leaderboard and records.

On one machine they stay in the out folder; with a storage URI (``--storage-path``, shared by every
node) Tune keeps the run there, the trials' checkpoints are fetched from there and the driver
publishes its progress and results there for a process on another machine (the REST service).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..files import replace_folder, write_json_atomic

EXPERIMENT_NAME = "search"
PROGRESS_FILE = "progress.json"


def write_progress(path: Path, **progress: Any) -> None:
    """Atomically replace ``path`` with the search's progress (read by `GET /searches/{id}`)."""
    write_json_atomic(path, {**progress, "updated_at": time.time()}, sort_keys=False, indent=None)


@dataclass
class Storage:
    """Where Tune keeps the run: ``root`` is RunConfig.storage_path, ``experiment`` the run's folder."""

    root: str
    experiment: str
    remote: bool            # a storage URI given by the user (shared by every node), not the out folder
    scheme: str = ""        # its URI scheme ("s3", "gs", "file"), to name checkpoints by URI


def student_seconds_spent(storage: "Storage", out: Path) -> float:
    """The student time an earlier, interrupted run of this search spent (its last progress): from ``out``,
    else from the storage folder it was published to (a cluster job resubmitted into a new folder)."""
    local = out / PROGRESS_FILE
    raw = local.read_bytes() if local.is_file() else _read_published(storage, PROGRESS_FILE)
    try:
        return float(json.loads(raw or b"{}").get("student_seconds") or 0.0)
    except (ValueError, TypeError, AttributeError):
        return 0.0


def _read_published(storage: "Storage", name: str) -> bytes | None:
    if not storage.remote:
        return None
    fs, root = _filesystem(storage)
    try:
        with fs.open_input_stream(f"{root}/{name}") as fh:
            return fh.read()
    except (FileNotFoundError, OSError):
        return None


def restore_published(storage: "Storage", out: Path, name: str) -> bool:
    """Copy ``name`` from the storage folder an earlier run of this search published to into ``out``, when
    ``out`` lacks it: a cluster job resubmitted into a new folder goes on from the earlier run's records."""
    if (out / name).exists():
        return False
    raw = _read_published(storage, name)
    if raw is None:
        return False
    (out / name).write_bytes(raw)
    return True


def make_storage(out: Path, storage_path: str | None) -> Storage:
    """The out folder (one machine), or ``storage_path``: this search's own folder on storage every node
    reaches (one folder per search, like ``--out``)."""
    if not storage_path:
        return Storage(str(out), str(out / EXPERIMENT_NAME), False)
    root = storage_path.rstrip("/")
    scheme = storage_path.split("://", 1)[0] if "://" in storage_path else ""
    return Storage(root, f"{root}/{EXPERIMENT_NAME}", True, scheme)


PUBLISHED = (PROGRESS_FILE, "leaderboard.json", "records.jsonl", "space.yaml")


def publish(storage: "Storage | None", out: Path, names: Sequence[str] = PUBLISHED, best: bool = False) -> None:
    """Copy the search's results (progress, leaderboard, records, and with ``best`` the best student)
    from ``out`` to its storage folder, where a process on another machine (the REST service) reads them."""
    if storage is None or not storage.remote:
        return
    import pyarrow.fs as pafs
    fs, root = _filesystem(storage)
    fs.create_dir(root, recursive=True)
    for name in names:
        src = out / name
        if src.is_file():
            with fs.open_output_stream(f"{root}/{name}") as fh:
                fh.write(src.read_bytes())
    if best and (out / "best").is_dir():
        pafs.copy_files(str(out / "best"), f"{root}/best", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)


def _filesystem(storage: "Storage"):
    """(pyarrow filesystem, path in it) of the storage folder."""
    import pyarrow.fs as pafs
    if "://" in storage.root:
        return pafs.FileSystem.from_uri(storage.root)
    return pafs.LocalFileSystem(), storage.root


def checkpoint_uri(ckpt) -> str:
    """A Tune checkpoint's location as a URI any process can fetch (a plain path on local storage)."""
    kind = getattr(getattr(ckpt, "filesystem", None), "type_name", "local")
    if kind == "local":
        return ckpt.path
    scheme = {"gcs": "gs"}.get(kind, kind)
    return f"{scheme}://{ckpt.path.lstrip('/')}" if "::" not in scheme else ckpt.path


def fetch_checkpoint(uri: str, dest: Path) -> Path:
    """Copy a checkpoint (a local folder, or a URI on the run's storage) to ``dest``."""
    if Path(uri).is_dir():
        shutil.copytree(uri, dest)
        return dest
    from ray import tune
    tune.Checkpoint(uri).to_directory(str(dest))
    return dest


def export_best(best_row: Mapping[str, Any], out: Path) -> Path:
    """Copy the best completed student (a leaderboard row with its checkpoint) to ``out/best``, with
    ``trial.json`` saying which trial it is."""
    def fill(folder: Path) -> None:
        fetch_checkpoint(best_row["checkpoint"], folder)
        (folder / "trial.json").write_text(json.dumps(
            {k: best_row.get(k) for k in ("trial_id", "score", "dev_score", "params", "path", "origin")}, indent=2,
            default=str), encoding="utf-8")
    return replace_folder(out / "best", fill)
