"""A model scored on a split: its logits, its metric and its CPU latency per example; what a constant
prediction scores there, and the score past which a learning curve has started."""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from .batching import EncodedSplit, collate, length_sorted_batches, model_inputs, to_device
from .metrics import compute_metric, majority_baseline


@torch.no_grad()
def predict_logits(model: nn.Module, split: EncodedSplit, batch_size: int, pad_id: int,
                   device: torch.device) -> np.ndarray:
    model.eval()
    out = np.zeros((len(split), model.config.num_labels), dtype=np.float32)
    for idx in length_sorted_batches(split, batch_size):
        batch = to_device(collate(split, idx, pad_id), device)
        out[idx] = model(**model_inputs(batch)).logits.float().cpu().numpy()
    return out


def evaluate(model: nn.Module, split: EncodedSplit, metric: str, task_type: str, batch_size: int,
             pad_id: int, device: torch.device) -> float:
    logits = predict_logits(model, split, batch_size, pad_id, device)
    return compute_metric(metric, logits, split.labels.numpy(), task_type)


def trivial_score(split: EncodedSplit, metric: str, task_type: str) -> float:
    """The best a constant prediction scores on ``split`` (a non-empty split): the best single class
    (not always the majority: all-positive beats all-negative on binary F1), the mean label for
    regression; 0 where the metric is undefined for a constant (a correlation)."""
    labels = split.labels.numpy()
    if task_type == "regression":
        scores = [majority_baseline(labels, labels, metric, task_type)]
    else:
        scores = [compute_metric(metric, np.eye(int(labels.max()) + 1)[np.full(len(labels), c)], labels, task_type)
                  for c in np.unique(labels)]
    return max(0.0 if math.isnan(v) else float(v) for v in scores)


#: metrics a constant prediction leaves undefined (scored 0) and an unrelated prediction scatters around 0
CORRELATION_METRICS = frozenset({"mcc", "pearson", "spearman"})
#: the one-sided 5 % point of the standard normal
_CHANCE_Z = 1.645


def learning_start_score(split: EncodedSplit, metric: str, task_type: str) -> float:
    """The dev score past which a curve has left its start (the early-stopping clock starts there): the
    best constant prediction's, and for a correlation also the level an unrelated prediction passes by
    chance only 5 % of the time on this many rows, tanh(1.645 / sqrt(n - 3)) (Fisher's z: exact for Pearson,
    close for Spearman, stricter than 5 % for a multi-class MCC, whose chance spread is narrower). An
    untrained model's correlation is noise around 0 that passes 0 half the time: no start of a curve."""
    return start_score(trivial_score(split, metric, task_type), metric, len(split))


def start_score(trivial: float, metric: str, n_rows: int) -> float:
    """:func:`learning_start_score` from a split's constant-prediction score and size."""
    return max(trivial, chance_correlation(n_rows)) if metric in CORRELATION_METRICS else trivial


def chance_correlation(n_rows: int) -> float:
    """The correlation an unrelated prediction passes by chance 5 % of the time on ``n_rows`` rows."""
    return math.tanh(_CHANCE_Z / math.sqrt(max(n_rows - 3, 1)))


@torch.no_grad()
def cpu_latency_ms(model: nn.Module, split: EncodedSplit, pad_id: int, n: int = 32) -> float:
    """Mean CPU latency per example (batch size 1) over the first ``n`` validation examples."""
    model = model.to("cpu").eval()
    indices = list(range(min(n, len(split))))
    model(**model_inputs(collate(split, indices[:1], pad_id)))  # warm-up
    start = time.perf_counter()
    for i in indices:
        model(**model_inputs(collate(split, [i], pad_id)))
    return 1000.0 * (time.perf_counter() - start) / max(1, len(indices))
