"""Tokenised splits and their batches: encoding, the dev slice of train, padding, batch orders."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch

from .config import DataConfig
from .data import DataError, Split, holdout_indices, text_keys


@dataclass
class EncodedSplit:
    """Token ids per example (unpadded) and labels."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: torch.Tensor  # long for classification, float for regression

    def __len__(self) -> int:
        return len(self.input_ids)

    def take(self, idx: Sequence[int]) -> "EncodedSplit":
        types = [self.token_type_ids[i] for i in idx] if self.token_type_ids is not None else None
        return EncodedSplit([self.input_ids[i] for i in idx], types, self.labels[list(idx)])


def dev_indices(train: Split, data: DataConfig, task_type: str) -> tuple[list[int], list[int]]:
    """(fit rows, dev rows) of train: the dev slice that early stopping watches (seeded with
    data.split_seed, stratified for classification, data.dev_fraction of the rows up to
    data.dev_max_examples; under data.dev_split "text" rows with identical texts fall on one side, so the
    dev score never counts a text the model trains on). Teacher and student share it; neither trains on it."""
    keys = text_keys(train) if data.dev_split == "text" else None
    fit, dev = holdout_indices(train.labels, data.dev_fraction, f"{data.split_seed}:dev",
                               task_type == "classification", data.dev_max_examples, keys=keys)
    if not dev:
        hint = "raise data.dev_fraction or give more training rows"
        if keys is not None:
            hint = (f"{len(train) - len(set(keys))} of them repeat another row's text, and data.dev_split 'text' "
                    f"holds out every copy of a text or none: {hint}, or set data.dev_split to 'row' (the dev score "
                    "then counts texts the model trains on)")
        raise DataError(f"{len(train)} training rows x data.dev_fraction={data.dev_fraction} leave no dev slice for "
                        f"early stopping: {hint}")
    return fit, dev


def encode_texts(tokenizer, text_a: Sequence[str], text_b: Sequence[str] | None, labels,
                 max_length: int, task_type: str) -> EncodedSplit:
    enc = tokenizer(list(text_a), list(text_b) if text_b is not None else None,
                    truncation=True, max_length=max_length)
    dtype = torch.float32 if task_type == "regression" else torch.long
    return EncodedSplit(enc["input_ids"], enc.get("token_type_ids"), torch.tensor(list(labels), dtype=dtype))


def collate(split: EncodedSplit, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest sequence (not to max_length): 2-3x faster on short texts."""
    longest = max(len(split.input_ids[i]) for i in indices)
    ids = torch.full((len(indices), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(indices), longest), dtype=torch.long)
    types = torch.zeros((len(indices), longest), dtype=torch.long) if split.token_type_ids else None
    for row, i in enumerate(indices):
        n = len(split.input_ids[i])
        ids[row, :n] = torch.tensor(split.input_ids[i])
        mask[row, :n] = 1
        if types is not None:
            types[row, :n] = torch.tensor(split.token_type_ids[i])
    batch = {"input_ids": ids, "attention_mask": mask, "labels": split.labels[list(indices)],
             "indices": torch.tensor(list(indices), dtype=torch.long)}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def shuffled_batches(n: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(n))
    rng.shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def length_sorted_batches(split: EncodedSplit, batch_size: int) -> list[list[int]]:
    """Batches of similar length for inference (less padding); order restored by the caller."""
    order = sorted(range(len(split)), key=lambda i: len(split.input_ids[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
