"""Fastuner's Python SDK: a typed client over the REST API that needs only httpx, pydantic and
tenacity.

    from fastuner_sdk import connect
    with connect() as client:  # FASTUNER_API_URL, FASTUNER_API_KEY
        for job in client.iter_jobs(status="running"):
            print(job.id, job.latest_metrics)

Packaging. The wire models have one source, ``api.domain`` (pydantic + stdlib only: no I/O, no
SQLAlchemy, boto3 or FastAPI; ``api/__init__.py`` holds only the version), which the server
and this package both import, so they cannot drift. The SDK's whole import closure is therefore
``fastuner_sdk``, ``api/__init__.py`` and ``api/domain/``, and its third-party dependencies are
those of the ``sdk`` extra in pyproject.toml (:data:`DEPENDENCIES` says the same; a test checks
they agree): httpx (HTTP), pydantic (the models), tenacity (retries with backoff and jitter;
pure Python, no dependencies of its own). ``tests/sdk/test_lean_import.py`` builds a virtualenv
holding exactly those and uses the SDK there. Inside the ``fastuner`` distribution the SDK
ships with everything else; a lean install is those three package directories plus
``pip install 'httpx>=0.27' 'pydantic>=2.7' 'tenacity>=8'``. Only ``connect(embedded=True)``
(serve the API in this process, what the CLI does without a URL) needs the full install.

Retries (``fastuner_sdk._retry``): connection failures, 429 and 503 (after ``Retry-After``) are
retried with exponential backoff and jitter, never resending what could run twice. Errors are
typed (:mod:`fastuner_sdk.errors`) and carry ``status``, ``code``, ``message`` and ``request_id``.
"""

from __future__ import annotations

from fastuner_sdk.client import DEFAULT_TIMEOUT, FastunerClient, StatusUpdate
from fastuner_sdk.connection import connect
from fastuner_sdk.errors import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    StreamError,
    UnprocessableError,
)

DEPENDENCIES = ("httpx>=0.27", "pydantic>=2.7", "tenacity>=8")
"""What the SDK needs installed (the ``sdk`` extra of pyproject.toml)."""

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEPENDENCIES",
    "ApiError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "ConflictError",
    "FastunerClient",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimitError",
    "ServerError",
    "ServiceUnavailableError",
    "StatusUpdate",
    "StreamError",
    "UnprocessableError",
    "connect",
]
