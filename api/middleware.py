"""Pure-ASGI middleware: request ids, authentication before bodies, per-route body caps and body
read timeouts.

Order (outermost first, see :func:`api.app.create_app`): request id → request limits → auth →
rate limit (:mod:`api.ratelimit`) → the app. Nothing before the app reads the request body, so an
unauthenticated, over-size or over-rate request is answered before a byte of its body is parsed,
and any response sent before the whole body arrived carries ``connection: close``: the server
drops the connection instead of draining (or buffering) what the client is still sending.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.domain.errors import PayloadTooLarge, Unauthorized
from api.errors import is_openai_scope, openai_error_body, openai_status
from api.logging import get_logger, request_id_var

_VALID_RID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
log = get_logger("http")

# Where the auth middleware leaves the caller's tenant for the `Tenant` dependency and the limiter.
TENANT_STATE = "fastuner_tenant"

# Routes any caller may use without an API key (exact paths, after the root path).
PUBLIC_PATHS = frozenset(
    {"/healthz", "/v0/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
)

# The only routes whose bodies may be large (multipart uploads): they get ``max_upload_bytes``;
# every other method and path, whatever its Content-Type, gets ``max_json_body_bytes``.
# tests/security/test_http_limits.py checks this set against the routes the app documents.
UPLOAD_ROUTES = frozenset(
    {
        ("POST", "/v0/datasets"),
        ("POST", "/v0/datasets/validate"),
        ("POST", "/v0/inference/batch"),
        ("POST", "/v1/files"),
    }
)

_CLOSE = (b"connection", b"close")


class RequestIdMiddleware:
    """Takes ``X-Request-ID`` from the client (if sane) or makes one, exposes it to logs, echoes it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        rid = incoming if incoming and _VALID_RID.match(incoming) else "req_" + uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status: dict[str, Any] = {}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if not scope["path"].endswith("/healthz"):
                log.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status.get("code"),
                        "ms": round((time.perf_counter() - started) * 1000, 2),
                    },
                )
            request_id_var.reset(token)


class AuthMiddleware:
    """Checks ``Authorization: Bearer <key>`` (scheme case-insensitive) before anything reads the
    body; answers 401 in the error shape, else leaves the tenant in ``scope["state"]``.

    ``authenticate`` is :meth:`api.services.auth.AuthService.authenticate` (a hash lookup; run in
    the thread pool as it touches the database). Paths in ``public_paths``, or under one of
    ``public_prefixes`` (the web console, which checks its own session cookie), need no key.
    """

    def __init__(
        self,
        app: ASGIApp,
        authenticate: Callable[[str | None], str],
        public_paths: Iterable[str] = PUBLIC_PATHS,
        public_prefixes: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.public_paths = frozenset(public_paths)
        self.public_prefixes = tuple(public_prefixes)  # the web console: its own cookie sign-in

    def is_public(self, scope: Scope) -> bool:
        path = route_path(scope)
        return path in self.public_paths or path.startswith(self.public_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.is_public(scope):
            await self.app(scope, receive, send)
            return
        try:
            tenant = await run_in_threadpool(self.authenticate, _header(scope, b"authorization"))
        except Unauthorized as exc:
            await send_error(scope, send, exc.status, exc.code, exc.message, close=has_body(scope))
            return
        scope.setdefault("state", {})[TENANT_STATE] = tenant
        await self.app(scope, receive, send)


class BodyTooLarge(HTTPException):
    """Raised from ``receive``: an HTTPException passes through FastAPI's body parsing and
    Starlette's form parser untouched, and the app's handler answers it in the error shape."""

    def __init__(self, limit: int) -> None:
        super().__init__(PayloadTooLarge.status, _too_large(limit), headers={"connection": "close"})


class BodyTimeout(HTTPException):
    def __init__(self, seconds: float) -> None:
        message = f"the request body did not arrive in time ({seconds:g} s); the connection is closed"
        super().__init__(408, message, headers={"connection": "close"})


class RequestLimitsMiddleware:
    """Per-route body caps and body read timeouts.

    * Upload routes (:data:`UPLOAD_ROUTES`) take up to ``max_upload_bytes``, every other route up
      to ``max_json_bytes``: answered 413 from Content-Length before reading, else while streaming.
    * Each wait for the next body chunk is bounded by ``body_timeout`` seconds, and a non-upload
      body must arrive whole within it: else 408 and the connection is closed. (Slow headers are
      cut by the HTTP protocol of :mod:`api.server`; nothing in ASGI runs before headers end.)
    * A response that starts before the whole body was received gets ``connection: close``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_json_bytes: int,
        max_upload_bytes: int,
        body_timeout: float,
        upload_routes: Iterable[tuple[str, str]] = UPLOAD_ROUTES,
    ) -> None:
        self.app = app
        self.max_json_bytes = max_json_bytes
        self.max_upload_bytes = max_upload_bytes
        self.body_timeout = body_timeout
        self.upload_routes = frozenset(upload_routes)

    def is_upload(self, scope: Scope) -> bool:
        return (scope["method"], route_path(scope)) in self.upload_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = self.is_upload(scope)
        limit = self.max_upload_bytes if upload else self.max_json_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await send_error(
                scope, send, PayloadTooLarge.status, PayloadTooLarge.code, _too_large(limit), close=True
            )
            return
        whole_body_by = None if upload else time.monotonic() + self.body_timeout
        seen = 0
        done = not has_body(scope)

        async def limited_receive() -> Message:
            nonlocal seen, done
            if done:  # body complete: waiting for a disconnect (streaming responses) is not bounded
                return await receive()
            wait = self.body_timeout
            if whole_body_by is not None:
                wait = min(wait, whole_body_by - time.monotonic())
            try:
                with anyio.fail_after(max(wait, 0.0)):
                    message = await receive()
            except TimeoutError:
                log.warning("request body timed out", extra={"path": scope["path"], "bytes": seen})
                raise BodyTimeout(self.body_timeout) from None
            if message["type"] != "http.request":
                done = True
                return message
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
            done = not message.get("more_body", False)
            return message

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and not done:
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"connection" for k, _ in headers):
                    headers.append(_CLOSE)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, limited_receive, send_closing)


async def send_error(
    scope: Scope,
    send: Send,
    status: int,
    code: str,
    message: str,
    *,
    details: Any = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
    close: bool = False,
) -> None:
    """Answer in the API's error shape (``{code, message, request_id}``; OpenAI's on ``/v1``)
    without reading the body."""
    body: dict[str, Any] = {
        "code": code,
        "message": message,
        "request_id": scope.get("state", {}).get("request_id"),
    }
    if details is not None:
        body["details"] = details
    if is_openai_scope(scope):
        status = openai_status(status)
        body = openai_error_body(status, "invalid_api_key" if status == 401 else code, message)
    payload = json.dumps(body).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *headers,
    ]
    if close:
        raw.append(_CLOSE)
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


def route_path(scope: Scope) -> str:
    """The request path as the router matches it (without the root path)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path


def has_body(scope: Scope) -> bool:
    """Whether the request announces a body (a positive Content-Length, or Transfer-Encoding)."""
    length = _content_length(scope)
    return (length is not None and length > 0) or _header(scope, b"transfer-encoding") is not None


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    return int(value) if value is not None and value.strip().isdigit() else None


def _too_large(limit: int) -> str:
    return f"request body exceeds the limit of {limit} bytes"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None
