"""``/datasets``: upload (multipart) or reference (JSON) a dataset, list, read and delete them."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from autodistill.config import DataConfig

from ..auth import current_key
from ..datasets import (HubWorkers, IngestWorkers, check_hf_name, fetch_from_hub, private_dir, remove_dataset_files,
                        resolve_under_roots, save_stream, upload_suffix)
from ..errors import ApiError, not_found, validation_error
from ..guard import BodyTooLarge
from ..schemas import DataColumns, Dataset, DatasetPage, DatasetReference, ErrorBody, data_config
from ..searches import SearchManager
from ..settings import ServiceSettings
from ..store import Store, new_id
from .common import (ERROR_RESPONSES, MAX_OFFSET, MAX_PAGE, canonical_hash, get_hub, get_ingest, get_searches,
                     get_settings, get_store, idempotent, iso, own_dataset, page)

router = APIRouter(tags=["datasets"])
MAX_NAME_LENGTH = 200   # the datasets table's name column

#: POST /datasets reads its body itself (a multipart upload or a JSON reference): its OpenAPI request body
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
                    "name": {"type": "string", "maxLength": MAX_NAME_LENGTH},
                    "columns": {"type": "string", "description": "JSON of DataColumns"}}}},
            "application/json": {"schema": {"$ref": "#/components/schemas/DatasetReference"}},
        },
    }
}


def dataset_out(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "name", "source_kind", "source", "fingerprint", "stats", "meta_features")} \
        | {"created_at": iso(row["created_at"])}


# --------------------------------------------------------------------------- routes
@router.post("/datasets", status_code=201, response_model=Dataset, openapi_extra=DATASET_BODY,
             responses={**ERROR_RESPONSES, 403: {"model": ErrorBody}, 409: {"model": ErrorBody},
                        413: {"model": ErrorBody}})
async def create_dataset(request: Request, key: dict = Depends(current_key),
                         settings: ServiceSettings = Depends(get_settings), store: Store = Depends(get_store),
                         ingest: IngestWorkers = Depends(get_ingest), hub: HubWorkers = Depends(get_hub)) -> Response:
    """Upload a dataset (multipart) or reference one the server can read (JSON): validated by the data
    layer, answered with its id, statistics and meta-features."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    intake = _Intake(request, key, settings, store, ingest)
    if ctype == "multipart/form-data":
        return await intake.from_upload()
    if ctype == "application/json":
        return await intake.from_reference(hub)
    raise ApiError(415, "unsupported_media_type", "send multipart/form-data (an upload) or application/json "
                   "(a reference)", field="content-type")


@router.get("/datasets", response_model=DatasetPage, responses=ERROR_RESPONSES)
def list_datasets(request: Request, limit: int = Query(20, ge=1, le=MAX_PAGE),
                  offset: int = Query(0, ge=0, le=MAX_OFFSET), key: dict = Depends(current_key),
                  store: Store = Depends(get_store)) -> dict[str, Any]:
    found = store.list_datasets(key["id"], limit, offset)
    return page(request, [dataset_out(r) for r in found.items], found.total, limit, offset)


@router.get("/datasets/{dataset_id}", response_model=Dataset, responses=ERROR_RESPONSES)
def get_dataset(dataset_id: str, key: dict = Depends(current_key), store: Store = Depends(get_store)) -> dict[str, Any]:
    return dataset_out(own_dataset(store, key, dataset_id))


@router.delete("/datasets/{dataset_id}", status_code=204, responses={**ERROR_RESPONSES, 409: {"model": ErrorBody}})
def delete_dataset(dataset_id: str, key: dict = Depends(current_key), store: Store = Depends(get_store),
                   manager: SearchManager = Depends(get_searches),
                   settings: ServiceSettings = Depends(get_settings)) -> Response:
    own_dataset(store, key, dataset_id)
    for search in store.active_searches(dataset_id):
        manager.refresh(search)   # a search Ray has finished is no longer "in flight"
    outcome = store.delete_dataset(key["id"], dataset_id)   # check + delete: one transaction
    if outcome == "missing":
        raise not_found("dataset", dataset_id)
    if outcome == "in_use":
        active = [s["id"] for s in store.active_searches(dataset_id)]
        raise ApiError(409, "conflict", f"dataset {dataset_id} is used by search(es) in flight: "
                       f"{', '.join(active) or 'starting'}; cancel them first")
    remove_dataset_files(settings.state_dir / "datasets" / dataset_id)
    return Response(status_code=204)


# --------------------------------------------------------------------------- taking a dataset in
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


def dataset_name(given: str | None, default: str) -> str:
    """``given``, else ``default`` (the file's or hub set's name), if every database backend can store it as a
    name (PostgreSQL refuses NUL and more than its column's length); else 422, before anything is read."""
    name = given or default
    if "\x00" in name:
        raise ApiError(422, "validation_error", "name: a name cannot contain a NUL character", field="name")
    if len(name) > MAX_NAME_LENGTH:
        what = "" if given else f" (by default the file's name, here {len(name)} characters; give a shorter name)"
        raise ApiError(422, "validation_error", f"name: at most {MAX_NAME_LENGTH} characters{what}", field="name")
    return name


