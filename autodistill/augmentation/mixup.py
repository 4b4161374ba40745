"""MixKD: mixup of word embeddings for distillation (Liang et al., "MixKD: Towards Efficient
Distillation of Large-scale Language Models", ICLR 2021, arXiv 2011.00593).

For a batch of B sequences with word embeddings e (B, T, d), a mixing coefficient and a
permutation π of the batch:

    λ ~ Beta(a, a)                     (a = 0.4 in Distiller and, as recalled, in MixKD)
    ê_i = λ · e_i + (1 − λ) · e_π(i)   (word embeddings, before position/type embeddings)
    m̂_i = max(m_i, m_π(i))            (attention mask: union of the two sequences' tokens)
    ỹ_i = λ · y_i + (1 − λ) · y_π(i)   (one-hot labels for classification, values for regression)

For a sentence pair the segment (token-type) embedding is part of what is mixed:
ê_i = λ·(e_i + s_i) + (1 − λ)·(e_π(i) + s_π(i)) with s the token-type embeddings
(:func:`mixed_inputs`), so the pair x_π(i) does not borrow x_i's segment ids.

The student-mixup loss is L_SM = CE(ỹ, f_S(ê)) (:func:`soft_target_cross_entropy`); the
teacher-mixup KD loss compares f_T(ê) with f_S(ê) (the prediction-layer KD loss). Distiller's
re-implementation draws one λ per batch and concatenates the mixed batch to the original one.

All functions are pure and take an explicit ``torch.Generator`` so runs are reproducible.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F


def sample_mixup_lambda(a: float, generator: torch.Generator) -> float:
    """Draw λ ~ Beta(a, a).

    The generator supplies a 63-bit seed for a ``random.Random`` whose ``betavariate`` draws λ, so
    the value is reproducible from the generator state (and the generator advances).
    """
    if a <= 0:
        raise ValueError(f"mixup Beta parameter must be > 0, got {a}")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return float(random.Random(seed).betavariate(a, a))


def mixup_permutation(batch_size: int, generator: torch.Generator) -> torch.LongTensor:
    """A random permutation π of ``range(batch_size)`` (the mixing partners), on CPU."""
    return torch.randperm(batch_size, generator=generator, device="cpu")


def mix_embeddings(embeds: torch.Tensor, attention_mask: torch.Tensor, lam: float,
                   perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ê = λ·e + (1−λ)·e[π]; mask = max(m, m[π]) (the union of both sequences' tokens).

    Args:
        embeds: (B, T, d) word embeddings (pass the result as ``inputs_embeds``).
        attention_mask: (B, T) 0/1 mask.
        lam: λ in [0, 1].
        perm: (B,) permutation π.

    The endpoints are exact: λ = 1 returns the inputs unchanged (embeddings and mask), and λ = 0
    returns the permuted batch ``(embeds[π], attention_mask[π])``.
    """
    if embeds.dim() != 3 or attention_mask.shape != embeds.shape[:2]:
        raise ValueError(f"expected embeds (B, T, d) and attention_mask (B, T), got "
                         f"{tuple(embeds.shape)} and {tuple(attention_mask.shape)}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"mixup lambda must lie in [0, 1], got {lam}")
    perm = perm.to(embeds.device)
    if lam == 1.0:
        return embeds, attention_mask
    if lam == 0.0:
        return embeds[perm], attention_mask[perm.to(attention_mask.device)]
    mixed = lam * embeds + (1.0 - lam) * embeds[perm]
    mask = torch.maximum(attention_mask, attention_mask[perm.to(attention_mask.device)])
    return mixed, mask


def _token_type_embeddings(model: torch.nn.Module) -> torch.nn.Embedding | None:
    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    return getattr(embeddings, "token_type_embeddings", None)


def mixed_inputs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: torch.Tensor | None, lam: float, perm: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model inputs of the mixed batch (``inputs_embeds``, ``attention_mask``, ``token_type_ids``).

    With token types, each sequence's segment embedding s_i is folded into its word embeddings as
    e_i + (s_i − s_0) and the model is given token type 0 (it adds s_0 back), so the model sees
    λ·(e_i + s_i) + (1 − λ)·(e_π(i) + s_π(i)). Every model (student, teacher) gets its own embeddings of
    the same (λ, π).
    """
    embeds = model.get_input_embeddings()(input_ids)
    type_embeddings = _token_type_embeddings(model)
    if token_type_ids is not None and type_embeddings is not None:
        zeros = torch.zeros_like(token_type_ids)
        embeds = embeds + (type_embeddings(token_type_ids) - type_embeddings(zeros))
        token_type_ids = zeros
    mixed, mask = mix_embeddings(embeds, attention_mask, lam, perm)
    inputs = {"inputs_embeds": mixed, "attention_mask": mask}
    if token_type_ids is not None:
        inputs["token_type_ids"] = token_type_ids
    return inputs


def mix_targets(labels: torch.Tensor, lam: float, perm: torch.Tensor, num_labels: int) -> torch.Tensor:
    """ỹ = λ·y + (1−λ)·y[π].

    * classification (``num_labels > 1``, integer labels (B,)): one-hot rows mixed → (B, C), each
      row sums to 1; already-soft (B, C) targets are mixed as they are;
    * regression (``num_labels == 1``): float values → (B, 1) mixed values.
    """
    perm = perm.to(labels.device)
    if num_labels == 1:
        y = labels.float().reshape(-1, 1)
    elif labels.dim() == 2 and labels.shape[1] == num_labels and labels.is_floating_point():
        y = labels.float()
    else:
        if labels.is_floating_point():
            labels = labels.round()
        y = F.one_hot(labels.long().reshape(-1), num_classes=num_labels).float()
    return lam * y + (1.0 - lam) * y[perm]


def soft_target_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Per-example CE with soft targets: −Σ_c ỹ_c · log softmax(z)_c → (B,).

    Equals ``F.cross_entropy(logits, y, reduction='none')`` for one-hot targets. (For regression
    use an MSE on the (B, 1) mixed values instead.)
    """
    if logits.shape != soft_targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and soft targets "
                         f"{tuple(soft_targets.shape)} differ in shape")
    return -(soft_targets.to(logits.dtype) * F.log_softmax(logits, dim=-1)).sum(dim=-1)
