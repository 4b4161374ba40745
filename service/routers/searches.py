"""``/searches``: start a search on the Ray cluster, follow it, list its trials, cancel it, fetch its best
student."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from autodistill.config import ConfigError
from autodistill.search.space import SearchSpace, SpaceError, encode_points, warm_start_points

from ..auth import current_key
from ..errors import ApiError, not_found
from ..recommend import RecommenderService
from ..schemas import BestStudent, ErrorBody, Search, SearchPage, SearchRequest, Trial, TrialPage
from ..searches import TERMINAL_STATES, SearchManager, check_search_request, search_space
from ..settings import ServiceSettings
from ..store import Store
from .common import (ERROR_RESPONSES, MAX_OFFSET, MAX_PAGE, canonical_hash, get_recommender, get_searches,
                     get_settings, get_store, idempotent, iso, own_dataset, page)

router = APIRouter(tags=["searches"])
WARM_START_POINTS = 4


def search_out(row: dict[str, Any]) -> dict[str, Any]:
    progress = row.get("progress") or {}
    best = row.get("best") or {}
    return {"id": row["id"], "dataset_id": row["dataset_id"], "state": row["state"], "request": row["request"],
            "progress": {k: progress.get(k) for k in ("phase", "trials_total", "best_score", "best_dev_score",
                                                      "best_trial")}
            | {k: progress.get(k) or 0 for k in ("finished", "stopped_early", "failed", "running")},
            "best_score": best.get("score", progress.get("best_score")), "error": row.get("error"),
            "created_at": iso(row["created_at"]), "started_at": iso(row.get("started_at")),
            "finished_at": iso(row.get("finished_at")), "updated_at": iso(row["updated_at"])}


def own_search(store: Store, manager: SearchManager, key: dict, search_id: str, refresh: bool = True
               ) -> dict[str, Any]:
    row = store.get_search(key["id"], search_id)
    if row is None:
        raise not_found("search", search_id)
    return manager.refresh(row) if refresh else row


# --------------------------------------------------------------------------- starting one
@router.post("/searches", status_code=202, response_model=Search,
             responses={**ERROR_RESPONSES, 409: {"model": ErrorBody}, 503: {"model": ErrorBody}})
async def create_search(body: SearchRequest, request: Request, key: dict = Depends(current_key),
                        settings: ServiceSettings = Depends(get_settings), store: Store = Depends(get_store),
                        manager: SearchManager = Depends(get_searches),
                        recommender: RecommenderService = Depends(get_recommender)) -> Response:
    """Start a search on the Ray cluster (a Ray job named by the search id); follow it at Location."""
    job_config = check_search_request(body, settings)

    def start() -> dict[str, Any]:
        dataset = own_dataset(store, key, body.dataset_id)
        space = search_space(body)
        warm = _warm_start(recommender, dataset, body, space)
        # the process boundary: the row keeps the request as sent, the job gets its config and seeds as files
        return manager.create(key["id"], dataset, body.model_dump(mode="json"), warm, job_config)

    async def handler():
        row = await run_in_threadpool(start)
        return 202, json.loads(Search.model_validate(search_out(row)).model_dump_json()), f"/searches/{row['id']}"

    return await idempotent(request, key, canonical_hash(body.model_dump(mode="json")), handler)


def _warm_start(recommender: RecommenderService, dataset: dict, body: SearchRequest, space: SearchSpace
                ) -> list[dict[str, Any]] | None:
    if body.warm_start is True:   # the meta-model's or the portfolio's pipelines, projected onto the space
        start = recommender.warm_start(dataset, 4 * WARM_START_POINTS)
        points = warm_start_points(space, [r.config for r in start.recommendations], WARM_START_POINTS)
    elif isinstance(body.warm_start, list):
        points = body.warm_start
    else:
        return None
    try:
        encode_points(space, points)
    except (SpaceError, ConfigError) as err:
        raise ApiError(422, "validation_error", f"warm_start: {err}", field="warm_start") from None
    return points


# --------------------------------------------------------------------------- following them
@router.get("/searches", response_model=SearchPage, responses=ERROR_RESPONSES)
def list_searches(request: Request, limit: int = Query(20, ge=1, le=MAX_PAGE),
                  offset: int = Query(0, ge=0, le=MAX_OFFSET), key: dict = Depends(current_key),
                  store: Store = Depends(get_store)) -> dict[str, Any]:
    found = store.list_searches(key["id"], limit, offset)
    return page(request, [search_out(r) for r in found.items], found.total, limit, offset)


@router.get("/searches/{search_id}", response_model=Search, responses=ERROR_RESPONSES)
def get_search(search_id: str, key: dict = Depends(current_key), store: Store = Depends(get_store),
               manager: SearchManager = Depends(get_searches)) -> dict[str, Any]:
    return search_out(own_search(store, manager, key, search_id))


@router.get("/searches/{search_id}/trials", response_model=TrialPage, responses=ERROR_RESPONSES)
def list_trials(search_id: str, request: Request, limit: int = Query(20, ge=1, le=MAX_PAGE),
                offset: int = Query(0, ge=0, le=MAX_OFFSET), key: dict = Depends(current_key),
                store: Store = Depends(get_store), manager: SearchManager = Depends(get_searches)) -> dict[str, Any]:
    rows = SearchManager.trials(own_search(store, manager, key, search_id, refresh=False))
    items = [Trial.model_validate({**r, "finished_at": iso(r["finished_at"])}) for r in rows[offset:offset + limit]]
    return page(request, items, len(rows), limit, offset)


@router.post("/searches/{search_id}/cancel", response_model=Search,
             responses={**ERROR_RESPONSES, 409: {"model": ErrorBody}})
def cancel_search(search_id: str, key: dict = Depends(current_key), store: Store = Depends(get_store),
                  manager: SearchManager = Depends(get_searches)) -> dict[str, Any]:
    row = own_search(store, manager, key, search_id, refresh=False)
    return search_out(manager.cancel(row))


@router.delete("/searches/{search_id}", status_code=204, responses={**ERROR_RESPONSES, 409: {"model": ErrorBody}})
def delete_search(search_id: str, key: dict = Depends(current_key), store: Store = Depends(get_store),
                  manager: SearchManager = Depends(get_searches)) -> Response:
    """Delete a finished search: its record, trials and best student (409 while it is queued or running)."""
    manager.delete(own_search(store, manager, key, search_id))   # refreshed: one Ray has finished may go
    return Response(status_code=204)


# --------------------------------------------------------------------------- the best student
def _best(store: Store, manager: SearchManager, key: dict, search_id: str) -> tuple[dict[str, Any], Path]:
    row = own_search(store, manager, key, search_id)
    best = SearchManager.best_dir(row)
    if best is None:
        why = "has not finished" if row["state"] not in TERMINAL_STATES else f"is {row['state']} with no student"
        raise ApiError(409, "conflict", f"search {search_id} {why}")
    return row, best


@router.get("/searches/{search_id}/best", response_model=BestStudent,
            responses={**ERROR_RESPONSES, 409: {"model": ErrorBody}})
def get_best(search_id: str, key: dict = Depends(current_key), store: Store = Depends(get_store),
             manager: SearchManager = Depends(get_searches)) -> dict[str, Any]:
    row, best = _best(store, manager, key, search_id)
    metrics = json.loads((best / "metrics.json").read_text(encoding="utf-8")) if (best / "metrics.json").is_file() else {}
    metrics.pop("history", None)
    config = manager.public_config(row, best)
    trial = json.loads((best / "trial.json").read_text(encoding="utf-8")) if (best / "trial.json").is_file() else {}
    return {"search_id": search_id, "trial_id": trial.get("trial_id"), "score": trial.get("score"),
            "dev_score": trial.get("dev_score"),
            "config": config, "metrics": metrics, "download": f"/searches/{search_id}/best/student"}


@router.get("/searches/{search_id}/best/student",
            responses={**ERROR_RESPONSES, 409: {"model": ErrorBody},
                       200: {"content": {"application/gzip": {}}, "description": "the student, .tar.gz"}})
def download_best(search_id: str, key: dict = Depends(current_key), store: Store = Depends(get_store),
                  manager: SearchManager = Depends(get_searches)) -> FileResponse:
    row, best = _best(store, manager, key, search_id)
    archive = manager.best_archive(row, best)
    return FileResponse(archive, media_type="application/gzip", filename=f"{search_id}-best.tar.gz")
