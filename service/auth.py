"""API keys: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; stored as SHA-256 hashes only.

Keys are created with ``autodistill keys create NAME [--admin]``. Admin keys may also refit the
meta-model (it learns from every key's searches); every key sees only its own datasets and searches.
"""
from __future__ import annotations

from typing import Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .errors import ApiError

_bearer = HTTPBearer(auto_error=False, description="an AutoDistiller API key")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an AutoDistiller API key")


def current_key(request: Request, bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
                header: str | None = Depends(_header)) -> dict[str, Any]:
    secret = bearer.credentials if bearer is not None else header
    if not secret:
        raise ApiError(401, "unauthorized", "an API key is required (Authorization: Bearer <key> or X-API-Key)",
                       headers={"WWW-Authenticate": "Bearer"})
    key = request.app.state.store.key_for_secret(secret)
    if key is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return key


def admin_key(key: dict[str, Any] = Depends(current_key)) -> dict[str, Any]:
    if key["scope"] != "admin":
        raise ApiError(403, "forbidden", "this endpoint needs an admin API key (autodistill keys create --admin)")
    return key