class _Intake:
    """One ``POST /datasets``: the request, its key and the app's parts it uses."""

    def __init__(self, request: Request, key: dict[str, Any], settings: ServiceSettings, store: Store,
                 ingest: IngestWorkers):
        self.request, self.key, self.settings, self.store, self.ingest = request, key, settings, store, ingest

    def ingest_one(self, dataset_id: str, name: str, kind: str, source: str, cfg: DataConfig, folder: Path | None,
                   field: str, public_names: dict[str, str]) -> dict[str, Any]:
        """Bound, load, describe (in an ingest worker process) and record one dataset; ``public_names`` maps
        its server paths to what the client calls them (error messages never carry a server path)."""
        settings = self.settings
        try:
            described = self.ingest.describe(cfg, field, public_names, settings.max_rows, settings.max_decoded_bytes,
                                             settings.meta_features_backbone, field=field, owner=self.key["id"])
            row = {"id": dataset_id, "owner": self.key["id"], "name": name, "source_kind": kind, "source": source,
                   "data_config": cfg.model_dump(mode="json"), **described, "created_at": time.time()}
            if not self.store.add_dataset(row, settings.max_datasets_per_key):
                raise self._full()
            return row
        except BaseException:
            if folder is not None:
                remove_dataset_files(folder)
            raise

    def _full(self) -> ApiError:
        return ApiError(429, "too_many_requests", f"this API key keeps {self.settings.max_datasets_per_key} "
                        "datasets, the most it may; delete datasets you no longer need (DELETE /datasets/{id}) "
                        "to make room")

    async def _create(self, request_hash: str, handler) -> JSONResponse:
        """``handler`` run once per Idempotency-Key, refused up front (before any fetch or ingest) when the
        key already keeps its most datasets; ``add_dataset`` checks again as it records."""
        async def within_quota():
            owned = await run_in_threadpool(self.store.dataset_ids, self.key["id"])
            if len(owned) >= self.settings.max_datasets_per_key:
                raise self._full()
            return await handler()
        return await idempotent(self.request, self.key, request_hash, within_quota)

    async def from_upload(self) -> JSONResponse:
        settings = self.settings
        limit = int(settings.max_upload_mb * 2**20)
        form = await _read_form(self.request, limit)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "validation_error", "file: a multipart file part named 'file' is required",
                           field="file")
        validation = form.get("validation_file")
        if validation is not None and not isinstance(validation, UploadFile):
            raise ApiError(422, "validation_error", "validation_file: must be a file part", field="validation_file")
        columns = _columns_from_form(form.get("columns"))
        if "\x00" in (upload.filename or ""):   # the filename is stored as the dataset's source
            raise ApiError(422, "validation_error", "file: a file name cannot contain a NUL character", field="file")
        given = form.get("name")
        name = dataset_name(given if isinstance(given, str) else None, upload.filename or "upload")
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
        request_hash = canonical_hash({"file": digest, "validation": val_digest, "name": name,
                                       "columns": columns.model_dump()})
        cfg = data_config(columns, str(train), str(val_path) if val_path else None, max_file_mb=settings.max_upload_mb)

        async def handler():
            names = {str(train): upload.filename or "file", str(folder): "upload"}
            if val_path is not None:
                names[str(val_path)] = validation.filename or "validation_file"
            row = await run_in_threadpool(self.ingest_one, dataset_id, name, "upload", upload.filename or "upload",
                                          cfg, folder, "file", names)
            return 201, dataset_out(row), f"/datasets/{dataset_id}"

        try:
            return await self._create(request_hash, handler)
        finally:
            if self.store.get_dataset(self.key["id"], dataset_id) is None:
                remove_dataset_files(folder)   # a replayed or failed request keeps nothing on disk

    async def from_reference(self, hub: HubWorkers) -> JSONResponse:
        settings = self.settings
        try:
            raw = await self.request.json()
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
            name = dataset_name(ref.name, Path(ref.path).name)

            async def handler():
                row = await run_in_threadpool(self.ingest_one, dataset_id, name, "path", ref.path, cfg, None, "path",
                                              names)
                return 201, dataset_out(row), f"/datasets/{dataset_id}"
        else:
            name = check_hf_name(ref.hf_name)
            label = dataset_name(ref.name, name)
            if not settings.hub_enabled:
                raise ApiError(403, "forbidden", "hf_name: this server does not go to the Hugging Face hub "
                               "(AUTODISTILL_SERVICE_HUB_ENABLED is off); upload the files instead", field="hf_name")
            folder = settings.state_dir / "datasets" / dataset_id

            async def handler():
                try:
                    saved = await hub.run(fetch_from_hub, name, private_dir(folder), settings,
                                          abandoned=lambda: remove_dataset_files(folder))
                except BaseException:
                    remove_dataset_files(folder)
                    raise
                cfg = data_config(ref.columns, str(saved), max_file_mb=settings.max_upload_mb).model_copy(
                    update={"format": "hf"})
                row = await run_in_threadpool(self.ingest_one, dataset_id, label, "hf", name, cfg, folder,
                                              "hf_name", {str(saved): name, str(folder): name})
                return 201, dataset_out(row), f"/datasets/{dataset_id}"

        return await self._create(canonical_hash(ref.model_dump(mode="json")), handler)
