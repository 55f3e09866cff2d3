"""Exception handlers: every error reaches the user as ``{code, message, request_id}``; on the
OpenAI-compatible ``/v1`` routes as OpenAI's ``{"error": {message, type, param, code}}`` (the
request id in the ``X-Request-ID`` header), with a request validation error as 400 there."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from api.domain.errors import FastunerError
from api.domain.openai import OpenAIErrorBody, error_param
from api.logging import get_logger

log = get_logger("errors")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
}


class ErrorBody(BaseModel):
    """The body of every error response."""

    code: str = Field(description="stable machine-readable code, e.g. not_found or quota_exceeded")
    message: str = Field(description="what went wrong, for a person")
    request_id: str | None = Field(description="quote it when reporting a problem (also X-Request-ID)")
    details: Any = Field(
        default=None, description="structured context (validation problems, the quota hit …)"
    )


_DESCRIPTIONS = {
    400: "Bad request: refused by a check (preflight, form field, cursor …)",
    401: "Missing, invalid or revoked API key",
    403: "Forbidden for this tenant (e.g. an instance type outside its quota)",
    404: "No such object for this tenant",
    409: "Conflicts with the current state of an object",
    413: "Request body over the size limit",
    422: "The request failed validation",
    429: "A quota of this tenant is reached",
    502: "The object store or the compute backend failed",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses an operation can answer (FastAPI's ``responses=``)."""
    return {status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]} for status in statuses}


def openai_error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``error_responses`` for a ``/v1`` operation: the same statuses, in OpenAI's error shape."""
    return {status: {"model": OpenAIErrorBody, "description": _DESCRIPTIONS[status]} for status in statuses}


OPENAI_PREFIX = "/v1"


def is_openai_scope(scope: Scope) -> bool:
    """Whether the request addresses the OpenAI-compatible API (``/v1``, after the root path)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/")


def openai_status(status: int) -> int:
    """OpenAI answers an invalid request 400 (``openai.BadRequestError``), never 422."""
    return 400 if status == 422 else status


def openai_error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def openai_error_body(
    status: int, code: str | None, message: str, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": openai_error_type(status), "param": param, "code": code}}


def _openai(
    status: int,
    code: str | None,
    message: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    status = openai_status(status)
    return JSONResponse(openai_error_body(status, code, message, param), status_code=status, headers=headers)


_WHERE = {"body", "query", "path", "header"}
_PARAM_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _openai_validation(problems: list[dict[str, Any]]) -> tuple[str, str | None]:
    """(message, param) of a request validation error on ``/v1``: the first parameter at fault and
    what it should be (the alternatives of a union joined: "'auto' or a number")."""

    def param_of(loc: list[Any]) -> str:
        # drop where it came from and pydantic's union tags (``literal['auto']``, ``float``)
        parts = [str(p) for p in loc if p not in _WHERE and (isinstance(p, int) or _PARAM_PART.match(str(p)))]
        while parts and parts[-1] in ("float", "int", "str", "bool", "dict", "list"):
            parts.pop()
        return ".".join(parts)

    if not problems:
        return "invalid request", None
    param = param_of(problems[0]["loc"])
    msgs = list(dict.fromkeys(str(p["msg"]) for p in problems if param_of(p["loc"]) == param))
    message = " or ".join(msgs)
    return (f"{param}: {message}" if param else message), (param or None)


def error_body(request: Request, code: str, message: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "code": code,
        "message": message,
        "request_id": getattr(request.state, "request_id", None),
    }
    if details is not None:
        body["details"] = details
    return body


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FastunerError)
    async def _domain(request: Request, exc: FastunerError) -> JSONResponse:
        if exc.status >= 500:
            log.error("request failed: %s", exc.message, extra={"code": exc.code})
        if is_openai_scope(request.scope):
            code = getattr(exc, "openai_code", None) or exc.code
            return _openai(exc.status, code, exc.message, error_param(exc))
        return JSONResponse(error_body(request, exc.code, exc.message, exc.details), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        first = problems[0] if problems else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        message = f"{where}: {first['msg']}" if where else str(first["msg"])
        if is_openai_scope(request.scope):
            return _openai(422, "invalid_request", *_openai_validation(problems))
        return JSONResponse(error_body(request, "invalid_request", message, problems), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        if is_openai_scope(request.scope):
            return _openai(exc.status_code, code, str(exc.detail), headers=exc.headers)
        return JSONResponse(
            error_body(request, code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        if is_openai_scope(request.scope):
            rid = getattr(request.state, "request_id", None)
            return _openai(500, "internal_error", f"internal server error; quote the request id {rid}")
        return JSONResponse(
            error_body(request, "internal_error", "internal server error; quote the request id"),
            status_code=500,
        )
