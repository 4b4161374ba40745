"""A disk cache of computed :class:`TeacherOutputs`, shared by every trial of a search.

Keyed by (teacher cache key, hash of the encoded split, layers, feature): a search computes the teacher's
logits (and any features an objective needs) once, and every later trial - in any process on the machine,
or on a cluster with shared ``$AUTODISTILL_CACHE`` storage - loads them instead of running the teacher.
Writes are atomic and serialised by a file lock, so two trials never compute the same entry twice.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

import torch
from filelock import FileLock

from ..batching import EncodedSplit
from ..pooling import Feature
from .cache import cache_root, split_hash
from .outputs import TeacherOutputs, compute_teacher_outputs

CACHE_VERSION = 1
ENV_FLAG = "AUTODISTILL_SHARE_TEACHER_OUTPUTS"


def enabled_by_env() -> bool:
    return os.environ.get(ENV_FLAG, "").lower() in ("1", "true", "yes")


def outputs_key(teacher_key: str, split: EncodedSplit, layers: Iterable[int], feature: Feature | None) -> str:
    layers = sorted(set(layers))
    payload = {"v": CACHE_VERSION, "teacher": teacher_key, "split": split_hash(split), "layers": layers,
               "feature": feature if layers else None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def cache_dir() -> Path:
    return cache_root() / "teacher_outputs"


def load_or_compute(teacher: torch.nn.Module, teacher_key: str, split: EncodedSplit, pad_id: int,
                    device: torch.device, layers: Iterable[int] = (), feature: Feature | None = None
                    ) -> tuple[TeacherOutputs, bool]:
    """Teacher outputs for ``split``, from the disk cache when present. Returns (outputs, from_cache)."""
    layers = sorted(set(layers))
    key = outputs_key(teacher_key, split, layers, feature)
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{key}.pt"
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            data = torch.load(path, map_location="cpu", weights_only=True)
            return TeacherOutputs(data["logits"], data["feature"], data["layers"]), True
        out = compute_teacher_outputs(teacher, split, pad_id, device, layers=layers, feature=feature)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=".tmp-", suffix=".pt")
        os.close(fd)
        torch.save({"logits": out.logits, "feature": out.feature, "layers": out.layers}, tmp)
        os.replace(tmp, path)
        return out, False
