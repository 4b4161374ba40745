"""Intermediate-representation KD objectives and the layer-mapping wrapper.

Shapes: student states h_s are (B, T, d_S) (one entry of HF's ``hidden_states`` tuple); the
teacher state h_t is what the trainer cached according to the objective's ``teacher_feature``:
"tokens" -> (B, T, d_T), "cls" -> (B, d_T) (token 0), "mean" -> (B, d_T) (attention-masked mean).
Objectives also accept full (B, T, d_T) teacher states and pool them themselves. ``mask`` is the
(B, T) attention mask (1 = real token). Every loss is PER SAMPLE, shape (B,).
``cfg.weight`` is not applied here (the trainer applies it).
"""
from __future__ import annotations

from typing import ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autodistill.config import ConfigError, IntermediateConfig
from autodistill.losses import mi_bounds
from autodistill.losses.critics import CosineCritic
from autodistill.mappings import EMDMapping, LayerMapping, build_mapping
from autodistill.pooling import Feature, cls_vector, masked_mean, pool_hidden
from autodistill.registry import CRITICS, INTERMEDIATE_OBJECTIVES


# ----------------------------------------------------------------------------- helpers
def _mask_like(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(h.shape[:2], dtype=h.dtype, device=h.device)
    return mask[:, : h.shape[1]].to(h.dtype)


def _masked_token_mean(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T) per-token values -> (B,) mean over unmasked tokens."""
    m = _mask_like(per_token, mask)
    return (per_token * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def _projection(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim)


def normalized_rep_mse(h_s: torch.Tensor, h_t: torch.Tensor, mask: torch.Tensor | None,
                       projection: nn.Module | None = None) -> torch.Tensor:
    """Dynamic KD REP (Li et al., EMNLP 2021): per sample, masked mean over tokens of
    mean_d (normalize(H_S W)_td - normalize(H_T)_td)^2, L2-normalised over the HIDDEN dim.
    Needs d_S == d_T unless ``projection`` (d_S -> d_T) is given. Returns (B,)."""
    if projection is not None:
        h_s = projection(h_s)
    if h_s.shape[-1] != h_t.shape[-1]:
        raise ValueError(f"hidden widths differ ({h_s.shape[-1]} vs {h_t.shape[-1]}); pass a projection")
    diff = (F.normalize(h_s, dim=-1) - F.normalize(h_t, dim=-1)).pow(2).mean(dim=-1)
    if diff.dim() == 1:
        return diff
    return _masked_token_mean(diff, mask)


# ----------------------------------------------------------------------------- base class
class IntermediateObjective(nn.Module):
    """Base: ``pair_loss(s_layer, t_layer, h_s, h_t, mask) -> (B,)``.

    ``pairs`` lists every (student, teacher) pair the mapping may produce; per-student-layer
    parameters (projections) are created for each student layer in it, per-pair parameters
    (critics) for each pair, or per student layer when ``share_across_teacher_layers`` (RAIL's
    random mapping). Without ``pairs``, all pairs of 0..L_S x 0..L_T are assumed.
    ``reduction`` says how the wrapper combines weighted pair losses: "sum" (Distiller/TinyBERT/PKD)
    or "mean" (RAIL-KD's 1/m).
    """

    teacher_feature: ClassVar[Feature] = "tokens"
    pairwise: ClassVar[bool] = True
    reduction: ClassVar[str] = "sum"

    def __init__(self, cfg: IntermediateConfig, student_dim: int, teacher_dim: int, student_layers: int,
                 teacher_layers: int, *, pairs: Sequence[tuple[int, int]] | None = None,
                 share_across_teacher_layers: bool = False, num_pairs: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.student_dim, self.teacher_dim = int(student_dim), int(teacher_dim)
        self.student_layers, self.teacher_layers = int(student_layers), int(teacher_layers)
        if pairs is None:
            pairs = [(s, t) for s in range(self.student_layers + 1) for t in range(self.teacher_layers + 1)]
        self.param_pairs = sorted({(int(s), int(t)) for s, t in pairs})
        self.share_across_teacher_layers = share_across_teacher_layers
        self.num_pairs = num_pairs

    # keys for ModuleDicts
    def student_keys(self) -> list[int]:
        return sorted({s for s, _ in self.param_pairs})

    def teacher_keys(self) -> list[int]:
        return sorted({t for _, t in self.param_pairs})

    def pair_keys(self) -> list[str]:
        return sorted({self.pair_key(s, t) for s, t in self.param_pairs})

    def pair_key(self, s_layer: int, t_layer: int) -> str:
        return str(s_layer) if self.share_across_teacher_layers else f"{s_layer}_{t_layer}"

    @staticmethod
    def _get(modules: nn.ModuleDict, key, what: str) -> nn.Module:
        try:
            return modules[str(key)]
        except KeyError:
            raise KeyError(f"no {what} for {key!r}; built for {list(modules.keys())}") from None

    def pair_loss(self, s_layer: int, t_layer: int, h_s: torch.Tensor, h_t: torch.Tensor,
                  mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


class _ProjectedObjective(IntermediateObjective):
    """Objectives with a learned W (d_S -> d_T) per student layer when widths differ."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.projections = nn.ModuleDict({str(s): _projection(self.student_dim, self.teacher_dim)
                                          for s in self.student_keys()})

    def project(self, s_layer: int, h_s: torch.Tensor) -> torch.Tensor:
        return self._get(self.projections, s_layer, "projection")(h_s)


