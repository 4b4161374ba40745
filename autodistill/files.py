"""Files written whole or not at all: a reader (a watcher, a resumed run) never sees half of one."""
from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Callable, Mapping


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file beside it, then rename (two writers' temporary files do not
    collide; a writer killed mid-way leaves the old file, not half a new one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Mapping[str, Any], default: Any = None, sort_keys: bool = True,
                      indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(payload, indent=indent, sort_keys=sort_keys, default=default))


def replace_folder(dest: Path, fill: Callable[[Path], None]) -> Path:
    """Build a folder with ``fill(temporary folder)`` beside ``dest``, then put it in ``dest``'s place: an
    interrupted build leaves the previous ``dest`` whole."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        fill(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
