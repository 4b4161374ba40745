"""Task metrics: accuracy, F1, Matthews correlation, Pearson/Spearman."""
from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import ConstantInputWarning, pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from .registry import METRICS


@METRICS.register("accuracy")
def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(accuracy_score(gold, pred))


@METRICS.register("f1")
def binary_f1(pred: np.ndarray, gold: np.ndarray) -> float:
    average = "binary" if len(np.unique(gold)) <= 2 and set(np.unique(gold)) <= {0, 1} else "macro"
    return float(f1_score(gold, pred, average=average, zero_division=0))


@METRICS.register("macro_f1")
def macro_f1(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(f1_score(gold, pred, average="macro", zero_division=0))


@METRICS.register("mcc")
def mcc(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(matthews_corrcoef(gold, pred))


def _safe_corr(fn, pred: np.ndarray, gold: np.ndarray) -> float:
    """A constant prediction carries no correlation: 0, also where float32 rounding leaves a constant
    prediction a tiny spread that scipy then reads as constant (NaN)."""
    if np.std(pred) == 0 or np.std(gold) == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        r = float(fn(pred, gold)[0])
    return r if np.isfinite(r) else 0.0


@METRICS.register("pearson")
def pearson(pred: np.ndarray, gold: np.ndarray) -> float:
    return _safe_corr(pearsonr, pred, gold)


@METRICS.register("spearman")
def spearman(pred: np.ndarray, gold: np.ndarray) -> float:
    return _safe_corr(spearmanr, pred, gold)


def resolve_metric(name: str, task_type: str) -> str:
    if name != "auto":
        return name
    return "pearson" if task_type == "regression" else "accuracy"


def logits_to_predictions(logits: np.ndarray, task_type: str) -> np.ndarray:
    return logits[:, 0] if task_type == "regression" else logits.argmax(axis=-1)


def compute_metric(name: str, logits: np.ndarray, gold: np.ndarray, task_type: str) -> float:
    return METRICS.get(name)(logits_to_predictions(logits, task_type), gold)


def majority_baseline(train_labels, gold: np.ndarray, metric: str, task_type: str) -> float:
    """Score of always predicting the majority training class (the mean for regression)."""
    if task_type == "regression":
        return METRICS.get(metric)(np.full(len(gold), float(np.mean(train_labels))), gold)
    values, counts = np.unique(np.asarray(train_labels), return_counts=True)
    return METRICS.get(metric)(np.full(len(gold), values[counts.argmax()]), gold)
