"""Where the teacher caches live (``$AUTODISTILL_CACHE``) and how an encoded split is keyed in them."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..batching import EncodedSplit


def cache_root() -> Path:
    return Path(os.environ.get("AUTODISTILL_CACHE", Path.home() / ".cache" / "autodistill"))


def split_hash(split: EncodedSplit) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(split.input_ids, separators=(",", ":")).encode())
    if split.token_type_ids is not None:
        h.update(json.dumps(split.token_type_ids, separators=(",", ":")).encode())
    h.update(split.labels.numpy().tobytes())
    return h.hexdigest()[:24]
