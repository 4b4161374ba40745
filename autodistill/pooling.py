"""Hidden-state pooling: the one function that reduces a (B, T, d) hidden state to what a consumer needs.

The teacher-outputs cache, the online teacher and the intermediate-layer objectives (and their critics)
all pool through :func:`pool_hidden` and its two reductions, :func:`cls_vector` and :func:`masked_mean`.
"""
from __future__ import annotations

from typing import Literal

import torch

#: what an objective needs of a teacher layer: whole token sequences, the [CLS] vector or the masked mean
Feature = Literal["tokens", "cls", "mean"]


def cls_vector(h: torch.Tensor) -> torch.Tensor:
    """[CLS] (token 0) of (B, T, d); a (B, d) tensor is returned unchanged."""
    return h[:, 0] if h.dim() == 3 else h


def masked_mean(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention-masked mean over tokens of (B, T, d), Σ_t m_t·h_t / max(1, Σ_t m_t); a (B, d) tensor is
    returned unchanged, and without a mask every token counts."""
    if h.dim() == 2:
        return h
    if mask is None:
        return h.mean(dim=1)
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def pool_hidden(h: torch.Tensor, mask: torch.Tensor | None, feature: Feature | None) -> torch.Tensor:
    """``h`` (B, T, d) reduced to ``feature``: ``cls`` -> (B, d) token 0, ``mean`` -> (B, d) masked mean,
    ``tokens`` (or None) -> unchanged; an already pooled (B, d) tensor is returned as it is."""
    if feature in (None, "tokens") or h.dim() == 2:
        return h
    if feature == "cls":
        return cls_vector(h)
    if feature == "mean":
        return masked_mean(h, mask)
    raise ValueError(f"unknown hidden-state feature {feature!r}; known: ['cls', 'mean', 'tokens']")
