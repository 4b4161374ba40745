"""Prediction-layer KD losses on logits.

Every loss returns PER-SAMPLE values of shape (B,); the trainer averages them and applies the
per-sample weights and ``cfg.weight`` (which is NOT applied here). Teacher logits are detached.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autodistill.config import PredictionLossConfig
from autodistill.registry import PREDICTION_LOSSES


class PredictionLoss(nn.Module):
    """Base class: ``per_sample(z_S (B,C), z_T (B,C)) -> (B,)``."""

    def __init__(self, cfg: PredictionLossConfig):
        super().__init__()
        self.cfg = cfg
        self.temperature = float(cfg.temperature)

    def per_sample(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return self.per_sample(student_logits, teacher_logits)

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Called at the start of every (0-based) epoch; no-op by default."""

    @property
    def hard_labels_only(self) -> bool:
        """True when the trainer should use the hard-label loss only (Annealing KD phase 2)."""
        return False


def _check(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(f"expected logits of equal shape (B, C); got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}")


@PREDICTION_LOSSES.register("kl")
class KLDivergenceLoss(PredictionLoss):
    """Vanilla KD (Hinton et al. 2015): tau^2 * KL(softmax(z_T/tau) || softmax(z_S/tau)), summed over classes."""

    def per_sample(self, student_logits, teacher_logits):
        _check(student_logits, teacher_logits)
        tau = self.temperature
        log_p_s = F.log_softmax(student_logits / tau, dim=-1)
        log_p_t = F.log_softmax(teacher_logits.detach() / tau, dim=-1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)
        return kl * tau * tau


@PREDICTION_LOSSES.register("soft_ce")
class SoftCrossEntropyLoss(PredictionLoss):
    """Soft-target CE (TextBrewer/Distiller ``kd_ce_loss``): -sum_c p_T^tau,c * log p_S^tau,c; no tau^2 factor."""

    def per_sample(self, student_logits, teacher_logits):
        _check(student_logits, teacher_logits)
        tau = self.temperature
        p_t = F.softmax(teacher_logits.detach() / tau, dim=-1)
        return -(p_t * F.log_softmax(student_logits / tau, dim=-1)).sum(dim=-1)


@PREDICTION_LOSSES.register("mse")
class LogitMSELoss(PredictionLoss):
    """Logit MSE (TextBrewer/Distiller ``kd_mse_loss``): mean_c (z_S/tau - z_T/tau)^2; works for (B,1) regression."""

    def per_sample(self, student_logits, teacher_logits):
        _check(student_logits, teacher_logits)
        tau = self.temperature
        return ((student_logits - teacher_logits.detach()) / tau).pow(2).mean(dim=-1)


@PREDICTION_LOSSES.register("annealing")
class AnnealingKDLoss(PredictionLoss):
    """Annealing KD (Jafari et al., EACL 2021).

    Phase 1 (epochs 0..E1-1, E1 = max(1, round(phase1_fraction * num_epochs))):
    MSE(z_S, z_T * k / tau_max) averaged over classes, k = 1..tau_max increased by 1 every
    floor(E1 / tau_max) epochs (when E1 < tau_max, k = 1 + floor((tau_max-1) * e / (E1-1)) so that
    k = tau_max in the last phase-1 epoch; k = tau_max when E1 = 1).
    Phase 2 (epochs >= E1): ``hard_labels_only`` is True and ``per_sample`` returns zeros.
    ``cfg.temperature`` is not used. Before the first ``on_epoch_start`` call: phase 1 with k = 1.
    Unlike the paper's phase 1 (this MSE alone), the objective adds ``loss.hard_label_weight`` x CE, as for
    every prediction loss: set it to 0 for the paper's phase 1. The schedule spans the epochs cap
    (``optim.epochs``), so a run that early stopping ends before epoch E1 never reaches phase 2.
    """

    def __init__(self, cfg: PredictionLossConfig):
        super().__init__(cfg)
        self.max_temperature = int(cfg.annealing_max_temperature)
        self.k = 1
        self.phase = 1
        self.phase1_epochs: int | None = None

    @staticmethod
    def phase1_length(fraction: float, num_epochs: float) -> int:
        return max(1, round(fraction * num_epochs))

    @staticmethod
    def k_at(epoch: int, phase1_epochs: int, max_temperature: int) -> int:
        """Annealing factor k for a phase-1 epoch (0-based)."""
        e1, tmax = phase1_epochs, max_temperature
        if e1 >= tmax:
            period = e1 // tmax
            return min(tmax, epoch // period + 1)
        if e1 == 1:
            return tmax
        return min(tmax, 1 + ((tmax - 1) * epoch) // (e1 - 1))

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.phase1_epochs = self.phase1_length(self.cfg.annealing_phase1_fraction, num_epochs)
        if epoch >= self.phase1_epochs:
            self.phase = 2
            self.k = self.max_temperature
        else:
            self.phase = 1
            self.k = self.k_at(epoch, self.phase1_epochs, self.max_temperature)

    @property
    def hard_labels_only(self) -> bool:
        return self.phase == 2

    def per_sample(self, student_logits, teacher_logits):
        _check(student_logits, teacher_logits)
        if self.phase == 2:
            return (student_logits * 0.0).sum(dim=-1)
        target = teacher_logits.detach() * (self.k / self.max_temperature)
        return (student_logits - target).pow(2).mean(dim=-1)


def build_prediction_loss(cfg: PredictionLossConfig) -> PredictionLoss:
    return PREDICTION_LOSSES.get(cfg.type)(cfg)
