"""The search storage (``search_storage``): a URI the Ray cluster and the service both reach.

A search submitted to a remote cluster writes its Tune results there (storage_path) and publishes its
progress, records, leaderboard and best student next to them (``autodistill.search.export.publish``);
the service reads them back through pyarrow's filesystems (s3://, gs://, file://, ...), never
through a path the cluster must share.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), uri


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes | None:
    """The file's bytes, or None when it is not there (yet)."""
    fs, path = _fs(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as fh:
        return fh.read()


def fetch(uri: str, dest: Path) -> bool:
    """Copy one file from the storage to ``dest`` (atomically); False when it is not there."""
    data = read_bytes(uri)
    if data is None:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return True


def fetch_dir(uri: str, dest: Path) -> bool:
    """Copy a folder from the storage to ``dest``; False when it is not there."""
    fs, path = _fs(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return False
    dest.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return True


def remove(uri: str) -> None:
    """Delete a folder of the storage and everything under it; nothing when it is not there."""
    fs, path = _fs(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)