# ----------------------------------------------------------------------------- token-level objectives
@INTERMEDIATE_OBJECTIVES.register("mse")
class HiddenMSE(_ProjectedObjective):
    """Hidden MSE (TinyBERT, Jiao et al. 2020; Distiller ``hidden_mse``):
    masked mean over tokens and dims of (H_S W - H_T)^2; W = identity when d_S == d_T."""

    teacher_feature = "tokens"

    def pair_loss(self, s_layer, t_layer, h_s, h_t, mask):
        per_token = (self.project(s_layer, h_s) - h_t).pow(2).mean(dim=-1)
        return _masked_token_mean(per_token, mask)


@INTERMEDIATE_OBJECTIVES.register("hidden_ce")
class HiddenCE(_ProjectedObjective):
    """Hidden soft CE (Distiller ``hidden_ce``): per token -sum_d softmax(H_T)_d log_softmax(H_S W)_d,
    masked mean over tokens."""

    teacher_feature = "tokens"

    def pair_loss(self, s_layer, t_layer, h_s, h_t, mask):
        per_token = -(F.softmax(h_t, dim=-1) * F.log_softmax(self.project(s_layer, h_s), dim=-1)).sum(dim=-1)
        return _masked_token_mean(per_token, mask)


@INTERMEDIATE_OBJECTIVES.register("cos")
class HiddenCosine(_ProjectedObjective):
    """Cosine-embedding loss (DistilBERT, Sanh et al. 2019): mean over unmasked tokens of
    1 - cos(H_S W, H_T)."""

    teacher_feature = "tokens"

    def pair_loss(self, s_layer, t_layer, h_s, h_t, mask):
        per_token = 1.0 - F.cosine_similarity(self.project(s_layer, h_s), h_t, dim=-1, eps=1e-8)
        return _masked_token_mean(per_token, mask)


@INTERMEDIATE_OBJECTIVES.register("pkd")
class PatientKD(_ProjectedObjective):
    """Patient KD (Sun et al. 2019): || h_S W/||h_S W|| - h_T/||h_T|| ||_2^2 on the [CLS] vectors."""

    teacher_feature = "cls"

    def pair_loss(self, s_layer, t_layer, h_s, h_t, mask):
        s = F.normalize(self.project(s_layer, cls_vector(h_s)), dim=-1)
        t = F.normalize(cls_vector(h_t), dim=-1)
        return (s - t).pow(2).sum(dim=-1)


class DynamicKDRepresentation(_ProjectedObjective):
    """Dynamic KD's REP loss per layer pair (Li et al., EMNLP 2021): :func:`normalized_rep_mse` of
    H_S^s W and H_T^t. Not a user-selectable objective: objective adaptation builds it
    (:func:`build_representation`) over loss.intermediate.mapping."""

    teacher_feature = "tokens"

    def pair_loss(self, s_layer, t_layer, h_s, h_t, mask):
        return normalized_rep_mse(h_s, h_t, mask, self._get(self.projections, s_layer, "projection"))


