"""Deployments: create (serve adapters), list, get, delete, sync status, and run inference."""

from __future__ import annotations

import time
from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from api.backends.endpoints import (
    EndpointBackend,
    EndpointSpec,
    InvocationError,
    StreamingEndpointBackend,
)
from api.backends.registry import capabilities
from api.db import models
from api.db.models import utcnow
from api.db.repositories import deployments as repo
from api.db.repositories import jobs as jobs_repo
from api.db.session import Database
from api.domain.deployments import (
    Deployment,
    DeploymentRequest,
    GenerationOutput,
    InferenceRequest,
    InferenceResponse,
)
from api.domain.enums import DeploymentStatus
from api.domain.errors import BackendError, BadRequest, Conflict, FastunerError, NotFound
from api.domain.ids import new_id
from api.logging import get_logger
from api.services.tenants import TenantService
from api.settings import Settings

log = get_logger("deployments")

# How long a teardown's claim on a ``deleting`` row keeps others off it (deleting a SageMaker
# endpoint is three API calls; a claim this old belongs to a teardown that died).
DELETE_LEASE = timedelta(minutes=5)


def endpoint_name_for(deployment_id: str) -> str:
    return "fastuner-" + deployment_id.replace("_", "-")


class DeploymentService:
    def __init__(
        self, db: Database, backend: EndpointBackend, settings: Settings, tenants: TenantService
    ) -> None:
        self.tenants = tenants
        self.db = db
        self.backend = backend
        self.settings = settings

    # -- create -------------------------------------------------------------------------------
    def create(self, tenant_id: str, req: DeploymentRequest) -> Deployment:
        with self.db.session() as session:
            adapters = []
            for adapter_id in req.adapter_ids:
                adapter = jobs_repo.adapter(session, tenant_id, adapter_id)
                if adapter is None:
                    raise NotFound(f"adapter {adapter_id} not found")
                adapters.append(adapter)
        bases = {a.base_model for a in adapters}
        if len(bases) != 1:
            raise BadRequest(
                f"one deployment serves adapters of one base model; got {', '.join(sorted(bases))}"
            )
        base_model = bases.pop()
        instance_name = self._instance(req)
        price = capabilities(self.settings).instance(instance_name)
        deployment_id = new_id("dep")
        row = models.DeploymentRow(
            id=deployment_id,
            tenant_id=tenant_id,
            adapter_ids=list(req.adapter_ids),
            base_model=base_model,
            backend=self.backend.name,
            endpoint_name=endpoint_name_for(deployment_id),
            instance_type=instance_name,
            instance_count=req.instance_count,
            hourly_price_usd=price.hourly_usd * req.instance_count if price else None,
            status=DeploymentStatus.CREATING.value,
            ttl_seconds=req.ttl_seconds,
            max_lifetime_seconds=req.max_lifetime_seconds,
            backend_state={},
        )
        with self.db.session() as session:
            self.tenants.admit_endpoint(session, tenant_id, instance_name)
            session.add(row)
            jobs_repo.add_event(session, tenant_id, deployment_id, "created", "deployment creating",
                                adapters=req.adapter_ids, instance_type=instance_name)  # fmt: skip
        assert row.endpoint_name is not None
        spec = EndpointSpec(
            deployment_id=deployment_id,
            tenant_id=tenant_id,
            endpoint_name=row.endpoint_name,
            base_model=base_model,
            adapter_prefix=f"{tenant_id}/adapters",
            adapter_ids=list(req.adapter_ids),
            instance_type=instance_name,
            instance_count=req.instance_count,
            tags={
                "fastuner:managed": "true",
                "fastuner:tenant": tenant_id,
                "fastuner:deployment": deployment_id,
            },
        )
        try:
            state = self.backend.create_endpoint(spec)
        except Exception as exc:
            reason = exc.message if isinstance(exc, FastunerError) else f"{type(exc).__name__}: {exc}"
            self._fail(tenant_id, deployment_id, f"create failed: {reason}")
            try:  # remove whatever part of the endpoint was created; the orphan sweep is the backstop
                self.backend.delete_endpoint(spec.endpoint_name, {})
            except Exception:
                log.exception("cleanup after a failed create failed", extra={"deployment_id": deployment_id})
            raise BackendError(f"could not create deployment {deployment_id}: {reason}") from exc
        with self.db.session() as session:
            current = self._row(session, tenant_id, deployment_id)
            repo.compare_and_set(session, current, backend_state=state)
        log.info("deployment created", extra={"deployment_id": deployment_id, "backend": self.backend.name})
        return self.get(tenant_id, deployment_id)

    def _instance(self, req: DeploymentRequest) -> str:
        caps = capabilities(self.settings)
        name = req.instance_type or caps.default_inference_instance
        several = req.instance_count > 1 and not caps.multi_node
        if caps.on_host_only and (name not in caps.instances or several):
            must = " or ".join(repr(n) for n in caps.instances)
            raise BadRequest(
                f"the {self.settings.backend} backend serves one process on this machine: instance_type {must}"
            )
        if name not in caps.instances:
            raise BadRequest(f"unknown instance type {name!r}")
        if several:
            raise BadRequest(f"the {self.settings.backend} backend {caps.summary}: no instance_count > 1")
        return name

    def _fail(self, tenant_id: str, deployment_id: str, reason: str) -> None:
        with self.db.session() as session:
            row = self._row(session, tenant_id, deployment_id)
            repo.compare_and_set(session, row, status=DeploymentStatus.FAILED.value, failure_reason=reason)
            jobs_repo.add_event(
                session, tenant_id, deployment_id, "status", "creating → failed", reason=reason
            )

    # -- read ---------------------------------------------------------------------------------
    def get(self, tenant_id: str, deployment_id: str) -> Deployment:
        with self.db.session() as session:
            return to_model(self._row(session, tenant_id, deployment_id))

    def list_page(
        self, tenant_id: str, *, limit: int = 50, cursor: str | None = None, live_only: bool = False
    ) -> tuple[list[Deployment], str | None]:
        with self.db.session() as session:
            rows, next_cursor = repo.list_page(
                session, tenant_id, limit=limit, cursor=cursor, live_only=live_only
            )
            return [to_model(r) for r in rows], next_cursor

    # -- delete -------------------------------------------------------------------------------
    def delete(self, tenant_id: str, deployment_id: str, *, reason: str = "deleted by user") -> Deployment:
        with self.db.session() as session:
            row = self._row(session, tenant_id, deployment_id)
            if row.status == DeploymentStatus.DELETED.value:
                return to_model(row)
        teardown(self.db, self.backend, row, reason)
        return self.get(tenant_id, deployment_id)

    # -- adapters of a running deployment -----------------------------------------------------
    def add_adapter(self, tenant_id: str, deployment_id: str, adapter_id: str) -> Deployment:
        """Serve one more adapter (same base model) without redeploying the base; idempotent.

        On a backend hosting adapters as their own resources (SageMaker inference components) its
        component is created next to the base; elsewhere the server loads it on demand.
        """
        with self.db.session() as session:
            row = self._row(session, tenant_id, deployment_id)
            adapter = jobs_repo.adapter(session, tenant_id, adapter_id)
            if adapter is None:
                raise NotFound(f"adapter {adapter_id} not found")
            if adapter.base_model != row.base_model:
                raise BadRequest(
                    f"adapter {adapter_id} is for {adapter.base_model}; deployment {row.id} serves {row.base_model}"
                )
            self._check_live(row)
            if adapter_id in row.adapter_ids:
                return to_model(row)
            if len(row.adapter_ids) >= MAX_ADAPTERS:
                raise BadRequest(f"a deployment serves at most {MAX_ADAPTERS} adapters")
            version, state = row.version, dict(row.backend_state)
            spec = spec_for(row)
        from api.backends.endpoints import AdapterHosting

        if isinstance(self.backend, AdapterHosting) and state:
            state = self.backend.add_adapter(spec, state, adapter_id)
        return self._set_adapters(tenant_id, deployment_id, version, [*spec.adapter_ids, adapter_id], state,
                                  "adapter_added", f"adapter {adapter_id} added", adapter_id)  # fmt: skip

    def remove_adapter(self, tenant_id: str, deployment_id: str, adapter_id: str) -> Deployment:
        """Stop serving one adapter; the base keeps running. With none left the janitor tears it down."""
        with self.db.session() as session:
            row = self._row(session, tenant_id, deployment_id)
            self._check_live(row)
            if adapter_id not in row.adapter_ids:
                raise NotFound(f"deployment {row.id} does not serve adapter {adapter_id}")
            version, state, name = row.version, dict(row.backend_state), row.endpoint_name
            adapters = [a for a in row.adapter_ids if a != adapter_id]
        from api.backends.endpoints import AdapterHosting

        if isinstance(self.backend, AdapterHosting) and state and name is not None:
            state = self.backend.remove_adapter(name, state, adapter_id)
        return self._set_adapters(tenant_id, deployment_id, version, adapters, state,
                                  "adapter_removed", f"adapter {adapter_id} removed", adapter_id)  # fmt: skip

    @staticmethod
    def _check_live(row: models.DeploymentRow) -> None:
        if row.status not in (DeploymentStatus.CREATING.value, DeploymentStatus.IN_SERVICE.value):
            raise Conflict(f"deployment {row.id} is {row.status}")

    def _set_adapters(
        self, tenant_id: str, deployment_id: str, version: int, adapters: list[str],
        state: dict[str, Any], kind: str, message: str, adapter_id: str,
    ) -> Deployment:  # fmt: skip
        with self.db.session() as session:
            row = self._row(session, tenant_id, deployment_id)
            if row.version != version or not repo.compare_and_set(
                session, row, adapter_ids=adapters, backend_state=state
            ):
                # The backend change is done and idempotent; the janitor's stray sweep removes a
                # component no live row lists. The caller may simply retry.
                raise Conflict(f"deployment {deployment_id} changed meanwhile; retry")
            jobs_repo.add_event(session, tenant_id, deployment_id, kind, message, adapter=adapter_id)
            return to_model(row)

    # -- status -------------------------------------------------------------------------------
    def sync_once(self) -> int:
        """Move ``creating`` deployments to in_service/failed; the idle clock starts at in_service."""
        changed = 0
        with self.db.session() as session:
            creating = [r for r in repo.live(session) if r.status == DeploymentStatus.CREATING.value]
        for row in creating:
            if not row.backend_state or row.endpoint_name is None:
                continue
            try:
                observed = self.backend.describe_endpoint(row.endpoint_name, dict(row.backend_state))
            except Exception:
                log.exception("describe failed", extra={"deployment_id": row.id})
                continue
            if observed.status == DeploymentStatus.CREATING:
                continue
            with self.db.session() as session:
                current = self._row(session, row.tenant_id, row.id)
                now = datetime.now(UTC)
                values: dict[str, Any] = {"status": observed.status.value}
                if observed.status == DeploymentStatus.IN_SERVICE:
                    values["in_service_at"] = now
                elif observed.status == DeploymentStatus.FAILED:
                    values["failure_reason"] = observed.failure_reason
                if current.status == DeploymentStatus.CREATING.value and repo.compare_and_set(
                    session, current, **values
                ):
                    jobs_repo.add_event(session, row.tenant_id, row.id, "status", f"creating → {observed.status.value}",
                                        reason=observed.failure_reason)  # fmt: skip
                    changed += 1
        return changed

    # -- inference ----------------------------------------------------------------------------
    def resolve_target(
        self, tenant_id: str, deployment_id: str | None, adapter_id: str | None
    ) -> models.DeploymentRow:
        """The in-service deployment a request goes to: the one named, or one serving the adapter."""
        with self.db.session() as session:
            if deployment_id:
                row = self._row(session, tenant_id, deployment_id)
                if adapter_id and adapter_id not in row.adapter_ids:
                    raise BadRequest(f"deployment {row.id} does not serve adapter {adapter_id}")
            else:
                if not adapter_id:
                    raise BadRequest("give deployment_id or adapter_id")
                if jobs_repo.adapter(session, tenant_id, adapter_id) is None:
                    raise NotFound(f"adapter {adapter_id} not found")
                found = repo.serving_adapter(session, tenant_id, adapter_id)
                if found is None:
                    raise Conflict(
                        f"no deployment in service serves adapter {adapter_id}; "
                        "create one with POST /v0/deployments (fastuner deployments create)"
                    )
                row = found
            if row.status != DeploymentStatus.IN_SERVICE.value:
                raise Conflict(f"deployment {row.id} is {row.status}, not in service")
            return row

    def infer(self, tenant_id: str, req: InferenceRequest) -> InferenceResponse:
        row = self.resolve_target(tenant_id, req.deployment_id, req.adapter_id)
        name, state = row.endpoint_name, dict(row.backend_state)
        assert name is not None
        started = time.perf_counter()
        try:
            result = self.backend.invoke(name, state, _payload(req))
        except InvocationError as exc:
            raise invocation_failed(exc) from exc
        latency = (time.perf_counter() - started) * 1000
        self._touch(row.id)
        try:
            outputs = [GenerationOutput.model_validate(o) for o in result.get("outputs", [])]
        except (ValidationError, TypeError, AttributeError) as exc:  # it broke the container contract
            raise BackendError(f"the endpoint answered malformed outputs: {exc}") from exc
        return InferenceResponse(
            deployment_id=row.id, adapter_id=req.adapter_id, outputs=outputs, latency_ms=round(latency, 2)
        )

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
        name, state = row.endpoint_name, dict(row.backend_state)
        assert name is not None
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
                event = next(events, None)
            except InvocationError as exc:
                raise invocation_failed(exc) from exc
            self._touch(row.id)
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
                        output = GenerationOutput.model_validate(event.get("output"))
                    except ValidationError as exc:
                        raise BackendError(f"the endpoint streamed a malformed output: {exc}") from exc
                    self._touch(row.id)
                    latency = (time.perf_counter() - started) * 1000
                    yield InferenceResponse(
                        deployment_id=row.id, adapter_id=req.adapter_id, outputs=[output],
                        latency_ms=round(latency, 2),
                    )  # fmt: skip
                    return
                elif kind == "error":
                    code, message = event.get("code", "generation_failed"), event.get("message", "")
                    raise BackendError(
                        f"the endpoint failed while generating ({code}): {message}",
                        details={"endpoint_code": code},
                    )
                event = next(events, None)  # an unknown event type is skipped (forward-compatible)
            raise BackendError(f"the stream of endpoint {name} ended before its done event")
        finally:
            events.close()

    def _touch(self, deployment_id: str) -> None:
        """Record a use: the TTL janitor measures idleness from ``last_used_at``."""
        with self.db.session() as session:
            repo.touch(session, deployment_id, datetime.now(UTC))

    def _row(self, session: Any, tenant_id: str, deployment_id: str) -> models.DeploymentRow:
        row = repo.get(session, tenant_id, deployment_id)
        if row is None:
            raise NotFound(f"deployment {deployment_id} not found")
        return row


