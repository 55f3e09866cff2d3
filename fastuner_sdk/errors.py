"""Typed API errors: every error the API answers becomes an :class:`ApiError` subclass.

Each carries ``status`` (HTTP), ``code`` (the API's stable machine code, e.g. ``not_found``),
``message``, ``request_id`` (quote it in a bug report) and ``details`` (e.g. a dataset's
line-numbered validation report). Catch the subclass you care about, or ``ApiError`` for all.
"""

from __future__ import annotations

from typing import Any

import httpx


class ConfigurationError(ValueError):
    """The client cannot be set up as asked (e.g. no API URL and no ``embedded=True``)."""


class ApiError(Exception):
    """An error answered by the API: ``{code, message, request_id}`` (plus ``details``)."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None, details: Any = None):
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.details = details

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status}, code={self.code!r}, request_id={self.request_id!r})"
        )


class BadRequestError(ApiError):
    """400: the request is malformed or names something unusable."""


class AuthenticationError(ApiError):
    """401: no API key, or one that is unknown or revoked."""


class PermissionDeniedError(ApiError):
    """403: the key may not do this."""


class NotFoundError(ApiError):
    """404: no such object for this tenant (another tenant's ids are not found either)."""


class ConflictError(ApiError):
    """409: the object's state forbids this now (e.g. deleting a dataset a job uses)."""


class PayloadTooLargeError(ApiError):
    """413: a body or file over the server's limit."""


class UnprocessableError(ApiError):
    """422: the request was understood but is invalid (``validation_failed``: see ``details``)."""


class RateLimitError(ApiError):
    """429 ``rate_limited``: too many requests; the SDK already waited ``Retry-After`` and retried."""


class QuotaExceededError(ApiError):
    """429 ``quota_exceeded``: a tenant quota (concurrent jobs, endpoints) is reached; not retried."""


class ServerError(ApiError):
    """5xx: the server or something behind it (store, compute backend) failed."""


class ServiceUnavailableError(ServerError):
    """503: the server is not taking requests right now; the SDK already retried."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


class StreamError(ServerError):
    """A streamed call failed after its stream opened (an ``error`` event: the HTTP status was
    already 200). ``status`` is 502; ``code`` and ``message`` are the event's."""


_BY_CODE: dict[str, type[ApiError]] = {
    "quota_exceeded": QuotaExceededError,
    "unauthorized": AuthenticationError,
    "forbidden": PermissionDeniedError,
}


def error_class(status: int, code: str) -> type[ApiError]:
    """The exception class for an answer: by code where the code is more precise, else by status."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else ApiError


def api_error(resp: httpx.Response) -> ApiError:
    """The typed error for an error response (the body must have been read)."""
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = str(body.get("code", "http_error"))
    return error_class(resp.status_code, code)(
        resp.status_code,
        code,
        str(body.get("message", resp.text[:500] or resp.reason_phrase)),
        body.get("request_id") or resp.headers.get("x-request-id"),
        body.get("details"),
    )
