"""Inference relay: find the deployment a request goes to, call its endpoint, check the answer.

The endpoint's own refusals become our errors (:func:`invocation_failed`); an answer that breaks the
container contract is the backend's fault (``BackendError``). Each use resets the deployment's
idle clock (``last_used_at``), which the TTL janitor measures.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from api.backends.endpoints import EndpointBackend, InvocationError, StreamingEndpointBackend
from api.db import models
from api.db.repositories import adapters as adapters_repo
from api.db.repositories import deployments as repo
from api.db.session import Database
from api.domain.deployments import GenerationOutput, InferenceRequest, InferenceResponse
from api.domain.enums import DeploymentStatus
from api.domain.errors import BackendError, BadRequest, Conflict, FastunerError, NotFound


class EndpointBusy(FastunerError):
    """The endpoint's request queue is full (it answered 429/503): retry shortly."""

    code = "endpoint_busy"
    status = 503


def invocation_failed(exc: InvocationError) -> FastunerError:
    """The error to answer for an endpoint's refusal (its own status and message)."""
    if exc.status == 404:
        return NotFound(exc.message)
    if exc.status in (429, 503):
        return EndpointBusy(f"the endpoint is busy, retry shortly: {exc.message}")
    if 400 <= exc.status < 500:
        return BadRequest(exc.message)
    return BackendError(f"the endpoint failed: {exc.message}")


class InferenceRelay:
    def __init__(self, db: Database, backend: EndpointBackend) -> None:
        self.db = db
        self.backend = backend

    def resolve_target(
        self, tenant_id: str, deployment_id: str | None, adapter_id: str | None
    ) -> models.DeploymentRow:
        """The in-service deployment a request goes to: the one named, or one serving the adapter."""
        with self.db.session() as session:
            if deployment_id:
                row = repo.require(session, tenant_id, deployment_id)
                if adapter_id and adapter_id not in row.adapter_ids:
                    raise BadRequest(f"deployment {row.id} does not serve adapter {adapter_id}")
            else:
                row = _serving(session, tenant_id, adapter_id)
            if row.status != DeploymentStatus.IN_SERVICE.value:
                raise Conflict(f"deployment {row.id} is {row.status}, not in service")
            return row

    def infer(self, tenant_id: str, req: InferenceRequest) -> InferenceResponse:
        row = self.resolve_target(tenant_id, req.deployment_id, req.adapter_id)
        name, state = _endpoint(row)
        started = time.perf_counter()
        try:
            result = self.backend.invoke(name, state, _payload(req))
        except InvocationError as exc:
            raise invocation_failed(exc) from exc
        self._touch(row.id)
        try:
            outputs = [GenerationOutput.model_validate(o) for o in result.get("outputs", [])]
        except (ValidationError, TypeError, AttributeError) as exc:  # it broke the container contract
            raise BackendError(f"the endpoint answered malformed outputs: {exc}") from exc
        return _response(row, req, outputs, started)

    def infer_stream(self, tenant_id: str, req: InferenceRequest) -> Generator[str | InferenceResponse]:
        """One prompt, streamed: yields each new piece of text, then the final InferenceResponse
        (its ``generated_text`` is the pieces joined).

        Refusals (resolution, the server's 4xx/5xx before generating) raise on the first ``next``,
        like :meth:`infer`; a failure after that raises ``BackendError``. The deployment's idle
        clock is reset when the stream opens and again when it ends. Closing the generator closes
        the endpoint's stream (the server frees the request's slot). A backend that cannot stream
        answers with one ``invoke``: the whole text as one piece.
        """
        row = self.resolve_target(tenant_id, req.deployment_id, req.adapter_id)
        name, state = _endpoint(row)
        if not isinstance(self.backend, StreamingEndpointBackend):
            whole = self.infer(tenant_id, req)
            if whole.outputs and whole.outputs[0].generated_text:
                yield whole.outputs[0].generated_text
            yield whole
            return
        started = time.perf_counter()
        events = self.backend.invoke_stream(name, state, _payload(req))
        try:
            try:
                first = next(events, None)
            except InvocationError as exc:
                raise invocation_failed(exc) from exc
            self._touch(row.id)
            output = yield from _relay(first, events, name)
            self._touch(row.id)
            yield _response(row, req, [output], started)
        finally:
            events.close()

    def _touch(self, deployment_id: str) -> None:
        """Record a use: the TTL janitor measures idleness from ``last_used_at``."""
        with self.db.session() as session:
            repo.touch(session, deployment_id, datetime.now(UTC))


def _serving(session: Any, tenant_id: str, adapter_id: str | None) -> models.DeploymentRow:
    """The newest deployment in service serving ``adapter_id``."""
    if not adapter_id:
        raise BadRequest("give deployment_id or adapter_id")
    adapters_repo.require(session, tenant_id, adapter_id)
    found = repo.serving_adapter(session, tenant_id, adapter_id)
    if found is None:
        raise Conflict(
            f"no deployment in service serves adapter {adapter_id}; "
            "create one with POST /v0/deployments (fastuner deployments create)"
        )
    return found


def _relay(
    event: dict[str, Any] | None, events: Iterator[dict[str, Any]], name: str
) -> Generator[str, None, GenerationOutput]:
    """Yield the stream's text pieces from ``event`` on; return the output of its done event."""
    while event is not None:
        kind = event.get("type")
        if kind == "token":
            text = event.get("text")
            if not isinstance(text, str):
                raise BackendError(f"the endpoint streamed a malformed token event: {event!r:.200}")
            if text:
                yield text
        elif kind == "done":
            try:
                return GenerationOutput.model_validate(event.get("output"))
            except ValidationError as exc:
                raise BackendError(f"the endpoint streamed a malformed output: {exc}") from exc
        elif kind == "error":
            code, message = event.get("code", "generation_failed"), event.get("message", "")
            raise BackendError(
                f"the endpoint failed while generating ({code}): {message}",
                details={"endpoint_code": code},
            )
        event = next(events, None)  # an unknown event type is skipped (forward-compatible)
    raise BackendError(f"the stream of endpoint {name} ended before its done event")


def _endpoint(row: models.DeploymentRow) -> tuple[str, dict[str, Any]]:
    assert row.endpoint_name is not None
    return row.endpoint_name, dict(row.backend_state)


def _payload(req: InferenceRequest) -> dict[str, Any]:
    return {
        "inputs": req.inputs,
        "adapter": req.adapter_id,
        "parameters": req.parameters.model_dump(exclude_none=True),
    }


def _response(
    row: models.DeploymentRow, req: InferenceRequest, outputs: list[GenerationOutput], started: float
) -> InferenceResponse:
    latency = (time.perf_counter() - started) * 1000
    return InferenceResponse(
        deployment_id=row.id, adapter_id=req.adapter_id, outputs=outputs, latency_ms=round(latency, 2)
    )