MAX_ADAPTERS = 64  # as DeploymentRequest.adapter_ids


def spec_for(row: models.DeploymentRow) -> EndpointSpec:
    """The endpoint spec of an existing deployment (as ``create`` built it)."""
    assert row.endpoint_name is not None
    return EndpointSpec(
        deployment_id=row.id,
        tenant_id=row.tenant_id,
        endpoint_name=row.endpoint_name,
        base_model=row.base_model,
        adapter_prefix=f"{row.tenant_id}/adapters",
        adapter_ids=list(row.adapter_ids),
        instance_type=row.instance_type,
        instance_count=row.instance_count,
        tags={
            "fastuner:managed": "true",
            "fastuner:tenant": row.tenant_id,
            "fastuner:deployment": row.id,
        },
    )


def teardown(
    db: Database,
    backend: EndpointBackend,
    row: models.DeploymentRow,
    reason: str,
    *,
    expected_version: int | None = None,
) -> Deployment | None:
    """Claim the row (CAS → deleting), delete the backend resources, mark it deleted.

    Returns None when another caller holds the claim or, with ``expected_version`` (the janitor's),
    when the row changed since it was judged (another janitor's teardown, or a fresh use). A failed
    delete leaves the row ``deleting`` with its claim released, so the janitor's next pass retries
    it; a teardown that died mid-way is retried once its claim is ``DELETE_LEASE`` old.
    """
    with db.session() as session:
        current = repo.get(session, row.tenant_id, row.id)
        if current is None or current.status == DeploymentStatus.DELETED.value:
            return None
        if expected_version is not None and current.version != expected_version:
            return None
        before = current.status
        if before == DeploymentStatus.DELETING.value and current.updated_at > utcnow() - DELETE_LEASE:
            return None  # another teardown holds the claim; a failed one releases it at once
        # Every teardown claims by compare-and-set, a retry of a row left ``deleting`` too, so two
        # janitors (or a janitor and a user) never both delete the same endpoint.
        if not repo.compare_and_set(
            session, current, status=DeploymentStatus.DELETING.value, deleted_reason=reason
        ):
            return None
        if before != DeploymentStatus.DELETING.value:
            jobs_repo.add_event(
                session, row.tenant_id, row.id, "status", f"{before} → deleting", reason=reason
            )
        name, state = current.endpoint_name, dict(current.backend_state)
        version = current.version
    try:
        if name is not None:  # even with no state: a half-finished create may have left parts behind
            backend.delete_endpoint(name, state)
    except Exception as exc:
        with db.session() as session:
            repo.release_claim(session, row.id, version)
            jobs_repo.add_event(
                session, row.tenant_id, row.id, "delete_failed", f"delete failed, will retry: {exc}"
            )
        raise BackendError(f"deleting {row.id} failed (will be retried): {exc}") from exc
    with db.session() as session:
        current = repo.get(session, row.tenant_id, row.id)
        assert current is not None
        if current.version == version and repo.compare_and_set(
            session,
            current,
            status=DeploymentStatus.DELETED.value,
            deleted_at=datetime.now(UTC),
            deleted_reason=reason,
        ):
            jobs_repo.add_event(session, row.tenant_id, row.id, "status", "deleting → deleted", reason=reason)
        log.info("deployment deleted", extra={"deployment_id": row.id, "reason": reason})
        return to_model(current)


