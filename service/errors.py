"""Every error is a JSON body ``{"error", "detail", "field"}``; validation errors name the field.

Unexpected exceptions (500) and database failures (503) are JSON too; their details (tracebacks, server
paths) go to the server log under a reference the body gives, never into the body.
"""
from __future__ import annotations

import logging
import os
import re
import uuid
from typing import Any, Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("autodistill.service")

STATUS_NAMES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
                422: "validation_error", 429: "too_many_requests", 500: "internal_error", 503: "unavailable"}
# an absolute path in a message: a "/" that starts a word (after a quote, a space or the start)
_ABS_PATH = re.compile(r"""(?<![\w.:/])/(?:[^\s'"(),:;]+/)*[^\s'"(),:;]*""")
# a URI names a server location (file:///srv/x, s3://bucket/key, http://10.0.0.5:8265/api), except the public hub's
_URI = re.compile(r"""\b(?!https?://(?:www\.)?huggingface\.co\b)[A-Za-z][A-Za-z0-9+.-]*://[^\s'"(),;]*[^\s'"(),;:.]""")


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.error, self.detail, self.field, self.headers = status, error, detail, field, headers

    def __reduce__(self):   # raised in an ingest worker process, re-raised in the service
        return (ApiError, (self.status, self.error, self.detail, self.field, self.headers))

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.detail, "field": self.field}


def validation_error(err: Any, prefix: str = "", default_field: str = "body") -> ApiError:
    """A 422 naming the first invalid field of a pydantic ValidationError (under ``prefix``)."""
    e = err.errors()[0]
    field = ".".join(x for x in (prefix, ".".join(str(p) for p in e["loc"])) if x) or default_field
    msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
    return ApiError(422, "validation_error", f"{field}: {msg}", field=field)


def public_text(text: str, replacements: Iterable[tuple[str, str]] = ()) -> str:
    """``text`` fit for a client: each known server path replaced by what the client calls it, and any
    other absolute path or URI (a storage location) by ``<server path>``."""
    for server, public in sorted(replacements, key=lambda r: -len(r[0])):
        if server:
            text = text.replace(server, public)
    return _ABS_PATH.sub("<server path>", _URI.sub("<server path>", text))


def public_model_names(cfg, backbone_roots: Iterable[str]):
    """``cfg`` (a PipelineConfig) with each model folder under a backbone root (the real path a search ran
    with) named as a client names it: relative to that root."""
    roots = [os.path.realpath(root) for root in backbone_roots]

    def public(name: str | None) -> str | None:
        for root in roots:
            if name and name.startswith(root.rstrip("/") + "/"):
                return os.path.relpath(name, root)
        return name
    cfg = cfg.model_copy(deep=True)
    for teacher in cfg.teachers:
        teacher.backbone = public(teacher.backbone)
    for aug in cfg.augmentation.augmenters:
        aug.mlm_model = public(aug.mlm_model)
        if aug.translation_models:
            aug.translation_models = [public(m) for m in aug.translation_models]
    return cfg


def not_found(kind: str, rid: str) -> ApiError:
    return ApiError(404, "not_found", f"no {kind} {rid!r} for this API key", field=None)


def _loc_to_field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or ".".join(map(str, loc))


def _clean(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in errors:
        msg = "unknown key" if e.get("type") == "extra_forbidden" else str(e.get("msg"))
        out.append({"field": _loc_to_field(tuple(e.get("loc", ()))), "message": msg, "type": e.get("type")})
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _clean(list(exc.errors()))
        first = errors[0] if errors else {"field": None, "message": "invalid request"}
        return JSONResponse({"error": "validation_error", "detail": f"{first['field']}: {first['message']}",
                             "field": first["field"], "errors": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return unexpected_error(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": STATUS_NAMES.get(exc.status_code, "error"), "detail": str(exc.detail),
                             "field": None}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def unexpected_error(request: Request | None, exc: BaseException) -> JSONResponse:
    """The JSON answer to an exception nothing else handled: 503 for a database that refuses (down,
    read-only, locked), else 500; the details are logged under the reference the body gives."""
    from sqlalchemy.exc import DBAPIError
    ref = uuid.uuid4().hex[:12]
    where = f"{request.method} {request.url.path}" if request is not None else "?"
    log.error("unhandled error %s in %s", ref, where, exc_info=(type(exc), exc, exc.__traceback__))
    if isinstance(exc, DBAPIError):
        return JSONResponse({"error": "unavailable", "detail": f"the database refused the operation (ref {ref})",
                             "field": None}, status_code=503)
    return JSONResponse({"error": "internal_error", "detail": f"internal error (ref {ref}; see the server log)",
                         "field": None}, status_code=500)
