"""A training run's checkpoint, so that an interrupted run resumes where it last evaluated.

The :class:`~autodistill.trainer.Trainer` writes one after every evaluation when it is given a path (the
teacher's fine-tune is: it is the longest single run a user waits for). It holds everything the loop
needs to continue exactly as if it had not stopped: the model's weights, the optimiser, the learning-rate
schedule and the loss scaler, the trainer state with its learning curve, the best checkpoint so far, the
position in the epoch (with the batch-order generator's state at the epoch's start, so the epoch's batches
are drawn again identically) and the torch random state. It is written atomically and read with
``weights_only`` (no pickled code). Resumed on the same device and precision (the fingerprint), the run is
the uninterrupted one bit for bit on CPU; GPU kernels are not deterministic.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


@dataclass
class Position:
    """Where the loop stopped: the epoch, the next batch in it, the batch-order generator's state at the
    epoch's start, and the training examples seen so far."""

    epoch: int
    next_batch: int
    epoch_rng: tuple
    examples_seen: int


@dataclass
class Checkpoint:
    position: Position
    state: dict[str, Any]                     # TrainerState's fields
    eval_seconds: float
    checkpoint_seconds: float
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    best: dict[str, torch.Tensor] | None      # None: the best checkpoint is the model itself
    torch_rng: torch.Tensor
    cuda_rng: torch.Tensor | None             # the training device's, on CUDA
    fingerprint: dict[str, Any]               # what must agree to resume (steps, rows, device, precision)


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` atomically (a temporary file beside ``path``, then renamed)."""
    # shallow: dataclasses.asdict would deep-copy every tensor (on the GPU, the weights and Adam's moments)
    payload = {f.name: getattr(checkpoint, f.name) for f in dataclasses.fields(checkpoint)}
    payload["position"] = dataclasses.asdict(checkpoint.position)
    payload["version"] = FORMAT_VERSION
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path))
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_unfinished_writes(path: Path) -> None:
    """The temporary files a writer killed mid-write left beside the checkpoint (call it holding the run's
    lock: a live writer's file looks the same)."""
    for leftover in path.parent.glob(f"{_temporary_prefix(path)}*"):
        leftover.unlink(missing_ok=True)


def remove_checkpoint(path: Path) -> None:
    """The checkpoint and any unfinished write of it."""
    path.unlink(missing_ok=True)
    remove_unfinished_writes(path)


def load_checkpoint(path: Path, fingerprint: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint at ``path`` if there is one written for this run (same ``fingerprint``). One that is
    corrupt or belongs to another run is removed, one that cannot be read now is left; either way with a
    warning, and the run starts afresh."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)   # loading copies to the model's device
    except OSError as err:
        return _afresh(path, f"cannot read it ({err})", remove=False)
    except Exception as err:  # noqa: BLE001 - unpickling or format errors: the file is corrupt
        return _afresh(path, f"corrupt ({type(err).__name__}: {err})")
    if not isinstance(payload, dict) or payload.pop("version", None) != FORMAT_VERSION:
        return _afresh(path, "written by another version")
    if payload.get("fingerprint") != fingerprint:
        return _afresh(path, f"written for another run ({payload.get('fingerprint')} vs {fingerprint})")
    try:
        payload["position"] = Position(**payload["position"])
        return Checkpoint(**payload)
    except (TypeError, KeyError) as err:
        return _afresh(path, f"incomplete ({err})")


def _afresh(path: Path, why: str, remove: bool = True) -> None:
    warnings.warn(f"{path}: cannot resume from this checkpoint: {why}; starting afresh", stacklevel=3)
    if remove:
        path.unlink(missing_ok=True)
    return None
