"""Every error is a JSON body ``{"error", "detail", "field"}``; validation errors name the field."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

STATUS_NAMES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
                422: "validation_error", 503: "unavailable"}


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.error, self.detail, self.field, self.headers = status, error, detail, field, headers

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.detail, "field": self.field}


def validation_error(err: Any, prefix: str = "", default_field: str = "body") -> ApiError:
    """A 422 naming the first invalid field of a pydantic ValidationError (under ``prefix``)."""
    e = err.errors()[0]
    field = ".".join(x for x in (prefix, ".".join(str(p) for p in e["loc"])) if x) or default_field
    msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
    return ApiError(422, "validation_error", f"{field}: {msg}", field=field)


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

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": STATUS_NAMES.get(exc.status_code, "error"), "detail": str(exc.detail),
                             "field": None}, status_code=exc.status_code, headers=getattr(exc, "headers", None))
