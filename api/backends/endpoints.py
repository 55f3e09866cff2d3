"""The EndpointBackend protocol: where deployments (inference servers) run.

Like training, a backend returns the state to keep from ``create_endpoint`` and gets it back on
every call. Every resource a backend creates is tagged ``fastuner:managed=true`` (plus tenant and
deployment), which is how the janitor finds orphans; untagged endpoints are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from api.domain.enums import DeploymentStatus

MANAGED_TAG = "fastuner:managed"


@dataclass(frozen=True)
class EndpointSpec:
    deployment_id: str
    tenant_id: str
    endpoint_name: str  # deterministic, unique, <= 63 chars of [a-zA-Z0-9-]
    base_model: str
    adapter_prefix: str  # store key prefix holding one folder per adapter id: {tenant}/adapters
    adapter_ids: list[str]  # preloaded at start
    instance_type: str
    instance_count: int = 1
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EndpointStatus:
    status: DeploymentStatus
    failure_reason: str | None = None


@dataclass(frozen=True)
class ManagedEndpoint:
    name: str
    created_at: datetime | None
    tags: dict[str, str]


class InvocationError(Exception):
    """The endpoint answered with an error: ``status`` and ``code`` come from the server."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@runtime_checkable
class EndpointBackend(Protocol):
    name: str

    def create_endpoint(self, spec: EndpointSpec) -> dict[str, Any]:
        """Create (idempotent for the same name); returns the state to keep."""
        ...

    def describe_endpoint(self, endpoint_name: str, state: dict[str, Any]) -> EndpointStatus:
        """``deleted`` when nothing of it exists any more."""
        ...

    def delete_endpoint(self, endpoint_name: str, state: dict[str, Any]) -> None:
        """Delete the endpoint and everything created for it; missing parts are not an error."""
        ...

    def invoke(self, endpoint_name: str, state: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``payload`` to the server's ``/invocations``; raises InvocationError on a 4xx/5xx."""
        ...

    def list_managed(self) -> list[ManagedEndpoint]:
        """Every live endpoint carrying ``fastuner:managed=true`` (for orphan detection)."""
        ...
