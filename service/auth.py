"""API keys: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; stored as SHA-256 hashes only.

Keys are created with ``autodistill keys create NAME [--admin]``. Admin keys may also refit the
meta-model (it learns from every key's searches); every key sees only its own datasets and searches.
The key is checked by :class:`service.guard.RequestGuard` before the body is read; the dependencies
here take the key it found.
"""
from __future__ import annotations

from typing import Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPBearer

from .errors import ApiError

_bearer = HTTPBearer(auto_error=False, description="an AutoDistiller API key")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an AutoDistiller API key")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def authenticate(store: Any, authorization: str | None, api_key_header: str | None) -> dict[str, Any]:
    """The key row for these headers, else a 401 ApiError."""
    secret = None
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            secret = credentials.strip()
    secret = secret or api_key_header
    if not secret:
        raise ApiError(401, "unauthorized", "an API key is required (Authorization: Bearer <key> or X-API-Key)",
                       headers=_CHALLENGE)
    key = store.key_for_secret(secret)
    if key is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key", headers=_CHALLENGE)
    return key


def current_key(request: Request, _b: Any = Depends(_bearer), _h: Any = Depends(_header)) -> dict[str, Any]:
    key = getattr(request.state, "api_key", None)
    if key is None:   # the app without its guard (never in create_app): check here
        key = authenticate(request.app.state.store, request.headers.get("authorization"),
                           request.headers.get("x-api-key"))
    return key


def admin_key(key: dict[str, Any] = Depends(current_key)) -> dict[str, Any]:
    if key["scope"] != "admin":
        raise ApiError(403, "forbidden", "this endpoint needs an admin API key (autodistill keys create --admin)")
    return key
