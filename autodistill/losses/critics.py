"""Critics f(x, y) and log-baselines log q(y) for the MI bounds of :mod:`autodistill.losses.mi_bounds`.

A critic takes the student representation x (B, T, d_S) or pooled (B, d_S) and the teacher
representation y (B, T, d_T) or pooled (B, d_T) and returns the (B, B) score matrix
``S[i, j] = f(x_i, y_j)`` (rows = student sample, columns = teacher sample; diagonal = positives).
``mask`` is the (B, T) attention mask (1 = real token) shared by both models.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from autodistill.pooling import cls_vector, masked_mean
from autodistill.registry import CRITICS


def sinusoidal_positions(length: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Fixed sinusoidal position encodings (Vaswani et al. 2017), shape (length, dim)."""
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe.to(dtype) if dtype is not None else pe


def pick_heads(dim: int, heads: int) -> int:
    """Largest head count <= ``heads`` that divides ``dim``."""
    for h in range(max(1, min(heads, dim)), 0, -1):
        if dim % h == 0:
            return h
    return 1


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, out_dim))


# ----------------------------------------------------------------------------- MLP critic
class MLPCritic(nn.Module):
    """Separable MLP critic (Distiller ``mlp_critic``; Poole et al. 2019 separable critic):
    f(x, y) = g(x_cls) . h(y_cls), g and h = Linear-ReLU-Linear-ReLU-Linear."""

    def __init__(self, student_dim: int, teacher_dim: int, hidden: int = 128, out_dim: int = 64):
        super().__init__()
        self.student_net = _mlp(student_dim, hidden, out_dim)
        self.teacher_net = _mlp(teacher_dim, hidden, out_dim)

    def forward(self, h_s: torch.Tensor, h_t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        g = self.student_net(cls_vector(h_s))
        h = self.teacher_net(cls_vector(h_t))
        return g @ h.T


class CosineCritic(nn.Module):
    """CRD-style critic (Tian et al. 2020): f(x, y) = cos(W_s x_cls, W_t y_cls) / tau."""

    def __init__(self, student_dim: int, teacher_dim: int, out_dim: int, temperature: float):
        super().__init__()
        self.student_head = nn.Linear(student_dim, out_dim)
        self.teacher_head = nn.Linear(teacher_dim, out_dim)
        self.temperature = float(temperature)

    def forward(self, h_s, h_t, mask=None):
        g = F.normalize(self.student_head(cls_vector(h_s)), dim=-1)
        h = F.normalize(self.teacher_head(cls_vector(h_t)), dim=-1)
        return (g @ h.T) / self.temperature


# ----------------------------------------------------------------------------- transformer critic
class SequenceEncoder(nn.Module):
    """Sinusoidal positions + ``nn.TransformerEncoder`` (batch_first) + attention-masked mean-pool.

    (B, T, d) -> (B, d); a pooled (B, d) input is treated as a length-1 sequence.
    """

    def __init__(self, dim: int, num_layers: int = 2, heads: int = 8, ffn: int = 512, dropout: float = 0.1):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=dim, nhead=pick_heads(dim, heads), dim_feedforward=ffn,
                                           dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)
        self.dim = dim

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if h.dim() == 2:
            h = h.unsqueeze(1)
            mask = None
        b, t, _ = h.shape
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=h.device)
        mask = mask[:, :t].bool()
        x = h + sinusoidal_positions(t, self.dim, h.device, h.dtype).unsqueeze(0)
        out = self.encoder(x, src_key_padding_mask=~mask)
        return masked_mean(out, mask)


class TransformerCritic(nn.Module):
    """Transformer critic (Distiller ``transformer_critic``, layout fixed to be batch x batch):
    f(x, y) = normalize(W_s meanpool(Enc_s(x + PE))) . normalize(W_t meanpool(Enc_t(y + PE)))."""

    def __init__(self, student_dim: int, teacher_dim: int, out_dim: int = 16, num_layers: int = 2,
                 heads: int = 8, ffn: int = 512, dropout: float = 0.1):
        super().__init__()
        self.student_encoder = SequenceEncoder(student_dim, num_layers, heads, ffn, dropout)
        self.teacher_encoder = SequenceEncoder(teacher_dim, num_layers, heads, ffn, dropout)
        self.student_head = nn.Linear(student_dim, out_dim)
        self.teacher_head = nn.Linear(teacher_dim, out_dim)

    def forward(self, h_s: torch.Tensor, h_t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        g = F.normalize(self.student_head(self.student_encoder(h_s, mask)), dim=-1)   # (B, out)
        h = F.normalize(self.teacher_head(self.teacher_encoder(h_t, mask)), dim=-1)   # (B, out)
        return g @ h.T                                                                  # (B, B)


# ----------------------------------------------------------------------------- baseline
class LogBaseline(nn.Module):
    """Learned log-baseline log q(y) for TUBA / I_alpha (Poole et al. 2019; Distiller ``baseline_fn``).

    kind="mlp": MLP(y_cls) -> 1; kind="transformer": Linear(meanpool(Enc(y + PE))) -> 1. Returns (B,).
    """

    def __init__(self, teacher_dim: int, kind: str = "mlp", hidden: int = 128, num_layers: int = 2,
                 heads: int = 8, ffn: int = 512, dropout: float = 0.1):
        super().__init__()
        if kind not in ("mlp", "transformer"):
            raise ValueError(f"unknown baseline kind {kind!r}")
        self.kind = kind
        if kind == "mlp":
            self.net = _mlp(teacher_dim, hidden, 1)
        else:
            self.encoder = SequenceEncoder(teacher_dim, num_layers, heads, ffn, dropout)
            self.head = nn.Linear(teacher_dim, 1)

    def forward(self, h_t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "mlp":
            return self.net(cls_vector(h_t)).squeeze(-1)
        return self.head(self.encoder(h_t, mask)).squeeze(-1)


# ----------------------------------------------------------------------------- critic families (config: critic)
@CRITICS.register("mlp")
class MLPCritics:
    """On [CLS] vectors: the separable :class:`MLPCritic` f(x, y) = g(x_cls)·h(y_cls) and log q(y) = MLP(y_cls)."""

    teacher_feature = "cls"

    @staticmethod
    def critic(student_dim: int, teacher_dim: int, cfg) -> nn.Module:
        return MLPCritic(student_dim, teacher_dim, cfg.critic_hidden, cfg.critic_dim)

    @staticmethod
    def baseline(teacher_dim: int, cfg) -> nn.Module:
        return LogBaseline(teacher_dim, "mlp", hidden=cfg.critic_hidden)


@CRITICS.register("transformer")
class TransformerCritics:
    """Over token sequences: the :class:`TransformerCritic` f(x, y) = normalize(W_s meanpool(Enc_s(x + PE)))
    · normalize(W_t meanpool(Enc_t(y + PE))) and log q(y) = Linear(meanpool(Enc(y + PE)))."""

    teacher_feature = "tokens"

    @staticmethod
    def critic(student_dim: int, teacher_dim: int, cfg) -> nn.Module:
        return TransformerCritic(student_dim, teacher_dim, out_dim=cfg.critic_dim)

    @staticmethod
    def baseline(teacher_dim: int, cfg) -> nn.Module:
        return LogBaseline(teacher_dim, "transformer")
