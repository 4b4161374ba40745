"""`autodistill auto`: the whole product on one dataset — recommend KD pipelines from the dataset's
meta-features (the AutoDistiller of He et al. 2021), seed a short TPE search with them, export the best
student."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import DataConfig
from .meta.warm_start import choose_warm_start
from .search.runner import SearchResult, run_search
from .search.space import SearchSpace, load_space, warm_start_points


@dataclass
class AutoResult:
    recommendations: list[dict[str, Any]]
    warm_start: list[dict[str, Any]]
    search: SearchResult
    recommend_seconds: float


def recommend_for(data: DataConfig, model_dir: str | Path, top_k: int, backbone: str = "default",
                  embeddings: bool = True, constraints: Any = None, budget: Any = None
                  ) -> tuple[Any, list[Any], dict[str, float]]:
    """(the recommender, its ``top_k`` pipelines for a dataset, the dataset's meta-features): the
    embedding meta-features come from ``backbone`` unless ``embeddings`` is False; ``budget`` (the
    user's config) supplies the student / data / optimisation inputs of the model."""
    from .meta.features import meta_features_for
    from .meta.model import Recommender
    from .models import load_tokenizer

    rec = Recommender.load(model_dir)
    _, feats = meta_features_for(data, backbone if embeddings else None, tokenizer=load_tokenizer(backbone))
    return rec, rec.recommend(feats, top_k=top_k, constraints=constraints, budget=budget), feats


def run_auto(data: str | Path, out_dir: str | Path, model_dir: str | Path, space: str | SearchSpace = "cpu-fast",
             trials: int | None = 8, time_budget: float | None = 600.0, seeds: int = 4,
             resume: bool = False, quiet: bool = False) -> AutoResult:
    """Recommend, then search ``space`` warm-started with the ``seeds`` best distinct recommendations."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sp = load_space(space)
    t0 = time.perf_counter()
    base = sp.to_config({})   # the rows the search trains on are the ones the features describe
    rec, _, feats = recommend_for(base.data.model_copy(update={"train": str(data)}), model_dir, top_k=4 * seeds,
                                  backbone=base.teacher.backbone)
    start = choose_warm_start(rec, model_dir, feats, 4 * seeds, budget=base)
    recs, seconds = start.recommendations, time.perf_counter() - t0
    points = warm_start_points(sp, [r.config for r in recs], seeds)
    (out / "recommendations.json").write_text(json.dumps(
        {"meta_features": feats, "seconds": seconds, "warm_start_source": start.source, "reason": start.reason,
         "recommendations": [r.to_dict() for r in recs], "warm_start": points}, indent=2, default=str),
        encoding="utf-8")
    result = run_search(data, sp, out, trials=trials, time_budget=time_budget, warm_start=points or None,
                        resume=resume, quiet=quiet)
    return AutoResult([r.to_dict() for r in recs], points, result, seconds)
