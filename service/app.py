"""The AutoDistiller REST service: datasets in, recommendations out, searches on a Ray cluster.

``create_app(settings)`` builds the FastAPI app; ``autodistill serve`` runs it with uvicorn.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from autodistill import __version__
from autodistill.config import ConfigError, PipelineConfig

from . import db
from .auth import admin_key, current_key
from .datasets import (HubWorkers, IngestWorkers, check_hf_name, fetch_from_hub, private_dir, remove_dataset_files,
                       resolve_under_roots, save_stream, upload_suffix)
from .errors import ApiError, install_error_handlers, not_found, validation_error
from .guard import BodyTooLarge, RequestGuard
from .ray_backend import JobBackend, backend_from_settings
from .recommend import RecommenderService
from .schemas import (BestStudent, DataColumns, Dataset, DatasetPage, DatasetReference, ErrorBody, Health,
                      RecommendationRequest, RecommendationResponse, RefitResponse, Search, SearchPage,
                      SearchRequest, Trial, TrialPage, data_config)
from .searches import TERMINAL_STATES, SearchManager, check_search_request
from .settings import ServiceSettings
from .store import Store, new_id

log = logging.getLogger("autodistill.service")

MAX_PAGE = 100
MAX_OFFSET = 2**31 - 1  # databases take a 64-bit offset at most; no listing is anywhere near this
WARM_START_POINTS = 4
IDEMPOTENCY_HEADER = "Idempotency-Key"
ERROR_RESPONSES = {code: {"model": ErrorBody} for code in (401, 404, 422)}


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat()


def _dataset_out(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "name", "source_kind", "source", "fingerprint", "stats", "meta_features")} \
        | {"created_at": _iso(row["created_at"])}


def _search_out(row: dict[str, Any]) -> dict[str, Any]:
    progress = row.get("progress") or {}
    best = row.get("best") or {}
    return {"id": row["id"], "dataset_id": row["dataset_id"], "state": row["state"], "request": row["request"],
            "progress": {k: progress.get(k) for k in ("phase", "trials_total", "best_score", "best_trial")}
            | {k: progress.get(k) or 0 for k in ("finished", "stopped_early", "failed", "running")},
            "best_score": best.get("score", progress.get("best_score")), "error": row.get("error"),
            "created_at": _iso(row["created_at"]), "started_at": _iso(row.get("started_at")),
            "finished_at": _iso(row.get("finished_at")), "updated_at": _iso(row["updated_at"])}


def _page(request: Request, items: list[Any], total: int, limit: int, offset: int) -> dict[str, Any]:
    nxt = None
    if offset + len(items) < total:
        nxt = str(request.url.include_query_params(limit=limit, offset=offset + limit))
    return {"items": items, "total": total, "limit": limit, "offset": offset, "next": nxt}


def _canonical_hash(payload: Any) -> str:
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
    store: Store = request.app.state.store
    idem = request.headers.get(IDEMPOTENCY_HEADER)
    if idem is None:
        status, body, location = await handler()
        return JSONResponse(body, status_code=status, headers={"Location": location} if location else None)
    if not 1 <= len(idem) <= 200:
        raise ApiError(422, "validation_error", f"{IDEMPOTENCY_HEADER}: 1 to 200 characters", field=IDEMPOTENCY_HEADER)
    endpoint = f"{request.method} {request.url.path}"
    retention = request.app.state.settings.idempotency_retention_s
    state, old = await run_in_threadpool(store.idempotency_begin, key["id"], idem, endpoint, request_hash, retention)
    if state == "conflict":
        raise ApiError(409, "conflict", f"{IDEMPOTENCY_HEADER} {idem!r} was used for a different request",
                       field=IDEMPOTENCY_HEADER)
    if state == "in_progress":
        raise ApiError(409, "conflict", f"a request with {IDEMPOTENCY_HEADER} {idem!r} is still in progress",
                       field=IDEMPOTENCY_HEADER)
    if state == "replay":
        headers = {"Idempotent-Replayed": "true", **({"Location": old["location"]} if old["location"] else {})}
        if old["location"] and not await run_in_threadpool(_still_there, store, key["id"], old["location"]):
            raise ApiError(410, "gone", f"{IDEMPOTENCY_HEADER} {idem!r}: the resource this request created "
                           f"({old['location']}) has since been deleted", field=IDEMPOTENCY_HEADER, headers=headers)
        return JSONResponse(old["body"], status_code=old["status_code"], headers=headers)
    try:
        status, body, location = await handler()
    except ApiError as err:
        if err.status >= 500:
            await run_in_threadpool(store.idempotency_release, key["id"], idem)
        else:   # a client error is the answer to this request: replay it too
            await run_in_threadpool(store.idempotency_finish, key["id"], idem, err.status, err.body(), None)
        raise
    except BaseException:
        await run_in_threadpool(store.idempotency_release, key["id"], idem)
        raise
    await run_in_threadpool(store.idempotency_finish, key["id"], idem, status, body, location)
    return JSONResponse(body, status_code=status, headers={"Location": location} if location else None)


# --------------------------------------------------------------------------- datasets
async def _read_form(request: Request, limit: int):
    """The multipart form; the guard cuts the body past the upload cap (and its multipart framing), and
    ``save_stream`` holds each file to ``limit``."""
    try:
        return await request.form(max_files=2, max_fields=10)
    except BodyTooLarge:
        raise ApiError(413, "payload_too_large", f"request body larger than the upload cap of "
                       f"{limit / 2**20:.1f} MB", field="file") from None
    except Exception as err:  # noqa: BLE001 - malformed multipart
        raise ApiError(422, "validation_error", f"malformed multipart body: {err}", field="file") from None


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _columns_from_form(raw: Any) -> DataColumns:
    if raw is None or raw == "":
        return DataColumns()
    try:
        return DataColumns.model_validate_json(raw if isinstance(raw, str) else "")
    except ValidationError as err:
        raise validation_error(err, prefix="columns") from None


def _ingest(app_state: Any, owner: str, dataset_id: str, name: str, kind: str, source: str, cfg,
            folder: Path | None, field: str, public_names: dict[str, str]) -> dict[str, Any]:
    """Bound, load, describe (in an ingest worker process) and record one dataset; ``public_names`` maps
    its server paths to what the client calls them (error messages never carry a server path)."""
    settings: ServiceSettings = app_state.settings
    try:
        described = app_state.ingest.describe(cfg, field, public_names, settings.max_rows, settings.max_decoded_bytes,
                                              settings.meta_features_backbone, field=field)
        row = {"id": dataset_id, "owner": owner, "name": name, "source_kind": kind, "source": source,
               "data_config": cfg.model_dump(mode="json"), **described, "created_at": time.time()}
        return app_state.store.add_dataset(row)
    except BaseException:
        if folder is not None:
            remove_dataset_files(folder)
        raise


async def _create_from_upload(request: Request, key: dict[str, Any]) -> JSONResponse:
    settings: ServiceSettings = request.app.state.settings
    limit = int(settings.max_upload_mb * 2**20)
    form = await _read_form(request, limit)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(422, "validation_error", "file: a multipart file part named 'file' is required", field="file")
    validation = form.get("validation_file")
    if validation is not None and not isinstance(validation, UploadFile):
        raise ApiError(422, "validation_error", "validation_file: must be a file part", field="validation_file")
    columns = _columns_from_form(form.get("columns"))
    name = form.get("name") if isinstance(form.get("name"), str) and form.get("name") else (upload.filename or "upload")
    if len(name) > 200:
        raise ApiError(422, "validation_error", "name: at most 200 characters", field="name")
    dataset_id = new_id("ds")
    folder = settings.state_dir / "datasets" / dataset_id
    try:
        private_dir(folder)
        train = folder / f"train{upload_suffix(upload.filename, 'file')}"
        await run_in_threadpool(save_stream, upload.file, train, limit, "file")
        val_path = None
        if validation is not None:
            val_path = folder / f"validation{upload_suffix(validation.filename, 'validation_file')}"
            await run_in_threadpool(save_stream, validation.file, val_path, limit, "validation_file")
    except BaseException:
        remove_dataset_files(folder)
        raise
    digest = await run_in_threadpool(_file_digest, train)
    val_digest = await run_in_threadpool(_file_digest, val_path) if val_path else None
    request_hash = _canonical_hash({"file": digest, "validation": val_digest, "name": name,
                                    "columns": columns.model_dump()})
    cfg = data_config(columns, str(train), str(val_path) if val_path else None, max_file_mb=settings.max_upload_mb)

    async def handler():
        names = {str(train): upload.filename or "file", str(folder): "upload"}
        if val_path is not None:
            names[str(val_path)] = validation.filename or "validation_file"
        row = await run_in_threadpool(_ingest, request.app.state, key["id"], dataset_id, name, "upload",
                                      upload.filename or "upload", cfg, folder, "file", names)
        return 201, _dataset_out(row), f"/datasets/{dataset_id}"

    try:
        return await idempotent(request, key, request_hash, handler)
    finally:
        if request.app.state.store.get_dataset(key["id"], dataset_id) is None:
            remove_dataset_files(folder)   # a replayed or failed request keeps nothing on disk


async def _create_from_reference(request: Request, key: dict[str, Any]) -> JSONResponse:
    settings: ServiceSettings = request.app.state.settings
    try:
        raw = await request.json()
    except ValueError:
        raise ApiError(422, "validation_error", "body: not valid JSON", field="body") from None
    try:
        ref = DatasetReference.model_validate(raw)
    except ValidationError as err:
        raise validation_error(err) from None
    dataset_id = new_id("ds")
    if ref.path is not None:
        roots = settings.allowed_roots
        train = resolve_under_roots(ref.path, roots, "path")
        val = resolve_under_roots(ref.validation_path, roots, "validation_path") if ref.validation_path else None
        cfg = data_config(ref.columns, str(train), str(val) if val else None, max_file_mb=settings.max_upload_mb)
        names = {str(train): ref.path, **({str(val): ref.validation_path} if val else {})}
        names.update({os.path.realpath(r) + "/": "" for r in roots})

        async def handler():
            row = await run_in_threadpool(_ingest, request.app.state, key["id"], dataset_id,
                                          ref.name or Path(ref.path).name, "path", ref.path, cfg, None, "path", names)
            return 201, _dataset_out(row), f"/datasets/{dataset_id}"
    else:
        name = check_hf_name(ref.hf_name)
        if not settings.hub_enabled:
            raise ApiError(403, "forbidden", "hf_name: this server does not go to the Hugging Face hub "
                           "(AUTODISTILL_SERVICE_HUB_ENABLED is off); upload the files instead", field="hf_name")
        folder = settings.state_dir / "datasets" / dataset_id

        async def handler():
            try:
                saved = await request.app.state.hub.run(fetch_from_hub, name, private_dir(folder), settings)
            except BaseException:
                remove_dataset_files(folder)
                raise
            cfg = data_config(ref.columns, str(saved), max_file_mb=settings.max_upload_mb).model_copy(
                update={"format": "hf"})
            row = await run_in_threadpool(_ingest, request.app.state, key["id"], dataset_id, ref.name or name, "hf",
                                          name, cfg, folder, "hf_name", {str(saved): name, str(folder): name})
            return 201, _dataset_out(row), f"/datasets/{dataset_id}"

    return await idempotent(request, key, _canonical_hash(ref.model_dump(mode="json")), handler)


DATASET_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary",
                             "description": "train split: .jsonl, .csv, .tsv or .parquet"},
                    "validation_file": {"type": "string", "format": "binary"},
                    "name": {"type": "string", "maxLength": 200},
                    "columns": {"type": "string", "description": "JSON of DataColumns"}}}},
            "application/json": {"schema": {"$ref": "#/components/schemas/DatasetReference"}},
        },
    }
}


# --------------------------------------------------------------------------- the app
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
    _routes(app)
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


def _add_schemas(app: FastAPI) -> None:
    from fastapi.openapi.utils import get_openapi

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


def _routes(app: FastAPI) -> None:
    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz(request: Request) -> dict[str, Any]:
        try:
            version = db.ping(request.app.state.store.engine)
        except Exception as err:  # noqa: BLE001 - down, read-only, full: all "not healthy"
            log.error("health check: the database failed: %s", err)
            raise ApiError(503, "unavailable", "database: does not answer or does not take writes") from None
        return {"status": "ok", "database": "ok", "schema_version": version, "version": __version__}

    # ------------------------------------------------------------------ datasets
    @app.post("/datasets", status_code=201, response_model=Dataset, tags=["datasets"], openapi_extra=DATASET_BODY,
              responses={**ERROR_RESPONSES, 403: {"model": ErrorBody}, 409: {"model": ErrorBody},
                         413: {"model": ErrorBody}})
    async def create_dataset(request: Request, key: dict = Depends(current_key)) -> Response:
        """Upload a dataset (multipart) or reference one the server can read (JSON): validated by the data
        layer, answered with its id, statistics and meta-features."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            return await _create_from_upload(request, key)
        if ctype == "application/json":
            return await _create_from_reference(request, key)
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data (an upload) or application/json "
                       "(a reference)", field="content-type")

    @app.get("/datasets", response_model=DatasetPage, tags=["datasets"], responses=ERROR_RESPONSES)
    def list_datasets(request: Request, limit: int = Query(20, ge=1, le=MAX_PAGE),
                      offset: int = Query(0, ge=0, le=MAX_OFFSET), key: dict = Depends(current_key)) -> dict[str, Any]:
        page = request.app.state.store.list_datasets(key["id"], limit, offset)
        return _page(request, [_dataset_out(r) for r in page.items], page.total, limit, offset)

    def _own_dataset(request: Request, key: dict, dataset_id: str) -> dict[str, Any]:
        row = request.app.state.store.get_dataset(key["id"], dataset_id)
        if row is None:
            raise not_found("dataset", dataset_id)
        return row

    @app.get("/datasets/{dataset_id}", response_model=Dataset, tags=["datasets"], responses=ERROR_RESPONSES)
    def get_dataset(dataset_id: str, request: Request, key: dict = Depends(current_key)) -> dict[str, Any]:
        return _dataset_out(_own_dataset(request, key, dataset_id))

    @app.delete("/datasets/{dataset_id}", status_code=204, tags=["datasets"],
                responses={**ERROR_RESPONSES, 409: {"model": ErrorBody}})
    def delete_dataset(dataset_id: str, request: Request, key: dict = Depends(current_key)) -> Response:
        _own_dataset(request, key, dataset_id)
        manager: SearchManager = request.app.state.searches
        for search in request.app.state.store.active_searches(dataset_id):
            manager.refresh(search)   # a search Ray has finished is no longer "in flight"
        outcome = request.app.state.store.delete_dataset(key["id"], dataset_id)   # check + delete: one transaction
        if outcome == "missing":
            raise not_found("dataset", dataset_id)
        if outcome == "in_use":
            active = [s["id"] for s in request.app.state.store.active_searches(dataset_id)]
            raise ApiError(409, "conflict", f"dataset {dataset_id} is used by search(es) in flight: "
                           f"{', '.join(active) or 'starting'}; cancel them first")
        remove_dataset_files(request.app.state.settings.state_dir / "datasets" / dataset_id)
        return Response(status_code=204)

    # ------------------------------------------------------------------ recommendations
    @app.post("/recommendations", response_model=RecommendationResponse, tags=["recommendations"],
              responses={**ERROR_RESPONSES, 503: {"model": ErrorBody}})
    def recommend(body: RecommendationRequest, request: Request, key: dict = Depends(current_key)) -> dict[str, Any]:
        """Ranked KD pipelines for a dataset, with predicted scores (relative to the teacher), an
        uncertainty and why (nearest datasets of the meta-dataset, the features that mattered)."""
        dataset = _own_dataset(request, key, body.dataset_id)
        c = body.constraints
        rec, items = request.app.state.recommender.recommend(dataset, body.top_k, c.max_student_parameters,
                                                             c.config)
        return {"dataset_id": dataset["id"], "target": rec.target,
                "model": {k: rec.info.get(k) for k in ("method", "n_rows", "n_datasets", "n_candidates")},
                "recommendations": items}

    # ------------------------------------------------------------------ searches
    def _own_search(request: Request, key: dict, search_id: str, refresh: bool = True) -> dict[str, Any]:
        row = request.app.state.store.get_search(key["id"], search_id)
        if row is None:
            raise not_found("search", search_id)
        return request.app.state.searches.refresh(row) if refresh else row

    @app.post("/searches", status_code=202, response_model=Search, tags=["searches"],
              responses={**ERROR_RESPONSES, 409: {"model": ErrorBody}, 503: {"model": ErrorBody}})
    async def create_search(body: SearchRequest, request: Request, key: dict = Depends(current_key)) -> Response:
        """Start a search on the Ray cluster (a Ray job named by the search id); follow it at Location."""
        job_config = check_search_request(body, request.app.state.settings)

        async def handler():
            row = await run_in_threadpool(_start_search, request, key, body, job_config)
            return 202, json.loads(Search.model_validate(_search_out(row)).model_dump_json()), f"/searches/{row['id']}"

        return await idempotent(request, key, _canonical_hash(body.model_dump(mode="json")), handler)

    def _start_search(request: Request, key: dict, body: SearchRequest, job_config: dict[str, Any]) -> dict[str, Any]:
        dataset = _own_dataset(request, key, body.dataset_id)
        warm = _warm_start(request, dataset, body)
        return request.app.state.searches.create(key["id"], dataset, body.model_dump(mode="json"), warm, job_config)

    def _warm_start(request: Request, dataset: dict, body: SearchRequest) -> list[dict[str, Any]] | None:
        from autodistill.search.space import SearchSpace, SpaceError, encode_points, warm_start_points
        space = SearchSpace.load(body.space)
        if body.config:
            space = space.with_base(body.config)
        if body.warm_start is True:   # the meta-model's or the portfolio's pipelines, projected onto the space
            start = request.app.state.recommender.warm_start(dataset, 4 * WARM_START_POINTS)
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

    @app.get("/searches", response_model=SearchPage, tags=["searches"], responses=ERROR_RESPONSES)
    def list_searches(request: Request, limit: int = Query(20, ge=1, le=MAX_PAGE),
                      offset: int = Query(0, ge=0, le=MAX_OFFSET), key: dict = Depends(current_key)) -> dict[str, Any]:
        page = request.app.state.store.list_searches(key["id"], limit, offset)
        return _page(request, [_search_out(r) for r in page.items], page.total, limit, offset)

    @app.get("/searches/{search_id}", response_model=Search, tags=["searches"], responses=ERROR_RESPONSES)
    def get_search(search_id: str, request: Request, key: dict = Depends(current_key)) -> dict[str, Any]:
        return _search_out(_own_search(request, key, search_id))

    @app.get("/searches/{search_id}/trials", response_model=TrialPage, tags=["searches"], responses=ERROR_RESPONSES)
    def list_trials(search_id: str, request: Request, limit: int = Query(20, ge=1, le=MAX_PAGE),
                    offset: int = Query(0, ge=0, le=MAX_OFFSET), key: dict = Depends(current_key)) -> dict[str, Any]:
        rows = SearchManager.trials(_own_search(request, key, search_id, refresh=False))
        items = [Trial.model_validate({**r, "finished_at": _iso(r["finished_at"])}) for r in rows[offset:offset + limit]]
        return _page(request, items, len(rows), limit, offset)

    @app.post("/searches/{search_id}/cancel", response_model=Search, tags=["searches"],
              responses={**ERROR_RESPONSES, 409: {"model": ErrorBody}})
    def cancel_search(search_id: str, request: Request, key: dict = Depends(current_key)) -> dict[str, Any]:
        row = _own_search(request, key, search_id, refresh=False)
        return _search_out(request.app.state.searches.cancel(row))

    def _best(request: Request, key: dict, search_id: str) -> tuple[dict[str, Any], Path]:
        row = _own_search(request, key, search_id)
        best = SearchManager.best_dir(row)
        if best is None:
            why = "has not finished" if row["state"] not in TERMINAL_STATES else f"is {row['state']} with no student"
            raise ApiError(409, "conflict", f"search {search_id} {why}")
        return row, best

    @app.get("/searches/{search_id}/best", response_model=BestStudent, tags=["searches"],
             responses={**ERROR_RESPONSES, 409: {"model": ErrorBody}})
    def get_best(search_id: str, request: Request, key: dict = Depends(current_key)) -> dict[str, Any]:
        row, best = _best(request, key, search_id)
        metrics = json.loads((best / "metrics.json").read_text(encoding="utf-8")) if (best / "metrics.json").is_file() else {}
        metrics.pop("history", None)
        config = PipelineConfig.model_validate(_load_yaml(best / "config.yaml"))
        config.data.train, config.data.validation = f"dataset:{row['dataset_id']}", None   # not the server's path
        trial = json.loads((best / "trial.json").read_text(encoding="utf-8")) if (best / "trial.json").is_file() else {}
        return {"search_id": search_id, "trial_id": trial.get("trial_id"), "score": trial.get("score"),
                "config": config, "metrics": metrics, "download": f"/searches/{search_id}/best/student"}

    @app.get("/searches/{search_id}/best/student", tags=["searches"],
             responses={**ERROR_RESPONSES, 409: {"model": ErrorBody},
                        200: {"content": {"application/gzip": {}}, "description": "the student, .tar.gz"}})
    def download_best(search_id: str, request: Request, key: dict = Depends(current_key)) -> FileResponse:
        row, best = _best(request, key, search_id)
        archive = SearchManager.best_archive(row, best)
        return FileResponse(archive, media_type="application/gzip", filename=archive.name)

    # ------------------------------------------------------------------ meta-model
    @app.post("/meta-model/refit", response_model=RefitResponse, tags=["meta-model"],
              responses={**ERROR_RESPONSES, 403: {"model": ErrorBody}, 409: {"model": ErrorBody}})
    async def refit(request: Request, key: dict = Depends(admin_key)) -> dict[str, Any]:
        """Fold finished searches into the meta-dataset and refit the meta-model (admin keys only)."""
        async def handler():
            return 200, await run_in_threadpool(request.app.state.recommender.refit), None
        return await idempotent(request, key, _canonical_hash({"refit": True}), handler)


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
