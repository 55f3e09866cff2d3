"""The EndpointBackend protocol: where deployments (inference servers) run.

Like training, a backend returns the state to keep from ``create_endpoint`` and gets it back on
every call. Every resource a backend creates is tagged ``fastuner:managed=true`` (plus tenant and
deployment), which is how the janitor finds orphans; untagged endpoints are never touched.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from api.domain.enums import DeploymentStatus
from api.domain.errors import BackendError

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


@dataclass(frozen=True)
class ManagedComponent:
    """A live SageMaker inference component tagged ``fastuner:managed=true``."""

    name: str
    endpoint_name: str
    adapter_id: str | None  # None: a base-model component
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


STREAM_EVENT_TYPES = ("token", "done", "error")


@runtime_checkable
class StreamingEndpointBackend(EndpointBackend, Protocol):
    """A backend whose servers stream tokens (the inference container's ``stream: true``).

    A separate protocol so a backend without streaming still is an :class:`EndpointBackend`; the
    service falls back to one ``invoke`` (the whole text as one delta) for those.
    """

    def invoke_stream(
        self, endpoint_name: str, state: dict[str, Any], payload: dict[str, Any]
    ) -> Generator[dict[str, Any], None, None]:
        """POST ``payload`` with ``"stream": true`` to ``/invocations``; yields the server's events
        as dicts, in order: ``{"type": "token", "text"}`` per new piece of text, then one
        ``{"type": "done", "output": {...}, ...}`` or one ``{"type": "error", "code", "message"}``.

        Raises InvocationError (on the first ``next``) when the server refuses the request with a
        4xx/5xx before generating, BackendError when the endpoint cannot be reached or the stream
        breaks. Closing the generator (``close()``) closes the upstream connection, which is how
        the server learns the client went away and frees its slot.
        """
        ...


def parse_sse_events(chunks: Iterable[bytes]) -> Generator[dict[str, Any], None, None]:
    """The JSON ``data:`` of each Server-Sent Event in a byte stream cut anywhere (an HTTP body's
    chunks, SageMaker's ``PayloadPart``s): events end at a blank line; comments and other fields
    are skipped; an event whose data is not a JSON object is the endpoint breaking the contract
    (``BackendError``); a partial event at the end of the stream is dropped, as the spec says."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        if buffer.endswith(b"\r"):  # a CRLF split across chunks: wait for the LF
            continue
        buffer = buffer.replace(b"\r\n", b"\n")
        while (end := buffer.find(b"\n\n")) >= 0:
            block, buffer = buffer[:end], buffer[end + 2 :]
            data = [line[5:].removeprefix(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
            if not data:
                continue
            try:
                event = json.loads(b"\n".join(data))
            except ValueError:
                event = None
            if not isinstance(event, dict):
                raise BackendError(
                    f"the endpoint streamed an event that is not a JSON object: {block[:200]!r}"
                )
            yield event


@runtime_checkable
class AdapterHosting(Protocol):
    """A backend that hosts each adapter as its own resource next to one base (SageMaker inference
    components). Backends without it serve any adapter under ``spec.adapter_prefix`` on demand, so
    adding or removing an adapter there only changes the deployment's row."""

    def add_adapter(self, spec: EndpointSpec, state: dict[str, Any], adapter_id: str) -> dict[str, Any]:
        """Host ``adapter_id`` next to the running base (idempotent); returns the new state."""
        ...

    def remove_adapter(self, endpoint_name: str, state: dict[str, Any], adapter_id: str) -> dict[str, Any]:
        """Stop hosting ``adapter_id`` (missing is fine); returns the new state."""
        ...

    def list_managed_components(self) -> list[ManagedComponent]:
        """Every live component tagged ``fastuner:managed=true`` (for the janitor's stray sweep)."""
        ...

    def delete_component(self, name: str) -> None:
        """Delete one component; missing is fine."""
        ...
