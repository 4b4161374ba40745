"""Dataset intake: uploads streamed to disk under a size cap, references checked against the allowed
roots, then the library's data layer (validation, labels, split, fingerprint) and meta-features."""
from __future__ import annotations

import functools
import os
import re
import shutil
from pathlib import Path
from typing import Any, BinaryIO

from autodistill.config import DataConfig
from autodistill.data import TaskData, load_task_data

from .errors import ApiError

UPLOAD_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
CHUNK = 1 << 20


def upload_suffix(filename: str | None, field: str) -> str:
    suffix = Path(filename or "").suffix.lower()
    if suffix not in UPLOAD_FORMATS:
        raise ApiError(422, "validation_error", f"{field}: file name must end in one of "
                       f"{sorted(UPLOAD_FORMATS)} (got {filename!r})", field=field)
    return suffix


def save_stream(src: BinaryIO, dest: Path, limit_bytes: int, field: str) -> int:
    """Copy ``src`` to ``dest`` in chunks; 413 (and nothing left on disk) past ``limit_bytes``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(dest, "wb") as out:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > limit_bytes:
                out.close()
                dest.unlink(missing_ok=True)
                raise ApiError(413, "payload_too_large", f"{field}: larger than the upload cap of "
                               f"{limit_bytes / 2**20:.1f} MB", field=field)
            out.write(chunk)
    if written == 0:
        dest.unlink(missing_ok=True)
        raise ApiError(422, "validation_error", f"{field}: the file is empty", field=field)
    return written


def resolve_under_roots(raw: str, roots: list[Path], field: str) -> Path:
    """The real path of ``raw`` if it lies under an allowed root (symlinks resolved), else 403."""
    if not roots:
        raise ApiError(403, "forbidden", f"{field}: this server allows no dataset paths (set "
                       "AUTODISTILL_SERVICE_ALLOWED_ROOTS)", field=field)
    candidate = Path(raw)
    bases = [candidate] if candidate.is_absolute() else [Path(r) / candidate for r in roots]
    for base in bases:
        real = Path(os.path.realpath(base))
        for root in roots:
            root_real = Path(os.path.realpath(root))
            if real == root_real or root_real in real.parents:
                if not real.exists():
                    raise ApiError(422, "validation_error", f"{field}: {raw!r} does not exist under the "
                                   "allowed roots", field=field)
                return real
    raise ApiError(403, "forbidden", f"{field}: {raw!r} is outside the allowed roots", field=field)


_HF_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_hf_name(name: str, field: str = "hf_name") -> str:
    if not _HF_NAME.match(name) or ".." in name:
        raise ApiError(422, "validation_error", f"{field}: {name!r} is not a Hugging Face datasets name",
                       field=field)
    return name


def load_validated(cfg: DataConfig, field: str) -> TaskData:
    from autodistill.data import DataError
    try:
        return load_task_data(cfg)
    except DataError as err:
        raise ApiError(422, "invalid_dataset", str(err), field=field) from None
    except (OSError, ValueError) as err:   # unreadable file, bad encoding, hub unavailable
        raise ApiError(422, "invalid_dataset", f"cannot read the dataset: {err}", field=field) from None


def dataset_stats(task: TaskData) -> dict[str, Any]:
    report = task.report
    return {"task_type": task.task_type, "num_labels": task.num_labels, "label_names": task.label_names,
            "is_pair": task.is_pair, "train_rows": len(task.train), "validation_rows": len(task.validation),
            "validation_source": report.validation_source, "rows_read": report.rows_read,
            "dropped": report.dropped}


@functools.lru_cache(maxsize=4)
def _tokenizer(backbone: str):
    from autodistill.models import load_tokenizer
    return load_tokenizer(backbone)


@functools.lru_cache(maxsize=2)
def _backbone_model(backbone: str):
    from transformers import AutoModel

    from autodistill.models import resolve_backbone
    return AutoModel.from_pretrained(resolve_backbone(backbone)).eval()


def meta_features(task: TaskData, backbone: str | None) -> dict[str, Any]:
    """The recommender's meta-features (embedding ones only when a backbone is configured)."""
    from autodistill.config import DEFAULT_BACKBONE
    from autodistill.meta.features import compute_meta_features
    tokenizer = _tokenizer(backbone or DEFAULT_BACKBONE)
    return compute_meta_features(task, tokenizer, backbone=_backbone_model(backbone) if backbone else None)


def remove_dataset_files(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
