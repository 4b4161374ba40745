"""``POST /meta-model/refit``: fold finished searches into the meta-dataset and refit the meta-model."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from ..auth import admin_key
from ..recommend import RecommenderService
from ..schemas import ErrorBody, RefitResponse
from .common import ERROR_RESPONSES, canonical_hash, get_recommender, idempotent

router = APIRouter(tags=["meta-model"])


@router.post("/meta-model/refit", response_model=RefitResponse,
             responses={**ERROR_RESPONSES, 403: {"model": ErrorBody}, 409: {"model": ErrorBody}})
async def refit(request: Request, key: dict = Depends(admin_key),
                recommender: RecommenderService = Depends(get_recommender)) -> dict[str, Any]:
    """Fold finished searches into the meta-dataset and refit the meta-model (admin keys only)."""
    async def handler():
        return 200, await run_in_threadpool(recommender.refit), None
    return await idempotent(request, key, canonical_hash({"refit": True}), handler)