# ----------------------------------------------------------------------------- MI objectives
def _zeros_like_batch(h_s: torch.Tensor) -> torch.Tensor:
    """Zero (B,) loss connected to the graph (MI bounds are undefined for B < 2)."""
    return h_s.reshape(h_s.shape[0], -1).sum(dim=-1) * 0.0


class _CriticObjective(IntermediateObjective):
    """MI objectives: loss_j = -(per-sample bound term); its batch mean is -bound."""

    teacher_feature = "cls"
    uses_baseline: ClassVar[bool] = False
    min_batch: ClassVar[int] = 2

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.critics = nn.ModuleDict({k: self.make_critic() for k in self.pair_keys()})
        if self.uses_baseline:
            self.baselines = nn.ModuleDict({k: self.make_baseline() for k in self.pair_keys()})

    def make_critic(self) -> nn.Module:
        return CRITICS.get("mlp").critic(self.student_dim, self.teacher_dim, self.cfg)

    def make_baseline(self) -> nn.Module:
        return CRITICS.get("mlp").baseline(self.teacher_dim, self.cfg)

    def bound_per_sample(self, scores, log_baseline):
        raise NotImplementedError

    def pair_loss(self, s_layer, t_layer, h_s, h_t, mask):
        if h_s.shape[0] < self.min_batch:
            return _zeros_like_batch(h_s)
        key = self.pair_key(s_layer, t_layer)
        scores = self._get(self.critics, key, "critic")(h_s, h_t, mask)
        log_q = self._get(self.baselines, key, "baseline")(h_t, mask) if self.uses_baseline else None
        return -self.bound_per_sample(scores, log_q)


@INTERMEDIATE_OBJECTIVES.register("infonce")
class InfoNCEObjective(_CriticObjective):
    """Contrastive KD (CRD, Tian et al. 2020): -I_NCE with batch negatives,
    f(x_i, y_j) = cos(W_s x_i,cls, W_t y_j,cls) / tau; loss_i = -(S_ii - logsumexp_j S_ij + log B)."""

    min_batch = 1

    def make_critic(self):
        return CosineCritic(self.student_dim, self.teacher_dim, self.cfg.critic_dim, self.cfg.infonce_temperature)

    def bound_per_sample(self, scores, log_baseline):
        return mi_bounds.infonce_per_sample(scores)


@INTERMEDIATE_OBJECTIVES.register("nwj")
class NWJObjective(_CriticObjective):
    """NWJ (Nguyen et al. 2010; Poole et al. 2019) with an MLP critic:
    -(E_p[f] - e^{-1} E_{p(x)p(y)}[e^f])."""

    def bound_per_sample(self, scores, log_baseline):
        return mi_bounds.nwj_per_sample(scores)


@INTERMEDIATE_OBJECTIVES.register("tuba")
class TUBAObjective(_CriticObjective):
    """TUBA (Poole et al. 2019) with an MLP critic and learned log-baseline a(y):
    -(1 + E_p[f - a(y)] - E_{p(x)p(y)}[e^{f - a(y)}])."""

    uses_baseline = True

    def bound_per_sample(self, scores, log_baseline):
        return mi_bounds.tuba_per_sample(scores, log_baseline)


@INTERMEDIATE_OBJECTIVES.register("mi_alpha")
class MIAlphaObjective(_CriticObjective):
    """MI-alpha (He et al. 2021, Distiller) = -I_alpha (Poole et al. 2019) with the critic family cfg.critic
    (registry ``CRITICS``: mlp on [CLS] or transformer over tokens) and learned log q(y) of the same family;
    alpha = cfg.alpha is the true mixture weight (1: leave-one-out InfoNCE-type, 0: TUBA)."""

    uses_baseline = True

    def __init__(self, cfg, *args, **kwargs):
        self.alpha = 0.9 if cfg.alpha is None else float(cfg.alpha)
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError("loss.intermediate.alpha must lie in [0, 1] (the true mixture weight)")
        self.critic_family = CRITICS.get(cfg.critic)
        super().__init__(cfg, *args, **kwargs)
        self.teacher_feature = self.critic_family.teacher_feature

    def make_critic(self):
        return self.critic_family.critic(self.student_dim, self.teacher_dim, self.cfg)

    def make_baseline(self):
        return self.critic_family.baseline(self.teacher_dim, self.cfg)

    def bound_per_sample(self, scores, log_baseline):
        return mi_bounds.interpolated_per_sample(scores, log_baseline, self.alpha)


