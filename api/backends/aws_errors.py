"""Shared handling of AWS calls for the SageMaker backends: error codes, messages, and the
typed BackendError (with whether retrying later may help)."""

from __future__ import annotations

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from api.domain.errors import BackendError


def error_code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return type(exc).__name__


def error_message(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Message", ""))
    return str(exc)


TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalServerError",
    }
)


def backend_error(what: str, exc: Exception) -> BackendError:
    """A failed AWS call (after botocore's retries). ``transient``: worth trying again later."""
    code = error_code(exc)
    transient = code in TRANSIENT_CODES or isinstance(exc, BotoConnectionError | HTTPClientError)
    return BackendError(
        f"{what}: {code}: {error_message(exc)}", details={"aws_error": code, "transient": transient}
    )
