"""Dynamic KD (Li et al., "Dynamic Knowledge Distillation for Pre-trained Language Models", EMNLP 2021).

Everything is driven by the student's own uncertainty u = H(p_S) / log C  (in [0, 1]):
- data selection: KD only on the top ⌊r·B⌋ samples of a batch by an informativeness score;
- teacher adoption: route or weight samples between teachers by u;
- objective adaptation: per sample (1 − u_i)·KD_i + u_i·REP_i.
"""
from __future__ import annotations

import math

import torch

from .registry import Registry

SELECTION_SCORES: Registry = Registry("selection strategy")


def uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """u = H(softmax(z)) / log C, per sample, in [0, 1]."""
    num_classes = logits.shape[-1]
    if num_classes < 2:
        raise ValueError("uncertainty needs at least two classes")
    logp = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return (entropy / math.log(num_classes)).clamp(0.0, 1.0)


@SELECTION_SCORES.register("entropy")
def entropy_score(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Higher = more uncertain: the normalised entropy."""
    return uncertainty(logits)


@SELECTION_SCORES.register("margin")
def margin_score(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Higher = smaller gap between the two most probable classes: −(p_top1 − p_top2)."""
    top2 = torch.softmax(logits.float(), -1).topk(2, dim=-1).values
    return -(top2[:, 0] - top2[:, 1])


@SELECTION_SCORES.register("least_confidence")
def least_confidence_score(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Higher = lower maximum probability: −max_c p_c."""
    return -torch.softmax(logits.float(), -1).max(-1).values


@SELECTION_SCORES.register("random")
def random_score(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.rand(logits.shape[0], generator=generator).to(logits.device)


def select_for_kd(logits: torch.Tensor, strategy: str, ratio: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices (sorted) of the top ⌊ratio·B⌋ samples by the strategy's score; all when strategy is none."""
    batch = logits.shape[0]
    if strategy == "none" or ratio >= 1.0:
        return torch.arange(batch, device=logits.device)
    keep = math.floor(ratio * batch)
    scores = SELECTION_SCORES.get(strategy)(logits.detach(), generator)
    return scores.topk(keep).indices.sort().values


def adoption_weights(u: torch.Tensor, mode: str, num_teachers: int) -> torch.Tensor:
    """(B, K) weights over K teachers, each row summing to 1.

    Teachers are listed from the one for uncertain samples (index 0; the paper's smaller BERT-base)
    to the one for confident samples (index K−1; the paper's BERT-large).
    - hard: rank the batch by u (most uncertain first) and split it into K equal groups;
    - soft: batch level, every row = w(mean u);  soft_instance: per sample w(u_i);
      with w(u) interpolating on the teacher axis at position (1 − u)(K − 1): for K = 2, w = (u, 1 − u).
    """
    batch = u.shape[0]
    if mode == "hard":
        order = torch.argsort(u, descending=True)
        groups = torch.zeros(batch, dtype=torch.long, device=u.device)
        groups[order] = torch.arange(batch, device=u.device) * num_teachers // max(batch, 1)
        return torch.nn.functional.one_hot(groups, num_teachers).float()
    if mode == "soft":
        return _interpolated_weights(u.mean().expand(batch), num_teachers)
    if mode == "soft_instance":
        return _interpolated_weights(u, num_teachers)
    raise ValueError(f"unknown adoption mode {mode!r}")


def _interpolated_weights(u: torch.Tensor, num_teachers: int) -> torch.Tensor:
    position = (1.0 - u) * (num_teachers - 1)
    low = position.floor().long().clamp(max=num_teachers - 1)
    frac = position - low.float()
    weights = torch.zeros(u.shape[0], num_teachers, device=u.device)
    weights.scatter_(1, low.unsqueeze(1), (1.0 - frac).unsqueeze(1))
    high = (low + 1).clamp(max=num_teachers - 1)
    weights.scatter_add_(1, high.unsqueeze(1), frac.unsqueeze(1))
    return weights


def adapt_objective(kd: torch.Tensor, rep: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Dynamic KD objective adaptation: (1 − u_i)·KD_i + u_i·REP_i (uncertain samples lean on REP)."""
    return (1.0 - u) * kd + u * rep
