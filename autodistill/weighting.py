"""Per-sample balance between the label loss and the KD loss: L = (1/B) Σ_i (1 − λ_i)·CE_i + λ_i·KD_i.

With Dynamic KD data selection (S = the KD subset of the batch, λ_i = 0 outside S) and objective
adaptation (REP_i), the step's objective is :func:`kd_objective`; RW-KD's look-ahead optimises that
same function.

Strategies (registry ``WEIGHTINGS``): ``fixed`` λ, ``linear`` / ``cosine`` annealing schedules of λ,
and RW-KD's meta-learned λ_i (Lu et al., "Learning to Weight Samples for Knowledge Distillation"
style, Findings of EMNLP 2021).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from .config import WeightingConfig
from .registry import WEIGHTINGS


Weight = float | torch.Tensor


def kd_objective(ce: torch.Tensor, kd: torch.Tensor, rep: torch.Tensor | None, ce_weight: Weight,
                 kd_weight: Weight, selected: torch.Tensor) -> torch.Tensor:
    """The label + KD part of every KD step (plain and RW-KD look-ahead alike):

        L = (1/B) Σ_i w_CE,i·CE_i + (1/|S|) Σ_{i∈S} (w_KD,i·KD_i + REP_i)

    ``kd`` and ``rep`` are (B,) and zero outside S (``selected``: the indices of S); ``rep`` already
    carries its own weight (objective adaptation's w_REP·u_i), so it never depends on w_KD. Weights
    are scalars (loss.hard_label_weight, loss.prediction.weight) or per-sample λ tensors.
    """
    ce_term = ce_weight * ce.mean() if isinstance(ce_weight, float) else (ce_weight * ce).mean()
    n = int(selected.numel())
    if n == 0:
        return ce_term
    if isinstance(kd_weight, float):
        kd_sel = kd[selected]
        kd_term = kd_weight * kd_sel.mean() if rep is None else (kd_weight * kd_sel + rep[selected]).mean()
    else:
        kd_term = (kd_weight * kd).sum() / n if rep is None else (kd_weight * kd + rep).sum() / n
    return ce_term + kd_term


@dataclass
class StepTerms:
    """Per-sample terms of one KD step, from one student forward: what :func:`kd_objective` and the
    meta-learner's signals need. ``kd``/``rep``/``teacher_logits`` are zero outside ``selected``."""

    logits: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor
    rep: torch.Tensor | None
    teacher_logits: torch.Tensor
    selected: torch.Tensor

    def in_selection(self) -> torch.Tensor:
        mask = torch.zeros(self.ce.shape[0], dtype=torch.bool, device=self.ce.device)
        mask[self.selected] = True
        return mask


TermsFn = Callable[[Any], StepTerms]


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

    def step_lambdas(self, terms: StepTerms, labels: torch.Tensor, progress: float) -> torch.Tensor:
        """λ_i of a step's samples from its terms; 0 outside the KD subset."""
        signals = sample_signals(terms.logits, terms.teacher_logits, labels, terms.ce, terms.kd)
        lam = self.lambdas(signals, progress)
        return torch.where(terms.in_selection(), lam, torch.zeros_like(lam))

    def meta_step(self, model: nn.Module, inputs: dict, labels: torch.Tensor, terms_fn: TermsFn,
                  meta_batch: dict | None, output_hidden_states: bool = False) -> dict[str, float]:
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

        θ'(φ) = θ − η ∇_θ L_step(θ, λ(φ))
        φ ← φ − β ∇_φ CE(meta batch; θ'(φ))

    L_step is :func:`kd_objective` on the terms the real step computes (``terms_fn``: the same KD
    subset, teachers, adoption and objective adaptation, with teacher outputs computed once for both),
    so the meta-learner weights exactly the objective it is trained for. The λ-independent terms of the
    step (intermediate loss, mixup) are left out of the look-ahead: they do not depend on φ.
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

    def meta_step(self, model: nn.Module, inputs: dict, labels: torch.Tensor, terms_fn: TermsFn,
                  meta_batch: dict | None, output_hidden_states: bool = False) -> dict[str, float]:
        self.steps += 1
        if meta_batch is None or (self.steps - 1) % self.cfg.meta_interval:
            return {}
        self.net.to(labels.device)
        meta_loss, lam, inner = self.meta_objective(model, inputs, labels, terms_fn, meta_batch,
                                                    output_hidden_states)
        meta_grads = torch.autograd.grad(meta_loss, list(self.net.parameters()))
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self.net.parameters(), meta_grads):
            p.grad = g
        self.optimizer.step()
        self.last_meta_grad_norm = float(torch.sqrt(sum((g ** 2).sum() for g in meta_grads)))
        return {"meta_loss": float(meta_loss.detach()), "mean_lambda": float(lam.detach().mean()),
                "meta_inner_loss": float(inner.detach())}

    def meta_objective(self, model: nn.Module, inputs: dict, labels: torch.Tensor, terms_fn: TermsFn,
                       meta_batch: dict, output_hidden_states: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(CE(meta batch; θ'(φ)), λ of the selected samples, L_step at θ): differentiable in φ."""
        # The look-ahead differentiates through a gradient: the fused scaled-dot-product-attention
        # kernels (flash / memory-efficient, used by BERT's default "sdpa" attention) have no
        # double backward, the math kernel has.
        with sdpa_kernel(SDPBackend.MATH):
            params = {n: p for n, p in model.named_parameters() if p.requires_grad}
            kwargs = {**inputs, "output_hidden_states": True} if output_hidden_states else inputs
            terms = terms_fn(functional_call(model, params, args=(), kwargs=kwargs))
            lam = self.net(sample_signals(terms.logits, terms.teacher_logits, labels, terms.ce, terms.kd))
            lam = torch.where(terms.in_selection(), lam, torch.zeros_like(lam))
            inner = kd_objective(terms.ce, terms.kd, terms.rep, 1 - lam, lam, terms.selected)
            names = list(params)
            grads = torch.autograd.grad(inner, [params[n] for n in names], create_graph=True, allow_unused=True)
            lookahead = {n: params[n] - self.cfg.lookahead_learning_rate * g if g is not None else params[n]
                         for n, g in zip(names, grads)}
            meta_logits = functional_call(model, lookahead, args=(), kwargs=meta_batch["inputs"]).logits
            return F.cross_entropy(meta_logits, meta_batch["labels"]), lam[terms.selected], inner


def build_weighting(cfg: WeightingConfig) -> Weighting | None:
    return None if cfg.strategy == "none" else WEIGHTINGS.get(cfg.strategy)(cfg)
