"""The AutoDistiller REST service: datasets in, recommendations out, searches on a Ray cluster.

``create_app(settings)`` builds the FastAPI app from its parts (store, search manager, recommender,
ingest and hub workers, kept on ``app.state`` and handed to the routes as dependencies, see
``routers/common.py``) and one router per resource (``routers/``); ``autodistill serve`` runs it with
uvicorn.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi

from autodistill import __version__

from . import db
from .datasets import HubWorkers, IngestWorkers, private_dir
from .errors import install_error_handlers
from .guard import RequestGuard
from .ray_backend import JobBackend, backend_from_settings
from .recommend import RecommenderService
from .routers import ROUTERS
from .schemas import DatasetReference
from .searches import SearchManager
from .settings import ServiceSettings
from .store import Store


def create_app(settings: ServiceSettings | None = None, backend: JobBackend | None = None) -> FastAPI:
    settings = settings or ServiceSettings.from_env()
    private_dir(settings.state_dir)
    engine = db.make_engine(settings.sqlalchemy_url)
    store = Store(engine)
    head = None
    if backend is None:
        backend, head = backend_from_settings(settings)
    manager = SearchManager(store, backend, settings)

    hub = HubWorkers(settings.hub_workers, settings.hub_timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(db.migrate, engine)
        make_private(settings)
        await run_in_threadpool(remove_orphaned_folders, settings, store)
        await run_in_threadpool(manager.refresh_all)   # searches in flight before a restart are found again
        manager.start_monitor()
        try:
            yield
        finally:
            manager.stop_monitor()
            hub.shutdown()
            await run_in_threadpool(IngestWorkers.shutdown)   # no worker outlives the service
            engine.dispose()

    app = FastAPI(title="AutoDistiller", version=__version__, lifespan=lifespan,
                  description="Knowledge-distillation pipelines recommended and searched for your dataset.")
    app.state.settings, app.state.store, app.state.searches = settings, store, manager
    app.state.recommender, app.state.ray_head = RecommenderService(store, settings), head
    app.state.hub = hub
    app.state.ingest = IngestWorkers(settings.ingest_workers, settings.ingest_timeout_s)
    app.add_middleware(RequestGuard, state=app.state)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    _add_schemas(app)
    return app


def make_private(settings: ServiceSettings) -> None:
    """The state folder 0700 and an SQLite database (with its WAL files) 0600: nothing of it is readable
    by other users of the machine."""
    private_dir(settings.state_dir)
    if settings.database_url is None:
        for suffix in ("", "-wal", "-shm"):
            path = settings.state_dir / f"service.db{suffix}"
            if path.exists():
                os.chmod(path, 0o600)


_ORPHAN_FOLDERS = {"datasets": re.compile(r"ds_[0-9a-f]{20}"), "searches": re.compile(r"search_[0-9a-f]{20}")}


def remove_orphaned_folders(settings: ServiceSettings, store: Store) -> int:
    """Remove the ``datasets/<id>`` and ``searches/<id>`` folders no database row knows (a server that died
    mid-request left them), once older than the idempotency lease, so a request still in flight (on
    another process sharing the state folder) keeps its own; returns how many."""
    cutoff = time.time() - settings.idempotency_lease
    known = {"datasets": store.get_dataset, "searches": store.get_search}
    removed = 0
    for kind, pattern in _ORPHAN_FOLDERS.items():
        root = settings.state_dir / kind
        folders = [f for f in root.iterdir() if pattern.fullmatch(f.name)] if root.is_dir() else []
        for folder in folders:
            if folder.lstat().st_mtime < cutoff and known[kind](None, folder.name) is None:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
    return removed


def _add_schemas(app: FastAPI) -> None:
    """``POST /datasets`` reads its body itself: its JSON body's schema joins the OpenAPI components."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        extra = DatasetReference.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in extra.pop("$defs", {}).items():
            comps.setdefault(name, sub)
        comps["DatasetReference"] = extra
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
