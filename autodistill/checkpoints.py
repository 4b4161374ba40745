"""A training run's checkpoint, so that an interrupted run resumes where it last evaluated.

The :class:`~autodistill.trainer.Trainer` writes one after every evaluation when it is given a path (the
teacher's fine-tune is: it is the longest single run a user waits for). It holds everything the loop
needs to continue exactly as if it had not stopped: the model's weights, the optimiser, the learning-rate
schedule and the loss scaler, the trainer state with its learning curve, the best checkpoint so far, the
position in the epoch (with the batch-order generator's state at the epoch's start, so the epoch's batches
are drawn again identically) and the torch random state. It is written atomically and read with
``weights_only`` (no pickled code).
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
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    best: dict[str, torch.Tensor] | None      # None: the best checkpoint is the model itself
    torch_rng: torch.Tensor
    cuda_rng: list[torch.Tensor] | None
    fingerprint: dict[str, Any]               # what must agree to resume (total steps, rows)


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    payload = dataclasses.asdict(checkpoint)
    payload["version"] = FORMAT_VERSION
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, fingerprint: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint at ``path`` if there is one written for this run (same ``fingerprint``); one that
    cannot be read or belongs to another run is removed with a warning, and the run starts afresh."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)   # loading copies to the model's device
        if payload.pop("version", None) != FORMAT_VERSION or payload["fingerprint"] != fingerprint:
            raise ValueError(f"written for another run ({payload.get('fingerprint')} vs {fingerprint})")
        payload["position"] = Position(**payload["position"])
        return Checkpoint(**payload)
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint: start over rather than fail
        warnings.warn(f"{path}: cannot resume from this checkpoint ({type(err).__name__}: {err}); starting afresh",
                      stacklevel=2)
        path.unlink(missing_ok=True)
        return None
