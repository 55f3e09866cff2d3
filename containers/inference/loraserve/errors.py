"""Typed errors that map one-to-one onto HTTP responses ``{code, message}``.

Each error class declares its status and code as class keywords:
``class AdapterNotFound(ServeError, status=404, code="adapter_not_found")``.
"""

from __future__ import annotations

from typing import Any, TypedDict


class ErrorFields(TypedDict):
    """An error as ``log_event`` fields."""

    code: str
    error: str


class ServeError(Exception):
    """An error with an HTTP status and a stable machine-readable code."""

    status: int = 500
    code: str = "internal_error"

    def __init_subclass__(cls, *, status: int | None = None, code: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.status = status if status is not None else cls.status
        cls.code = code if code is not None else cls.code

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.code
        self.status = status if status is not None else self.status

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    def log_fields(self) -> ErrorFields:
        return ErrorFields(code=self.code, error=self.message)


class BadRequest(ServeError, status=400, code="bad_request"):
    """The request cannot be served as it is."""


class AdapterNotFound(ServeError, status=404, code="adapter_not_found"):
    """No adapter of that id in the adapter store."""


class AdapterInvalid(ServeError, status=422, code="adapter_invalid"):
    """The adapter exists but cannot be loaded onto this base model (e.g. shape mismatch)."""


class AdapterFetchFailed(ServeError, status=502, code="adapter_fetch_failed"):
    """The adapter store could not be read (permissions, network): not the client's fault."""


class NotReady(ServeError, status=503, code="model_loading"):
    """The base model is still loading, or failed to load."""


class Cancelled(ServeError, status=499, code="cancelled"):
    """The client went away."""


class DeadlineExceeded(ServeError, status=504, code="deadline_exceeded"):
    """The request's deadline passed before generation could start."""


class QueueFull(ServeError, status=429, code="queue_full"):
    """The scheduler's queue has no room; the client should retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
