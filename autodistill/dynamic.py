"""Dynamic KD (Li et al., "Dynamic Knowledge Distillation for Pre-trained Language Models", EMNLP 2021).

Everything is driven by the student's own uncertainty u = H(p_S) / log C  (in [0, 1]):
- data selection (registry ``KD_SELECTIONS``): KD only on the top ⌊r·B⌋ samples of a batch by an
  informativeness score;
- teacher adoption (registry ``TEACHER_ADOPTIONS``): route or weight samples between teachers by u;
- objective adaptation: per sample (1 − u_i)·KD_i + u_i·REP_i.

Selection and adoption are components like the losses: built once from the config
(:func:`build_selection`, :func:`build_adoption`) and called every step.
"""
from __future__ import annotations

import math

import torch

from .config import DynamicKDConfig
from .registry import KD_SELECTIONS, TEACHER_ADOPTIONS


def uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """u = H(softmax(z)) / log C, per sample, in [0, 1]."""
    num_classes = logits.shape[-1]
    if num_classes < 2:
        raise ValueError("uncertainty needs at least two classes")
    logp = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return (entropy / math.log(num_classes)).clamp(0.0, 1.0)


# --------------------------------------------------------------------------- data selection
class KDSelection:
    """Dynamic KD data selection (Li et al. 2021, Sec. 3.1): S = argtop_{⌊r·B⌋} s(x_i), the ⌊r·B⌋ samples
    of the batch with the highest informativeness score s (sorted indices); every sample when r ≥ 1."""

    def __init__(self, ratio: float = 1.0):
        self.ratio = ratio

    def score(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def select(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        batch = logits.shape[0]
        if self.ratio >= 1.0:
            return torch.arange(batch, device=logits.device)
        keep = math.floor(self.ratio * batch)
        return self.score(logits.detach(), generator).topk(keep).indices.sort().values


@KD_SELECTIONS.register("none")
class AllSamples(KDSelection):
    """No selection: S = the whole batch, whatever the ratio."""

    def __init__(self, ratio: float = 1.0):
        super().__init__(1.0)


@KD_SELECTIONS.register("entropy")
class EntropySelection(KDSelection):
    """s_i = u_i = H(p_S(x_i)) / log C: the most uncertain samples (higher = more uncertain)."""

    def score(self, logits, generator=None):
        return uncertainty(logits)


@KD_SELECTIONS.register("margin")
class MarginSelection(KDSelection):
    """s_i = −(p_(1) − p_(2)): the smallest gap between the two most probable classes."""

    def score(self, logits, generator=None):
        top2 = torch.softmax(logits.float(), -1).topk(2, dim=-1).values
        return -(top2[:, 0] - top2[:, 1])


@KD_SELECTIONS.register("least_confidence")
class LeastConfidenceSelection(KDSelection):
    """s_i = −max_c p_c: the lowest maximum probability."""

    def score(self, logits, generator=None):
        return -torch.softmax(logits.float(), -1).max(-1).values


@KD_SELECTIONS.register("random")
class RandomSelection(KDSelection):
    """s_i = ξ_i with ξ_i ~ U(0, 1): a random subset of ⌊r·B⌋ samples (the paper's control)."""

    def score(self, logits, generator=None):
        return torch.rand(logits.shape[0], generator=generator).to(logits.device)


def build_selection(cfg: DynamicKDConfig) -> KDSelection:
    return KD_SELECTIONS.get(cfg.selection)(cfg.selection_ratio)


def select_for_kd(logits: torch.Tensor, strategy: str, ratio: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices (sorted) of the top ⌊ratio·B⌋ samples by the strategy's score; all when strategy is none."""
    return KD_SELECTIONS.get(strategy)(ratio).select(logits, generator)


# --------------------------------------------------------------------------- teacher adoption
class TeacherAdoption:
    """Dynamic KD teacher adoption (Li et al. 2021, Sec. 3.2): KD_i = Σ_k w_ik(u_i)·KD_ik over K teachers,
    each row of w summing to 1. Teachers are listed from the one for uncertain samples (index 0; the
    paper's smaller BERT-base) to the one for confident samples (index K−1; the paper's BERT-large)."""

    def weights(self, u: torch.Tensor, num_teachers: int) -> torch.Tensor:
        """(B, K) weights over K teachers for uncertainties ``u`` (B,)."""
        raise NotImplementedError

    def combine(self, kd_per_teacher: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        """KD_i = Σ_k w_ik·KD_ik from the (B, K) per-teacher KD losses and the student's logits (B, C)."""
        weights = self.weights(uncertainty(student_logits.detach()), kd_per_teacher.shape[-1])
        return (weights * kd_per_teacher).sum(-1)


@TEACHER_ADOPTIONS.register("none")
class FirstTeacher(TeacherAdoption):
    """No adoption: KD_i = KD_i1, the first (only) teacher's loss."""

    def weights(self, u, num_teachers):
        weights = torch.zeros(u.shape[0], num_teachers, device=u.device)
        weights[:, 0] = 1.0
        return weights

    def combine(self, kd_per_teacher, student_logits):
        return kd_per_teacher[:, 0]


@TEACHER_ADOPTIONS.register("hard")
class HardAdoption(TeacherAdoption):
    """w_ik = 1[k = ⌊K·rank(u_i)/B⌋]: the batch ranked by u (most uncertain first) and cut into K equal
    groups, the uncertain group to teacher 0."""

    def weights(self, u, num_teachers):
        batch = u.shape[0]
        order = torch.argsort(u, descending=True)
        groups = torch.zeros(batch, dtype=torch.long, device=u.device)
        groups[order] = torch.arange(batch, device=u.device) * num_teachers // max(batch, 1)
        return torch.nn.functional.one_hot(groups, num_teachers).float()


def interpolated_weights(u: torch.Tensor, num_teachers: int) -> torch.Tensor:
    """w(u): linear interpolation on the teacher axis at position (1 − u)(K − 1); for K = 2, w = (u, 1 − u)."""
    position = (1.0 - u) * (num_teachers - 1)
    low = position.floor().long().clamp(max=num_teachers - 1)
    frac = position - low.float()
    weights = torch.zeros(u.shape[0], num_teachers, device=u.device)
    weights.scatter_(1, low.unsqueeze(1), (1.0 - frac).unsqueeze(1))
    high = (low + 1).clamp(max=num_teachers - 1)
    weights.scatter_add_(1, high.unsqueeze(1), frac.unsqueeze(1))
    return weights


@TEACHER_ADOPTIONS.register("soft")
class SoftAdoption(TeacherAdoption):
    """Batch level: every row w_i = w(ū), ū = (1/B) Σ_i u_i, with w(u) of :func:`interpolated_weights`."""

    def weights(self, u, num_teachers):
        return interpolated_weights(u.mean().expand(u.shape[0]), num_teachers)


@TEACHER_ADOPTIONS.register("soft_instance")
class SoftInstanceAdoption(TeacherAdoption):
    """Per sample: w_i = w(u_i), with w(u) of :func:`interpolated_weights`."""

    def weights(self, u, num_teachers):
        return interpolated_weights(u, num_teachers)


def build_adoption(cfg: DynamicKDConfig) -> TeacherAdoption:
    return TEACHER_ADOPTIONS.get(cfg.adoption)()


def adoption_weights(u: torch.Tensor, mode: str, num_teachers: int) -> torch.Tensor:
    """(B, K) weights over K teachers, each row summing to 1, for the adoption ``mode``."""
    return TEACHER_ADOPTIONS.get(mode)().weights(u, num_teachers)


# --------------------------------------------------------------------------- objective adaptation
def adapted_terms(kd: torch.Tensor, rep: torch.Tensor, u: torch.Tensor, rep_weight: float = 1.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic KD objective adaptation, per sample: (KD_i, REP_i) ← ((1 − u_i)·KD_i, w_REP·u_i·REP_i), so the
    loss (1 − u_i)·KD_i + w_REP·u_i·REP_i leans on the representations where the student is uncertain.
    The two terms are returned apart because the prediction loss's weight multiplies the first alone."""
    return (1.0 - u) * kd, rep_weight * u * rep
