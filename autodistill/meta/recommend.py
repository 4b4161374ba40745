"""Recommend KD pipelines for a dataset: its meta-features, ranked by a saved recommender."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..models import load_tokenizer
from .features import meta_features_for
from .recommender import Recommendation, Recommender


def recommend_for(data: DataConfig, model_dir: str | Path, top_k: int, backbone: str = "default",
                  embeddings: bool = True, constraints: Any = None, budget: Any = None
                  ) -> tuple[Recommender, list[Recommendation], dict[str, float]]:
    """(the recommender, its ``top_k`` pipelines for a dataset, the dataset's meta-features): the
    embedding meta-features come from ``backbone`` unless ``embeddings`` is False; ``budget`` (the
    user's config) supplies the student / data / optimisation inputs of the model."""
    rec = Recommender.load(model_dir)
    _, feats = meta_features_for(data, backbone if embeddings else None, tokenizer=load_tokenizer(backbone))
    return rec, rec.recommend(feats, top_k=top_k, constraints=constraints, budget=budget), feats
