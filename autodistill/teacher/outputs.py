"""Teacher outputs computed once per dataset and reused by every KD step (and every trial).

Logits always; hidden-state features only for the layers an objective needs, reduced to what it needs
("cls" or "mean" vectors, or whole token sequences kept unpadded in float16).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..batching import EncodedSplit, collate, length_sorted_batches, model_inputs, to_device
from ..callbacks import progress_enabled
from ..pooling import Feature, pool_hidden


@dataclass
class TeacherOutputs:
    logits: torch.Tensor                                   # (N, C) float32
    feature: Feature | None = None
    layers: dict[int, list[torch.Tensor] | torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.logits.shape[0]

    def batch_logits(self, indices: torch.Tensor) -> torch.Tensor:
        return self.logits[indices.cpu()]

    def batch_hidden(self, indices: torch.Tensor, seq_len: int, device: torch.device) -> dict[int, torch.Tensor]:
        out = {}
        idx = indices.cpu().tolist()
        for layer, store in self.layers.items():
            if self.feature == "tokens":
                rows = [store[i] for i in idx]
                padded = torch.zeros(len(rows), seq_len, rows[0].shape[-1], dtype=torch.float32)
                for r, t in enumerate(rows):
                    padded[r, : t.shape[0]] = t.float()
                out[layer] = padded.to(device)
            else:
                out[layer] = store[idx].float().to(device)
        return out

    def extend(self, other: "TeacherOutputs") -> "TeacherOutputs":
        layers = {}
        for layer, store in self.layers.items():
            layers[layer] = store + other.layers[layer] if isinstance(store, list) \
                else torch.cat([store, other.layers[layer]])
        return TeacherOutputs(torch.cat([self.logits, other.logits]), self.feature, layers)


@torch.no_grad()
def compute_teacher_outputs(teacher: nn.Module, split: EncodedSplit, pad_id: int, device: torch.device,
                            batch_size: int = 128, layers: Iterable[int] = (),
                            feature: Feature | None = None) -> TeacherOutputs:
    teacher.eval()
    layers = sorted(set(layers))
    n = len(split)
    logits = torch.zeros(n, teacher.config.num_labels)
    stores: dict[int, list | torch.Tensor] = {}
    batches = length_sorted_batches(split, batch_size)
    for idx in tqdm(batches, desc="teacher outputs", disable=not progress_enabled(), leave=False):
        batch = to_device(collate(split, idx, pad_id), device)
        out = teacher(**model_inputs(batch), output_hidden_states=bool(layers))
        logits[idx] = out.logits.float().cpu()
        for layer in layers:
            _store_layer(stores, layer, out.hidden_states[layer], batch["attention_mask"], feature, idx, n)
    return TeacherOutputs(logits, feature if layers else None, stores)


def _store_layer(stores: dict, layer: int, h: torch.Tensor, mask: torch.Tensor, feature: Feature | None,
                 idx: Sequence[int], n: int) -> None:
    if feature == "tokens":
        store = stores.setdefault(layer, [None] * n)
        lengths = mask.sum(1).tolist()
        for row, i in enumerate(idx):
            store[i] = h[row, : lengths[row]].to(torch.float16).cpu()
        return
    pooled = pool_hidden(h, mask, feature).to(torch.float16).cpu()
    if layer not in stores:
        stores[layer] = torch.zeros(n, pooled.shape[-1], dtype=torch.float16)
    stores[layer][idx] = pooled


def estimate_cache_bytes(split: EncodedSplit, n_layers: int, hidden: int, feature: Feature | None) -> int:
    if not n_layers or feature is None:
        return 0
    if feature == "tokens":
        return 2 * hidden * n_layers * sum(len(ids) for ids in split.input_ids)
    return 2 * hidden * n_layers * len(split)
