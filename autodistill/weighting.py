"""Per-sample balance between the label loss and the KD loss: L = (1/B) Σ_i (1 − λ_i)·CE_i + λ_i·KD_i.

Strategies (registry ``WEIGHTINGS``): ``fixed`` λ, ``linear`` / ``cosine`` annealing schedules of λ,
and RW-KD's meta-learned λ_i (Lu et al., "Learning to Weight Samples for Knowledge Distillation"
style, Findings of EMNLP 2021).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from .config import WeightingConfig
from .registry import Registry

WEIGHTINGS: Registry = Registry("weighting strategy")

KDFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sample_signals(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                   ce: torch.Tensor, kd: torch.Tensor) -> torch.Tensor:
    """Per-sample inputs of the meta-learner (all detached): CE, KD, student entropy,
    teacher confidence and teacher–label agreement."""
    p_s = torch.softmax(student_logits.detach().float(), -1)
    p_t = torch.softmax(teacher_logits.detach().float(), -1)
    entropy = -(p_s * p_s.clamp_min(1e-12).log()).sum(-1)
    agreement = (p_t.argmax(-1) == labels).float()
    return torch.stack([ce.detach(), kd.detach(), entropy, p_t.max(-1).values, agreement], dim=-1)


class Weighting:
    """Produces λ_i ∈ [0, 1] per sample."""

    def __init__(self, cfg: WeightingConfig):
        self.cfg = cfg

    def lambdas(self, signals: torch.Tensor, progress: float) -> torch.Tensor:
        raise NotImplementedError

    def meta_step(self, model: nn.Module, inputs: dict, labels: torch.Tensor, teacher_logits: torch.Tensor,
                  kd_fn: KDFn, meta_batch: dict | None) -> dict[str, float]:
        return {}


@WEIGHTINGS.register("fixed")
class FixedWeighting(Weighting):
    """λ_i = λ for every sample (the classic KD interpolation)."""

    def lambdas(self, signals: torch.Tensor, progress: float) -> torch.Tensor:
        return torch.full((signals.shape[0],), self.cfg.lambda_kd, device=signals.device)


@WEIGHTINGS.register("linear")
class LinearWeighting(Weighting):
    """λ(t) = λ_0 + (λ_end − λ_0)·t with t ∈ [0, 1] the training progress."""

    def lambdas(self, signals: torch.Tensor, progress: float) -> torch.Tensor:
        value = self.cfg.lambda_kd + (self.cfg.lambda_end - self.cfg.lambda_kd) * min(max(progress, 0.0), 1.0)
        return torch.full((signals.shape[0],), value, device=signals.device)


@WEIGHTINGS.register("cosine")
class CosineWeighting(Weighting):
    """λ(t) = λ_end + (λ_0 − λ_end)·(1 + cos(π t)) / 2."""

    def lambdas(self, signals: torch.Tensor, progress: float) -> torch.Tensor:
        t = min(max(progress, 0.0), 1.0)
        value = self.cfg.lambda_end + (self.cfg.lambda_kd - self.cfg.lambda_end) * (1 + math.cos(math.pi * t)) / 2
        return torch.full((signals.shape[0],), value, device=signals.device)


class MetaWeightNet(nn.Module):
    """λ_i = σ(MLP(signals_i)), starting near λ_0 (bias initialised to logit(λ_0))."""

    def __init__(self, n_signals: int, hidden: int, initial_lambda: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_signals, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        lam = min(max(initial_lambda, 1e-3), 1 - 1e-3)
        nn.init.zeros_(self.net[2].weight)
        nn.init.constant_(self.net[2].bias, math.log(lam / (1 - lam)))

    def forward(self, signals: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(signals).squeeze(-1))


@WEIGHTINGS.register("rw_kd")
class RWKDWeighting(Weighting):
    """RW-KD (Lu et al., Findings of EMNLP 2021): a meta-learner trained with the student by a one-step
    look-ahead (learning to re-weight, Ren et al. 2018):

        θ'(φ) = θ − η ∇_θ (1/B) Σ_i [(1 − λ_i(φ))·CE_i + λ_i(φ)·KD_i]
        φ ← φ − β ∇_φ CE(meta batch; θ'(φ))

    The meta batch comes from a held-out slice of the training data, never from validation.
    """

    def __init__(self, cfg: WeightingConfig):
        super().__init__(cfg)
        self.net = MetaWeightNet(5, cfg.meta_hidden, cfg.lambda_kd)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.meta_learning_rate)
        self.steps = 0

    def lambdas(self, signals: torch.Tensor, progress: float) -> torch.Tensor:
        self.net.to(signals.device)
        with torch.no_grad():
            return self.net(signals)

    def meta_step(self, model: nn.Module, inputs: dict, labels: torch.Tensor, teacher_logits: torch.Tensor,
                  kd_fn: KDFn, meta_batch: dict | None) -> dict[str, float]:
        self.steps += 1
        if meta_batch is None or (self.steps - 1) % self.cfg.meta_interval:
            return {}
        self.net.to(labels.device)
        # The look-ahead differentiates through a gradient: the fused scaled-dot-product-attention
        # kernels (flash / memory-efficient, used by BERT's default "sdpa" attention) have no
        # double backward, the math kernel has.
        with sdpa_kernel(SDPBackend.MATH):
            return self._meta_update(model, inputs, labels, teacher_logits, kd_fn, meta_batch)

    def _meta_update(self, model: nn.Module, inputs: dict, labels: torch.Tensor, teacher_logits: torch.Tensor,
                     kd_fn: KDFn, meta_batch: dict) -> dict[str, float]:
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        logits = functional_call(model, params, args=(), kwargs=inputs).logits
        ce = F.cross_entropy(logits, labels, reduction="none")
        kd = kd_fn(logits, teacher_logits)
        lam = self.net(sample_signals(logits, teacher_logits, labels, ce, kd))
        inner = ((1 - lam) * ce + lam * kd).mean()
        names = list(params)
        grads = torch.autograd.grad(inner, [params[n] for n in names], create_graph=True, allow_unused=True)
        lookahead = {n: params[n] - self.cfg.lookahead_learning_rate * g if g is not None else params[n]
                     for n, g in zip(names, grads)}
        meta_logits = functional_call(model, lookahead, args=(), kwargs=meta_batch["inputs"]).logits
        meta_loss = F.cross_entropy(meta_logits, meta_batch["labels"])
        meta_grads = torch.autograd.grad(meta_loss, list(self.net.parameters()))
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self.net.parameters(), meta_grads):
            p.grad = g
        self.optimizer.step()
        self.last_meta_grad_norm = float(torch.sqrt(sum((g ** 2).sum() for g in meta_grads)))
        return {"meta_loss": float(meta_loss.detach()), "mean_lambda": float(lam.detach().mean())}


def build_weighting(cfg: WeightingConfig) -> Weighting | None:
    return None if cfg.strategy == "none" else WEIGHTINGS.get(cfg.strategy)(cfg)
