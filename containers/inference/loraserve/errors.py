"""Typed errors that map one-to-one onto HTTP responses ``{code, message}``."""

from __future__ import annotations


class ServeError(Exception):
    """An error with an HTTP status and a stable machine-readable code."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class BadRequest(ServeError):
    status = 400
    code = "bad_request"


class AdapterNotFound(ServeError):
    status = 404
    code = "adapter_not_found"


class AdapterInvalid(ServeError):
    """The adapter exists but cannot be loaded onto this base model (e.g. shape mismatch)."""

    status = 422
    code = "adapter_invalid"


class AdapterFetchFailed(ServeError):
    """The adapter store could not be read (permissions, network): not the client's fault."""

    status = 502
    code = "adapter_fetch_failed"


class NotReady(ServeError):
    status = 503
    code = "model_loading"