# ----------------------------------------------------------------------------- RAIL-KD
@INTERMEDIATE_OBJECTIVES.register("rail_l")
class RAILLayerwise(IntermediateObjective):
    """RAIL-KD_l (Haidar et al. 2022): per pair || n(W_S^j mean(H_S^j)) - n(W_T^k mean(H_T^k)) ||_2
    (plain L2 norm, n = L2-normalise, attention-masked mean-pool, one projection -> u per layer on
    each side); the wrapper averages over the m pairs (reduction "mean")."""

    teacher_feature = "mean"
    reduction = "mean"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        u = self.cfg.projection_dim
        self.student_projections = nn.ModuleDict({str(s): nn.Linear(self.student_dim, u) for s in self.student_keys()})
        self.teacher_projections = nn.ModuleDict({str(t): nn.Linear(self.teacher_dim, u) for t in self.teacher_keys()})

    def pair_loss(self, s_layer, t_layer, h_s, h_t, mask):
        s = F.normalize(self._get(self.student_projections, s_layer, "student projection")(masked_mean(h_s, mask)), dim=-1)
        t = F.normalize(self._get(self.teacher_projections, t_layer, "teacher projection")(masked_mean(h_t, mask)), dim=-1)
        return (s - t).norm(dim=-1)


@INTERMEDIATE_OBJECTIVES.register("rail_c")
class RAILConcatenated(IntermediateObjective):
    """RAIL-KD_c (Haidar et al. 2022): concatenate the m mean-pooled mapped layers per side, one linear
    map each -> u, L2-normalise: || n(W_S [h_S^1;...;h_S^m]) - n(W_T [h_T^k1;...;h_T^km]) ||_2."""

    teacher_feature = "mean"
    pairwise = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        m = self.num_pairs if self.num_pairs is not None else self.student_layers
        self.m = int(m)
        u = self.cfg.projection_dim
        self.student_projection = nn.Linear(self.m * self.student_dim, u)
        self.teacher_projection = nn.Linear(self.m * self.teacher_dim, u)

    def forward(self, student_hidden: Sequence[torch.Tensor], teacher_hidden: Mapping[int, torch.Tensor],
                pairs: Sequence[tuple[int, int, float]], mask: torch.Tensor | None) -> torch.Tensor:
        if len(pairs) != self.m:
            raise ValueError(f"rail_c was built for {self.m} layer pairs, got {len(pairs)}")
        s = torch.cat([masked_mean(student_hidden[p[0]], mask) for p in pairs], dim=-1)
        t = torch.cat([masked_mean(teacher_hidden[p[1]], mask) for p in pairs], dim=-1)
        s = F.normalize(self.student_projection(s), dim=-1)
        t = F.normalize(self.teacher_projection(t), dim=-1)
        return (s - t).norm(dim=-1)


