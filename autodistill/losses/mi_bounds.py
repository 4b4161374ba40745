"""Variational lower bounds on mutual information, as pure functions of a critic score matrix.

Convention (used everywhere in autodistill): ``scores`` is (B, B) with
``scores[i, j] = f(x_i, y_j)``, x = student representation, y = teacher representation, and the
diagonal holds the positive (jointly drawn) pairs. ``log_baseline[j] = log q(y_j)`` is indexed by
the teacher sample, i.e. by the COLUMN. (The Poole et al. reference code builds its matrix as
``scores[i, j] = f(x_j, y_i)``, rows = y; this module is its transpose, with the same semantics.)

``*_per_sample`` return a (B,) vector whose mean is the bound; for TUBA/NWJ/I_alpha the entry j
gathers every term that involves the teacher sample y_j. All bounds with off-diagonal terms need
B >= 2.
Reference: Poole, Ozair, van den Oord, Alemi, Tucker, "On Variational Bounds of Mutual
Information", ICML 2019.
"""
from __future__ import annotations

import math

import torch


def _check_scores(scores: torch.Tensor, min_batch: int = 1) -> int:
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be a square (B, B) matrix, got {tuple(scores.shape)}")
    b = scores.shape[0]
    if b < min_batch:
        raise ValueError(f"this bound needs a batch of at least {min_batch}, got {b}")
    return b


