"""What the routers share: the app's parts as dependencies (``Depends(get_store)``...), the error responses
they declare, pages, timestamps and idempotent creation."""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ..datasets import HubWorkers, IngestWorkers
from ..errors import ApiError, not_found
from ..recommend import RecommenderService
from ..schemas import ErrorBody
from ..searches import SearchManager
from ..settings import ServiceSettings
from ..store import Store

log = logging.getLogger("autodistill.service")

MAX_PAGE = 100
MAX_OFFSET = 2**31 - 1  # databases take a 64-bit offset at most; no listing is anywhere near this
IDEMPOTENCY_HEADER = "Idempotency-Key"
ERROR_RESPONSES = {code: {"model": ErrorBody} for code in (401, 404, 422)}


# --------------------------------------------------------------------------- the app's parts (create_app sets them)
def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_searches(request: Request) -> SearchManager:
    return request.app.state.searches


def get_recommender(request: Request) -> RecommenderService:
    return request.app.state.recommender


def get_ingest(request: Request) -> IngestWorkers:
    return request.app.state.ingest


def get_hub(request: Request) -> HubWorkers:
    return request.app.state.hub


# --------------------------------------------------------------------------- shared by the routes
def own_dataset(store: Store, key: dict[str, Any], dataset_id: str) -> dict[str, Any]:
    """The key's dataset ``dataset_id``, else 404."""
    row = store.get_dataset(key["id"], dataset_id)
    if row is None:
        raise not_found("dataset", dataset_id)
    return row


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat()


def page(request: Request, items: list[Any], total: int, limit: int, offset: int) -> dict[str, Any]:
    nxt = None
    if offset + len(items) < total:
        nxt = str(request.url.include_query_params(limit=limit, offset=offset + limit))
    return {"items": items, "total": total, "limit": limit, "offset": offset, "next": nxt}


def canonical_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


Handler = Callable[[], Awaitable[tuple[int, Any, str | None]]]


def _still_there(store: Store, owner: str, location: str) -> bool:
    """Whether the resource at ``location`` (/datasets/<id> or /searches/<id>) still exists for ``owner``."""
    kind, _, rid = location.strip("/").partition("/")
    if kind == "datasets":
        return store.get_dataset(owner, rid) is not None
    if kind == "searches":
        return store.get_search(owner, rid) is not None
    return True


async def idempotent(request: Request, key: dict[str, Any], request_hash: str, handler: Handler) -> JSONResponse:
    """Run ``handler`` (-> status, body, location) once per Idempotency-Key: a retry with the same key and
    request gets the stored response; the same key with another request is a 409."""
    db = get_store(request)
    idem = request.headers.get(IDEMPOTENCY_HEADER)
    if idem is None:
        status, body, location = await handler()
        return JSONResponse(body, status_code=status, headers={"Location": location} if location else None)
    if not 1 <= len(idem) <= 200:
        raise ApiError(422, "validation_error", f"{IDEMPOTENCY_HEADER}: 1 to 200 characters", field=IDEMPOTENCY_HEADER)
    endpoint = f"{request.method} {request.url.path}"
    settings = get_settings(request)
    lease = settings.idempotency_lease
    state, old = await run_in_threadpool(db.idempotency_begin, key["id"], idem, endpoint, request_hash,
                                         settings.idempotency_retention_s, lease, settings.max_idempotency_keys_per_key)
    if state == "limit":
        raise ApiError(429, "too_many_requests", f"this API key has {settings.max_idempotency_keys_per_key} "
                       f"{IDEMPOTENCY_HEADER}s remembered, the most it may (each for idempotency_retention_s); "
                       "retry later or without the header", field=IDEMPOTENCY_HEADER,
                       headers={"Retry-After": "3600"})
    if state == "conflict":
        raise ApiError(409, "conflict", f"{IDEMPOTENCY_HEADER} {idem!r} was used for a different request",
                       field=IDEMPOTENCY_HEADER)
    if state == "in_progress":
        raise ApiError(409, "conflict", f"a request with {IDEMPOTENCY_HEADER} {idem!r} is still in progress",
                       field=IDEMPOTENCY_HEADER)
    if state == "replay":
        headers = {"Idempotent-Replayed": "true", **({"Location": old["location"]} if old["location"] else {})}
        if old["location"] and not await run_in_threadpool(_still_there, db, key["id"], old["location"]):
            raise ApiError(410, "gone", f"{IDEMPOTENCY_HEADER} {idem!r}: the resource this request created "
                           f"({old['location']}) has since been deleted", field=IDEMPOTENCY_HEADER, headers=headers)
        return JSONResponse(old["body"], status_code=old["status_code"], headers=headers)
    try:
        status, body, location = await _holding_lease(db, key["id"], idem, lease, handler)
    except ApiError as err:
        if err.status >= 500 or err.status == 429:   # not done, and may succeed later: the retry runs again
            await run_in_threadpool(db.idempotency_release, key["id"], idem)
        else:   # a client error is the answer to this request: replay it too
            await run_in_threadpool(db.idempotency_finish, key["id"], idem, err.status, err.body(), None)
        raise
    except BaseException:
        await run_in_threadpool(db.idempotency_release, key["id"], idem)
        raise
    await run_in_threadpool(db.idempotency_finish, key["id"], idem, status, body, location)
    return JSONResponse(body, status_code=status, headers={"Location": location} if location else None)


async def _holding_lease(db: Store, owner: str, idem: str, lease: float, handler: Handler):
    """``handler()``, renewing the key's lease every third of ``lease`` while it runs (a dataset may wait
    for an ingest worker far longer than one ingest): only a request whose server died loses its key."""
    async def renew():
        while True:
            await asyncio.sleep(lease / 3)
            try:
                await run_in_threadpool(db.idempotency_renew, owner, idem)
            except Exception as err:  # noqa: BLE001 - the database is down: the request itself will tell
                log.warning("renewing the lease of an Idempotency-Key failed: %s", err)

    renewal = asyncio.create_task(renew())
    try:
        return await handler()
    finally:
        renewal.cancel()
