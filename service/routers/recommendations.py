"""``POST /recommendations``: the KD pipelines the product recommends for a dataset."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from ..auth import current_key
from ..recommend import RecommenderService
from ..schemas import ErrorBody, RecommendationRequest, RecommendationResponse
from ..store import Store
from .common import ERROR_RESPONSES, get_recommender, get_store, own_dataset

router = APIRouter(tags=["recommendations"])


@router.post("/recommendations", response_model=RecommendationResponse,
             responses={**ERROR_RESPONSES, 503: {"model": ErrorBody}})
def recommend(body: RecommendationRequest, key: dict = Depends(current_key), store: Store = Depends(get_store),
              recommender: RecommenderService = Depends(get_recommender)) -> dict[str, Any]:
    """Ranked KD pipelines for a dataset, with predicted scores (relative to the teacher), an
    uncertainty (null for a single model) and why (nearest datasets of the meta-dataset, the features that
    mattered, the meta-features outside the range of the datasets the key may see). The order is
    the meta-model's, or the best-of-k portfolio first when the model's evaluation chose it (``source``,
    ``reason``): the same order a search warm-starts from."""
    dataset = own_dataset(store, key, body.dataset_id)
    c = body.constraints
    rec, model, ranking, items = recommender.recommend(dataset, body.top_k, c.max_student_parameters, c.config)
    return {"dataset_id": dataset["id"], "target": rec.target, "model": model,
            "source": ranking.source, "reason": ranking.reason, "recommendations": items}
