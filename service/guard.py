"""The first thing every request meets (a pure ASGI middleware): the API key is checked before a byte of
the body is read, and every body is capped in size (uploads to ``POST /datasets`` by ``max_upload_mb``,
any other body, whatever its content type, by ``max_json_kb``) and JSON bodies in nesting depth
(``max_json_depth``), so no request costs the server more memory than its cap, and none is parsed for a
caller without a key."""
from __future__ import annotations

import json
import re
from typing import Any

from starlette.concurrency import run_in_threadpool

from .auth import authenticate
from .errors import ApiError

PUBLIC_PATHS = ("/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
UPLOAD_SLACK = 1 << 16   # multipart headers and boundaries around the capped files
UPLOAD_ROUTE = ("POST", "/datasets")   # the one route that takes uploads
_JSON_TOKEN = re.compile(r'\\.|["\[\]{}]', re.DOTALL)
JSON_WHITESPACE = " \t\n\r"


def json_text(body: bytes) -> str | None:
    """``body`` decoded as ``json.loads`` decodes bytes (UTF-8, -16 or -32, a byte order mark dropped), so
    the depth check reads what the parser will; None when it does not decode (the parser refuses it too)."""
    try:
        return body.decode(json.detect_encoding(body), "surrogatepass")
    except (UnicodeDecodeError, LookupError):
        return None


def json_too_deep(text: str, limit: int) -> bool:
    """True when ``text`` nests arrays/objects deeper than ``limit`` (strings and escapes skipped); a scan
    without recursion, so it cannot itself run out of stack."""
    depth, in_string = 0, False
    for m in _JSON_TOKEN.finditer(text):
        tok = m.group()
        if tok[0] == "\\":          # a backslash escape: inside a string, skip the escaped character
            continue
        if tok == '"':
            in_string = not in_string
        elif not in_string:
            depth += 1 if tok in ("[", "{") else -1
            if depth > limit:
                return True
    return False


class BodyTooLarge(Exception):
    """Raised from ``receive`` once a body passes its cap (also by the upload reader's tighter cap)."""


async def _send_error(send, err: ApiError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    headers += [(k.lower().encode(), v.encode()) for k, v in (err.headers or {}).items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


class RequestGuard:
    """Authenticate, then read the body under its cap (see the module docstring)."""

    def __init__(self, app, state):
        self.app = app
        self.state = state   # the FastAPI app's state: settings and store

    def _limit(self, scope: dict[str, Any], content_type: str) -> tuple[int, bool]:
        """(cap, whether to buffer): the upload cap, streamed, only for an upload to the upload route; any
        other body, whatever its content type, is small and buffered."""
        settings = self.state.settings
        if (scope["method"], scope["path"]) == UPLOAD_ROUTE and content_type == "multipart/form-data":
            return int(settings.max_upload_mb * 2**20) + UPLOAD_SLACK, False
        return int(settings.max_json_kb * 1024), True

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        try:
            key = await run_in_threadpool(authenticate, self.state.store, _header(scope, b"authorization"),
                                          _header(scope, b"x-api-key"))
            scope.setdefault("state", {})["api_key"] = key
            content_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
            limit, buffer = self._limit(scope, content_type)
            declared = _header(scope, b"content-length")
            if declared and declared.strip().isdigit() and int(declared) > limit:
                raise BodyTooLarge()
            if buffer:
                receive = await self._buffered(receive, limit)
            else:
                receive = self._counting(receive, limit)
        except ApiError as err:
            return await _send_error(send, err)
        except BodyTooLarge:
            return await _send_error(send, self._too_large(limit))
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)
        try:
            await self.app(scope, receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _send_error(send, self._too_large(limit))

    @staticmethod
    def _too_large(limit: int) -> ApiError:
        return ApiError(413, "payload_too_large", f"request body larger than this endpoint's cap of "
                        f"{limit / 2**20:.2f} MB", field="body")

    async def _buffered(self, receive, limit: int):
        """The whole (small) body, read under the cap and checked for depth, replayed to the app."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return receive
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge()
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        depth = self.state.settings.max_json_depth
        text = json_text(body)
        if text is not None and text.lstrip(JSON_WHITESPACE)[:1] in ("[", "{") and json_too_deep(text, depth):
            raise ApiError(422, "validation_error", f"body: JSON nested deeper than {depth} levels", field="body")
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return replay

    @staticmethod
    def _counting(receive, limit: int):
        seen = 0

        async def counting():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge()
            return message
        return counting
