"""The augmented training pool: original examples plus augmented copies, relabelled by the teacher.

Layout is copy-major: rows [0, N) are the originals, rows [N + c·N, N + (c+1)·N) copy c.
Copies are made at epoch 0 and again every ``reaugment_every`` epochs.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch

from .batching import EncodedSplit, encode_texts
from .teacher.outputs import TeacherOutputs, compute_teacher_outputs
from .teacher.source import TeacherSource


@dataclass
class TrainingPool:
    split: EncodedSplit
    n_original: int
    copies: int = 0


def concat_splits(a: EncodedSplit, b: EncodedSplit) -> EncodedSplit:
    types = None
    if a.token_type_ids is not None and b.token_type_ids is not None:
        types = a.token_type_ids + b.token_type_ids
    return EncodedSplit(a.input_ids + b.input_ids, types, torch.cat([a.labels, b.labels]))


class PoolBuilder:
    """Builds the :class:`TrainingPool` of each epoch: ``original`` (whose texts are ``text_a``/``text_b``)
    plus ``copies`` augmented copies, made at epoch 0 and every ``reaugment_every`` epochs, labelled by
    the first teacher; cached teachers (``base_outputs``: their outputs on ``original``, None when online)
    get their outputs on the copies appended."""

    def __init__(self, *, original: EncodedSplit, text_a: list[str], text_b: list[str] | None, augmenter,
                 copies: int, reaugment_every: int, tokenizer, max_length: int, task_type: str,
                 teachers: Sequence[TeacherSource], base_outputs: Sequence[TeacherOutputs | None], pad_id: int,
                 device: torch.device, seed: int):
        self.original = original
        self.text_a, self.text_b = text_a, text_b
        self.augmenter = augmenter
        self.copies = copies if augmenter is not None else 0
        self.reaugment_every = reaugment_every
        self.tokenizer, self.max_length, self.task_type = tokenizer, max_length, task_type
        self.teachers, self.base_outputs = teachers, base_outputs
        self.pad_id, self.device, self.seed = pad_id, device, seed
        self.augmentations = 0

    def initial(self) -> TrainingPool:
        return self._build(epoch=0)

    def for_epoch(self, epoch: int, current: TrainingPool) -> TrainingPool:
        due = epoch > 0 and self.reaugment_every > 0 and epoch % self.reaugment_every == 0
        return self._build(epoch) if self.copies and due else current

    def _build(self, epoch: int) -> TrainingPool:
        if not self.copies:
            return TrainingPool(self.original, len(self.original), 0)
        self.augmentations += 1
        aug_a, aug_b = self.augmenter.augment_split(self.text_a, self.text_b, seed=epoch_seed(self.seed, epoch))
        placeholder = [0.0 if self.task_type == "regression" else 0] * len(aug_a)
        copies = encode_texts(self.tokenizer, aug_a, aug_b, placeholder, self.max_length, self.task_type)
        # an online teacher computes its hidden features in the step: the copies need only its labels
        first = self.teachers[0]
        primary = compute_teacher_outputs(first.model, copies, self.pad_id, self.device,
                                          layers=first.layers if self.base_outputs[0] is not None else (),
                                          feature=first.feature)
        copies.labels = self._teacher_labels(primary.logits)
        for k, (teacher, base) in enumerate(zip(self.teachers, self.base_outputs)):
            if base is None:
                continue  # online teacher: nothing to cache
            extra = primary if k == 0 else compute_teacher_outputs(
                teacher.model, copies, self.pad_id, self.device, layers=teacher.layers, feature=teacher.feature)
            teacher.cached = base.extend(extra)
        return TrainingPool(concat_splits(self.original, copies), len(self.original), self.copies)

    def _teacher_labels(self, logits: torch.Tensor) -> torch.Tensor:
        """Augmented copies are labelled by the teacher: argmax, or its value for regression."""
        if self.task_type == "regression":
            return logits[:, 0].float()
        return logits.argmax(-1).long()


def epoch_seed(seed: int, epoch: int) -> int:
    """The augmentation seed of an epoch's copies: the run's seed at epoch 0, then one drawn from (seed, epoch),
    so that runs at neighbouring seeds never share copies (``seed + epoch`` gave seed s at epoch 1 the copies
    of seed s + 1 at epoch 0)."""
    if epoch == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:4], "big")
