"""``GET /healthz``: the database answers and takes writes (no key needed)."""
from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends

from autodistill import __version__

from .. import db
from ..errors import ApiError
from ..schemas import Health
from ..store import Store
from .common import get_store

log = logging.getLogger("autodistill.service")
router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz(store: Store = Depends(get_store)) -> dict[str, Any]:
    try:
        version = db.ping(store.engine)
    except Exception as err:  # noqa: BLE001 - down, read-only, full: all "not healthy"
        log.error("health check: the database failed: %s", err)
        raise ApiError(503, "unavailable", "database: does not answer or does not take writes") from None
    return {"status": "ok", "database": "ok", "schema_version": version, "version": __version__}
