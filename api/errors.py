"""Exception handlers: every error reaches the user as ``{code, message, request_id}``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.domain.errors import FastunerError
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
        return JSONResponse(error_body(request, "invalid_request", message, problems), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(request, code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(
            error_body(request, "internal_error", "internal server error; quote the request id"),
            status_code=500,
        )