# ----------------------------------------------------------------------------- wrapper
class IntermediateDistillation(nn.Module):
    """Layer mapping + objective: L_inter = sum_(s,t,w) w * l(H_S^s, H_T^t) (Distiller ``compute_loss``),
    divided by sum w for "mean" objectives (RAIL-KD); EMD (BERT-EMD, Li et al. 2020):
    L = sum_ij F_ij * l(H_S^i, H_T^j) + l(H_S^0, H_T^0), with F the EMD flow of the detached
    batch-mean costs. Returns (B,)."""

    def __init__(self, cfg: IntermediateConfig, mapping: LayerMapping, objective: IntermediateObjective):
        super().__init__()
        self.cfg = cfg
        self.mapping = mapping
        self.objective = objective

    @property
    def teacher_feature(self) -> Feature:
        return self.objective.teacher_feature

    def teacher_layers_needed(self) -> set[int]:
        return self.mapping.teacher_layers_needed()

    def teacher_features(self, teacher_hidden: Sequence[torch.Tensor], attention_mask) -> dict[int, torch.Tensor]:
        """From a full HF teacher ``hidden_states`` tuple, the dict the trainer should cache/pass."""
        return {t: pool_hidden(teacher_hidden[t], attention_mask, self.teacher_feature)
                for t in sorted(self.teacher_layers_needed())}

    def on_epoch_start(self, epoch: int) -> None:
        self.mapping.on_epoch_start(epoch)

    def on_step(self) -> None:
        self.mapping.on_step()

    def forward(self, student_hidden: Sequence[torch.Tensor], teacher_hidden: Mapping[int, torch.Tensor],
                attention_mask: torch.Tensor | None) -> torch.Tensor:
        obj = self.objective
        if isinstance(self.mapping, EMDMapping):
            return self._emd(student_hidden, teacher_hidden, attention_mask)
        pairs = self.mapping.pairs()
        if not obj.pairwise:
            return obj(student_hidden, teacher_hidden, pairs, attention_mask)
        total, weight_sum = None, 0.0
        for s, t, w in pairs:
            if w == 0.0:
                continue
            term = w * obj.pair_loss(s, t, student_hidden[s], teacher_hidden[t], attention_mask)
            total = term if total is None else total + term
            weight_sum += w
        if total is None:
            return _zeros_like_batch(student_hidden[-1])
        if obj.reduction == "mean":
            total = total / weight_sum
        return total

    def _emd(self, student_hidden, teacher_hidden, attention_mask) -> torch.Tensor:
        obj, mapping = self.objective, self.mapping
        ls, lt = mapping.student_layers, mapping.teacher_layers
        costs = torch.stack([
            torch.stack([obj.pair_loss(i, j, student_hidden[i], teacher_hidden[j], attention_mask)
                         for j in range(1, lt + 1)])
            for i in range(1, ls + 1)])                                  # (L_S, L_T, B)
        flow = mapping.solve(costs.detach().mean(dim=-1).double().cpu().numpy())
        flow_t = torch.as_tensor(flow, dtype=costs.dtype, device=costs.device)
        loss = (flow_t.unsqueeze(-1) * costs).sum(dim=(0, 1))
        return loss + obj.pair_loss(0, 0, student_hidden[0], teacher_hidden[0], attention_mask)


def build_intermediate(cfg: IntermediateConfig, student_layers: int, teacher_layers: int, student_dim: int,
                       teacher_dim: int, seed: int = 0) -> IntermediateDistillation | None:
    """Mapping + objective for ``cfg``; None when cfg.objective == "none"."""
    if cfg.objective == "none":
        return None
    mapping = build_mapping(cfg, student_layers, teacher_layers, seed)
    cls = INTERMEDIATE_OBJECTIVES.get(cfg.objective)
    if not cls.pairwise and mapping.many_to_many:
        raise ConfigError(f"loss.intermediate.mapping={cfg.mapping!r} cannot be combined with "
                          f"objective={cfg.objective!r} (it needs a one-to-one mapping)")
    objective = cls(cfg, student_dim, teacher_dim, student_layers, teacher_layers,
                    pairs=mapping.possible_pairs(),
                    share_across_teacher_layers=(cfg.mapping == "random"),
                    num_pairs=len(mapping.pairs()))
    return IntermediateDistillation(cfg, mapping, objective)


def build_representation(cfg: IntermediateConfig, student_layers: int, teacher_layers: int, student_dim: int,
                         teacher_dim: int, seed: int = 0) -> IntermediateDistillation:
    """Dynamic KD objective adaptation's REP = sum_(s,t,w) w * REP(H_S^s, H_T^t) over cfg.mapping, with the
    same wrapper (EMD flow, epoch/step hooks of the random mapping) as the plain intermediate loss."""
    mapping = build_mapping(cfg, student_layers, teacher_layers, seed)
    objective = DynamicKDRepresentation(cfg, student_dim, teacher_dim, student_layers, teacher_layers,
                                        pairs=mapping.possible_pairs(), num_pairs=len(mapping.pairs()))
    return IntermediateDistillation(cfg, mapping, objective)
