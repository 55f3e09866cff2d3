"""Typed errors. Each carries a stable machine code and the HTTP status it maps to."""

from __future__ import annotations

from typing import Any, ClassVar


class FastunerError(Exception):
    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ValidationFailed(FastunerError):
    code = "validation_failed"
    status = 422


class BadRequest(FastunerError):
    code = "bad_request"
    status = 400


class NotFound(FastunerError):
    code = "not_found"
    status = 404


class Conflict(FastunerError):
    code = "conflict"
    status = 409


class PayloadTooLarge(FastunerError):
    code = "payload_too_large"
    status = 413


class Unauthorized(FastunerError):
    code = "unauthorized"
    status = 401


class Forbidden(FastunerError):
    code = "forbidden"
    status = 403


class QuotaExceeded(FastunerError):
    """A per-tenant limit is reached; ``details`` names the limit, its value and current usage."""

    code = "quota_exceeded"
    status = 429


class StorageError(FastunerError):
    code = "storage_error"
    status = 502


class BackendError(FastunerError):
    code = "backend_error"
    status = 502


class UnsafePath(FastunerError):
    """A store key or a file whose path goes through a symbolic link (or is not a plain file)."""

    code = "unsafe_path"
    status = 422