def teardown_at(row: models.DeploymentRow) -> datetime | None:
    """When the janitor will tear this deployment down if nobody uses it again."""
    if row.status not in (DeploymentStatus.CREATING.value, DeploymentStatus.IN_SERVICE.value):
        return None
    candidates = []
    if row.ttl_seconds is not None and row.in_service_at is not None:
        candidates.append((row.last_used_at or row.in_service_at) + timedelta(seconds=row.ttl_seconds))
    if row.max_lifetime_seconds is not None:
        candidates.append(row.created_at + timedelta(seconds=row.max_lifetime_seconds))
    return min(candidates) if candidates else None


def to_model(row: models.DeploymentRow) -> Deployment:
    return Deployment(
        id=row.id,
        adapter_ids=list(row.adapter_ids),
        base_model=row.base_model,
        backend=row.backend,
        endpoint_name=row.endpoint_name,
        instance_type=row.instance_type,
        instance_count=row.instance_count,
        hourly_price_usd=row.hourly_price_usd,
        status=DeploymentStatus(row.status),
        failure_reason=row.failure_reason,
        ttl_seconds=row.ttl_seconds,
        max_lifetime_seconds=row.max_lifetime_seconds,
        created_at=row.created_at,
        in_service_at=row.in_service_at,
        last_used_at=row.last_used_at,
        deleted_at=row.deleted_at,
        deleted_reason=row.deleted_reason,
        teardown_at=teardown_at(row),
    )


class EndpointBusy(FastunerError):
    """The endpoint's request queue is full (it answered 429/503): retry shortly."""

    code = "endpoint_busy"
    status = 503


def _payload(req: InferenceRequest) -> dict[str, Any]:
    return {
        "inputs": req.inputs,
        "adapter": req.adapter_id,
        "parameters": req.parameters.model_dump(exclude_none=True),
    }


def invocation_failed(exc: InvocationError) -> FastunerError:
    """The error to answer for an endpoint's refusal (its own status and message)."""
    if exc.status == 404:
        return NotFound(exc.message)
    if exc.status in (429, 503):
        return EndpointBusy(f"the endpoint is busy, retry shortly: {exc.message}")
    if 400 <= exc.status < 500:
        return BadRequest(exc.message)
    return BackendError(f"the endpoint failed: {exc.message}")
