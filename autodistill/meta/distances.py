"""Distances between datasets: L1 on standardised meta-features (the recommender's nearest
datasets, the evaluation's nearest-dataset baseline)."""
from __future__ import annotations

import numpy as np
import pandas as pd


def scale_stats(mf: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per-column centre (mean) and scale (std; 1 where it is 0 or undefined) of a meta-feature frame."""
    center = np.nanmean(mf.to_numpy(dtype=float), axis=0) if len(mf) else np.zeros(mf.shape[1])
    scale = np.nanstd(mf.to_numpy(dtype=float), axis=0) if len(mf) else np.ones(mf.shape[1])
    center = np.where(np.isfinite(center), center, 0.0)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return center, scale

def l1_distances(query: np.ndarray, refs: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """L1 distance on standardised meta-features; dimensions missing in either side are skipped and the
    sum is rescaled to all dimensions (so a missing feature neither helps nor hurts)."""
    q = (np.asarray(query, dtype=float) - center) / scale
    r = (np.asarray(refs, dtype=float) - center) / scale
    diff = np.abs(r - q)
    ok = np.isfinite(diff)
    n_ok = ok.sum(axis=1)
    total = np.where(ok, diff, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_ok > 0, total * diff.shape[1] / np.maximum(n_ok, 1), np.inf)