def _column_baseline(log_baseline, scores: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(log_baseline, dtype=scores.dtype, device=scores.device)
    if a.dim() == 0:
        return a.expand(scores.shape[0])
    a = a.reshape(-1)
    if a.shape[0] != scores.shape[0]:
        raise ValueError(f"log_baseline must have shape (B,) = ({scores.shape[0]},), got {tuple(a.shape)}")
    return a


def _eye(b: int, device) -> torch.Tensor:
    return torch.eye(b, dtype=torch.bool, device=device)


# ----------------------------------------------------------------------------- InfoNCE
def infonce_per_sample(scores: torch.Tensor) -> torch.Tensor:
    """InfoNCE (van den Oord et al. 2018): S_ii - logsumexp_j S_ij + log B, per sample i."""
    b = _check_scores(scores)
    return scores.diagonal() - torch.logsumexp(scores, dim=1) + math.log(b)


def infonce_lower_bound(scores: torch.Tensor) -> torch.Tensor:
    """I_NCE = mean_i [S_ii - logsumexp_j S_ij] + log B."""
    return infonce_per_sample(scores).mean()


# ----------------------------------------------------------------------------- TUBA / NWJ
def tuba_per_sample(scores: torch.Tensor, log_baseline) -> torch.Tensor:
    """TUBA per teacher sample j, critic shifted by the baseline a_j = log q(y_j):

    t_j = 1 + (S_jj - a_j) - mean_{i != j} exp(S_ij - a_j).
    """
    b = _check_scores(scores, 2)
    a = _column_baseline(log_baseline, scores)
    shifted = scores - a[None, :]
    joint = shifted.diagonal()
    marg = torch.exp(shifted.masked_fill(_eye(b, scores.device), float("-inf"))).sum(dim=0) / (b - 1)
    return 1.0 + joint - marg


def tuba_lower_bound(scores: torch.Tensor, log_baseline) -> torch.Tensor:
    """TUBA (Poole et al. 2019) with f shifted by the column's log-baseline a_j = log q(y_j):

    I_TUBA = 1 + E_p(x,y)[f(x,y) - a(y)] - E_p(x)p(y)[exp(f(x,y) - a(y))]
           = 1 + mean_j (S_jj - a_j) - mean_{i != j} exp(S_ij - a_j).
    ``log_baseline`` may be a (B,) tensor or a scalar.
    """
    return tuba_per_sample(scores, log_baseline).mean()


def nwj_per_sample(scores: torch.Tensor) -> torch.Tensor:
    """NWJ per teacher sample j: TUBA with log-baseline 1."""
    return tuba_per_sample(scores, 1.0)


def nwj_lower_bound(scores: torch.Tensor) -> torch.Tensor:
    """NWJ / f-GAN KL (Nguyen et al. 2010; Poole et al. 2019): I = E_p[f] - e^{-1} E_{p(x)p(y)}[e^f]
    = TUBA with log-baseline 1."""
    return nwj_per_sample(scores).mean()


# ----------------------------------------------------------------------------- I_alpha
def log_loo_mean(scores: torch.Tensor) -> torch.Tensor:
    """Leave-one-out log-mean-exp down each column.

    ``out[l, j] = log( 1/(B-1) * sum_{k != l} exp(S[k, j]) )``: the log of the Monte-Carlo
    partition estimate m(y_j; x_{1:K}) built from every batch item except x_l (K = B - 1).
    (Poole et al.'s ``compute_log_loomean``, transposed to this module's convention; computed
    exactly with a masked logsumexp instead of the softplus-inverse trick.)
    """
    b = _check_scores(scores, 2)
    eye = _eye(b, scores.device)
    expanded = scores.unsqueeze(0).expand(b, b, b)            # [l, k, j] = S[k, j]
    masked = expanded.masked_fill(eye.unsqueeze(-1), float("-inf"))
    return torch.logsumexp(masked, dim=1) - math.log(b - 1)


def log_interpolate(log_a: torch.Tensor, log_b: torch.Tensor, alpha: float) -> torch.Tensor:
    """log(alpha * a + (1 - alpha) * b) in log space; alpha is the TRUE weight in [0, 1].

    At the endpoints the zero-weight term is dropped (no log(0)).
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    log_a, log_b = torch.broadcast_tensors(log_a, log_b)
    if alpha == 1.0:
        return log_a
    if alpha == 0.0:
        return log_b
    return torch.logsumexp(torch.stack((math.log(alpha) + log_a, math.log1p(-alpha) + log_b)), dim=0)


def interpolated_per_sample(scores: torch.Tensor, log_baseline, alpha: float) -> torch.Tensor:
    """I_alpha terms gathered per teacher sample j (their mean is ``interpolated_lower_bound``).

    With D[l, j] = log(alpha * m_{-l}(y_j) + (1 - alpha) * q(y_j)), m_{-l}(y_j) = mean_{k != l} e^{S_kj}:
    t_j = 1 + mean_{l != j} (S_jj - D[l, j]) - mean_{i != j} exp(S_ij - D[j, j]).
    """
    b = _check_scores(scores, 2)
    a = _column_baseline(log_baseline, scores)
    eye = _eye(b, scores.device)
    denom = log_interpolate(log_loo_mean(scores), a[None, :].expand(b, b), alpha)   # [l, j]
    joint = (scores.diagonal()[None, :] - denom).masked_fill(eye, 0.0).sum(dim=0) / (b - 1)
    marg_logits = (scores - denom.diagonal()[None, :]).masked_fill(eye, float("-inf"))
    marg = torch.exp(marg_logits).sum(dim=0) / (b - 1)
    return 1.0 + joint - marg


def interpolated_lower_bound(scores: torch.Tensor, log_baseline, alpha: float) -> torch.Tensor:
    """Interpolated bound I_alpha (Poole et al. 2019, used by Distiller's MI-alpha):

    I_alpha = 1 + E_{p(x_1:K) p(y|x_1)}[ log( e^{f(x_1,y)} / (alpha m(y; x_1:K) + (1-alpha) q(y)) ) ]
                - E_{p(x_1:K) p(y)}[ e^{f(x_1,y)} / (alpha m(y; x_1:K) + (1-alpha) q(y)) ],
    m(y; x_1:K) = (1/K) sum_k e^{f(x_k, y)}, K = B - 1 (leave-one-out within the batch).
    Joint term: positive pair (x_j, y_j), m over all x except one other x_l, averaged over l != j.
    Marginal term: negative pair (x_i, y_j), i != j, m over all x except the positive x_j.
    alpha is the TRUE mixture weight: alpha = 1 gives the leave-one-out InfoNCE-type bound
    (the marginal term is then exactly 1), alpha = 0 gives TUBA with baseline q. Port of the
    reference ``interpolated_lower_bound`` with sigmoid(alpha_logit) replaced by alpha.
    """
    return interpolated_per_sample(scores, log_baseline, alpha).mean()
