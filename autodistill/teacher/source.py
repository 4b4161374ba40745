"""What a KD step asks of a teacher: its logits (and pooled hidden features) for rows of a batch, read
from the cached :class:`~autodistill.teacher.outputs.TeacherOutputs` or computed online."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..batching import model_inputs
from ..pooling import Feature, pool_hidden
from .outputs import TeacherOutputs


class TeacherSource:
    """Teacher logits (and hidden features) for rows of a batch, from a cache or computed on the fly."""

    def __init__(self, model: nn.Module, cached: TeacherOutputs | None, layers: Sequence[int] = (),
                 feature: Feature | None = None):
        self.model = model
        self.cached = cached
        self.layers = sorted(set(layers))
        self.feature = feature
        self.forward_examples = 0

    @property
    def online(self) -> bool:
        return self.cached is None

    def outputs(self, batch: dict[str, torch.Tensor], rows: torch.Tensor, with_hidden: bool
                ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        device = batch["input_ids"].device
        if not self.online:
            indices = batch["indices"][rows]
            hidden = self.cached.batch_hidden(indices, batch["input_ids"].shape[1], device) if with_hidden else {}
            return self.cached.batch_logits(indices).to(device), hidden
        sub = {k: v[rows] for k, v in model_inputs(batch).items()}
        self.forward_examples += int(rows.numel())
        with torch.no_grad():
            out = self.model(**sub, output_hidden_states=with_hidden and bool(self.layers))
        hidden = {}
        if with_hidden:
            for layer in self.layers:
                hidden[layer] = pool_hidden(out.hidden_states[layer].float(), sub["attention_mask"], self.feature)
        return out.logits.float(), hidden

    def logits_for_inputs(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits for ready-made model inputs (MixKD's mixed embeddings)."""
        self.forward_examples += inputs["attention_mask"].shape[0]
        with torch.no_grad():
            return self.model(**inputs).logits.float()
