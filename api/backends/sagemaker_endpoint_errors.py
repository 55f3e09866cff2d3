"""How SageMaker's endpoint answers map onto ours (pure: no I/O): ``DescribeEndpoint`` onto a
deployment status, a failed ``InvokeEndpoint`` onto the server's own error, and the AWS error
tests (missing, already there, being deleted, busy) the endpoint backends branch on."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from api.backends.aws_errors import backend_error, error_code, error_message
from api.backends.endpoints import EndpointStatus, InvocationError
from api.domain.enums import DeploymentStatus
from api.domain.errors import BackendError

CREATING_STATUSES = frozenset({"Creating", "Updating", "SystemUpdating", "RollingBack"})
FAILED_STATUSES = frozenset({"Failed", "OutOfService", "UpdateRollbackFailed"})
LIVE_STATUSES = {"InService": DeploymentStatus.IN_SERVICE, "Deleting": DeploymentStatus.DELETING}


def live_status(status: str, creating: frozenset[str]) -> EndpointStatus | None:
    """What endpoints and inference components share: ``creating`` (any of ``creating``),
    ``InService`` and ``Deleting``; None for anything else."""
    if status in creating:
        return EndpointStatus(DeploymentStatus.CREATING)
    found = LIVE_STATUSES.get(status)
    return EndpointStatus(found) if found is not None else None


def status_from_description(desc: Mapping[str, Any]) -> EndpointStatus:
    """Map a ``DescribeEndpoint`` response onto our deployment status."""
    status = str(desc.get("EndpointStatus", ""))
    live = live_status(status, CREATING_STATUSES)
    if live is not None:
        return live
    if status in FAILED_STATUSES:
        reason = desc.get("FailureReason")
        if not reason:
            reason = (
                "the endpoint is out of service"
                if status == "OutOfService"
                else f"the SageMaker endpoint is {status} without a reason"
            )
        return EndpointStatus(DeploymentStatus.FAILED, failure_reason=str(reason))
    raise BackendError(f"unknown SageMaker EndpointStatus {status!r}")


_ORIGINAL = re.compile(r"\((\d{3})\) from \S+ with message \"(.*)\"\. See ", re.DOTALL)


def invocation_error(exc: ClientError) -> InvocationError | BackendError:
    """Map a failed ``InvokeEndpoint`` onto InvocationError (the server's answer) or BackendError.

    A container error comes back as ``ModelError`` (HTTP 424) carrying ``OriginalStatusCode`` and
    ``OriginalMessage`` (the container's body, ``{"code", "message"}`` for our server); older
    responses only have them inside ``Message`` ("Received client error (404) from primary with
    message "…". See …").
    """
    code = error_code(exc)
    message = error_message(exc)
    if code == "ModelError":
        raw_status = exc.response.get("OriginalStatusCode")
        raw_body = exc.response.get("OriginalMessage")
        match = _ORIGINAL.search(message)
        if raw_status is None and match:
            raw_status = match.group(1)
        if raw_body is None and match:
            raw_body = match.group(2)
        if raw_status is None and "timed out" in message.lower():
            # SageMaker gives the container 60 s to answer.
            return InvocationError(504, "invocation_timeout", message)
        try:
            status = int(str(raw_status))
        except ValueError:
            status = 502
        server_code, server_message = _server_error(raw_body)
        return InvocationError(
            status,
            server_code or ("model_error" if status < 500 else "internal_error"),
            server_message or str(raw_body or message),
        )
    if code == "ModelNotReadyException":
        return InvocationError(503, "model_loading", message or "the model is not ready for inference yet")
    if code in ("ValidationError", "ValidationException"):
        if "not found" in message.lower() or "could not find" in message.lower():
            return InvocationError(404, "endpoint_not_found", message)
        return InvocationError(400, "invalid_request", message)
    return backend_error("could not invoke the endpoint", exc)


def _server_error(body: Any) -> tuple[str | None, str | None]:
    """``(code, message)`` from the container's JSON error body, when it is one."""
    if not isinstance(body, str | bytes) or not body:
        return None, None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(parsed, dict):
        return None, None
    code, message = parsed.get("code"), parsed.get("message")
    return (str(code) if code else None, str(message) if message else None)


def not_found(exc: ClientError) -> bool:
    code, message = error_code(exc), error_message(exc).lower()
    if code in ("ResourceNotFound", "ResourceNotFoundException"):
        return True
    return code in ("ValidationException", "ValidationError") and (
        "could not find" in message or "not found" in message or "does not exist" in message
    )


def already_exists(exc: ClientError) -> bool:
    """SageMaker: ``ValidationException: Cannot create already existing model "arn:…"``."""
    code, message = error_code(exc), error_message(exc).lower()
    return code in ("ValidationException", "ResourceInUse") and (
        "already existing" in message or "already exists" in message
    )


def being_deleted(exc: ClientError) -> bool:
    message = error_message(exc).lower()
    return error_code(exc) == "ValidationException" and "deleting" in message and "status" in message


def busy(exc: ClientError) -> bool:
    """A refusal because the resource is mid-operation (worth retrying on the next pass)."""
    message = error_message(exc).lower()
    return error_code(exc) == "ValidationException" and any(
        word in message for word in ("in-progress", "in progress", "creating", "updating", "status")
    )
