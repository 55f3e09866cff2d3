"""Deployments: create (serve adapters), list, get, delete, change adapters, sync status.

Inference is relayed by :class:`~api.services.inference.InferenceRelay`; a teardown is
:func:`~api.services.teardown.teardown`.
"""

from __future__ import annotations

from collections.abc import Generator
from datetime import UTC, datetime
from typing import Any

from api.backends.endpoints import AdapterHosting, EndpointBackend, EndpointSpec
from api.backends.registry import capabilities
from api.db import models
from api.db.repositories import adapters as adapters_repo
from api.db.repositories import deployments as repo
from api.db.repositories import events
from api.db.repositories.cas import compare_and_set
from api.db.session import Database
from api.domain.deployments import Deployment, DeploymentRequest, InferenceRequest, InferenceResponse
from api.domain.enums import DeploymentStatus
from api.domain.errors import BackendError, BadRequest, Conflict, NotFound
from api.domain.ids import new_id
from api.logging import get_logger
from api.services.inference import InferenceRelay
from api.services.teardown import teardown, teardown_at
from api.services.tenants import TenantService
from api.services.transitions import reason_of, transition
from api.settings import Settings

log = get_logger("deployments")

MAX_ADAPTERS = 64  # as DeploymentRequest.adapter_ids


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
        self.relay = InferenceRelay(db, backend)

    # -- create -------------------------------------------------------------------------------
    def create(self, tenant_id: str, req: DeploymentRequest) -> Deployment:
        """Record the deployment ``creating`` (quota-checked), then ask the backend for its endpoint."""
        base_model = self._base_model(tenant_id, req.adapter_ids)
        row = self._record(tenant_id, req, base_model, self._instance(req))
        spec = spec_for(row)
        try:
            state = self.backend.create_endpoint(spec)
        except Exception as exc:
            raise self._create_failed(spec, exc) from exc
        with self.db.session() as session:
            compare_and_set(session, repo.require(session, tenant_id, row.id), backend_state=state)
        log.info("deployment created", extra={"deployment_id": row.id, "backend": self.backend.name})
        return self.get(tenant_id, row.id)

    def _base_model(self, tenant_id: str, adapter_ids: list[str]) -> str:
        """The one base model the adapters share."""
        with self.db.session() as session:
            bases = {adapters_repo.require(session, tenant_id, a).base_model for a in adapter_ids}
        if len(bases) != 1:
            raise BadRequest(
                f"one deployment serves adapters of one base model; got {', '.join(sorted(bases))}"
            )
        return bases.pop()

    def _record(
        self, tenant_id: str, req: DeploymentRequest, base_model: str, instance_name: str
    ) -> models.DeploymentRow:
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
            events.add(
                session,
                tenant_id,
                deployment_id,
                "created",
                "deployment creating",
                adapters=req.adapter_ids,
                instance_type=instance_name,
            )
        return row

    def _instance(self, req: DeploymentRequest) -> str:
        """The request's instance type or the backend's default, from the backend's catalogue."""
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

    def _create_failed(self, spec: EndpointSpec, exc: Exception) -> BackendError:
        """Mark the deployment failed and remove what part of its endpoint was created."""
        reason = reason_of(exc)
        with self.db.session() as session:
            row = repo.require(session, spec.tenant_id, spec.deployment_id)
            failure = f"create failed: {reason}"
            transition(
                session, row, DeploymentStatus.FAILED, data={"reason": failure}, failure_reason=failure
            )
        try:  # the orphan sweep is the backstop
            self.backend.delete_endpoint(spec.endpoint_name, {})
        except Exception:
            log.exception("cleanup after a failed create failed", extra={"deployment_id": spec.deployment_id})
        return BackendError(f"could not create deployment {spec.deployment_id}: {reason}")

    # -- read ---------------------------------------------------------------------------------
    def get(self, tenant_id: str, deployment_id: str) -> Deployment:
        with self.db.session() as session:
            return to_model(repo.require(session, tenant_id, deployment_id))

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
            row = repo.require(session, tenant_id, deployment_id)
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
            row = repo.require(session, tenant_id, deployment_id)
            adapter = adapters_repo.require(session, tenant_id, adapter_id)
            if adapter.base_model != row.base_model:
                raise BadRequest(
                    f"adapter {adapter_id} is for {adapter.base_model}; deployment {row.id} serves {row.base_model}"
                )
            _check_live(row)
            if adapter_id in row.adapter_ids:
                return to_model(row)
            if len(row.adapter_ids) >= MAX_ADAPTERS:
                raise BadRequest(f"a deployment serves at most {MAX_ADAPTERS} adapters")
            version, state = row.version, dict(row.backend_state)
            spec = spec_for(row)
        if isinstance(self.backend, AdapterHosting) and state:
            state = self.backend.add_adapter(spec, state, adapter_id)
        adapters = [*spec.adapter_ids, adapter_id]
        return self._set_adapters(tenant_id, deployment_id, version, adapters, state, adapter_id, "added")

    def remove_adapter(self, tenant_id: str, deployment_id: str, adapter_id: str) -> Deployment:
        """Stop serving one adapter; the base keeps running. With none left the janitor tears it down."""
        with self.db.session() as session:
            row = repo.require(session, tenant_id, deployment_id)
            _check_live(row)
            if adapter_id not in row.adapter_ids:
                raise NotFound(f"deployment {row.id} does not serve adapter {adapter_id}")
            version, state, name = row.version, dict(row.backend_state), row.endpoint_name
            adapters = [a for a in row.adapter_ids if a != adapter_id]
        if isinstance(self.backend, AdapterHosting) and state and name is not None:
            state = self.backend.remove_adapter(name, state, adapter_id)
        return self._set_adapters(tenant_id, deployment_id, version, adapters, state, adapter_id, "removed")

    def _set_adapters(
        self,
        tenant_id: str,
        deployment_id: str,
        version: int,
        adapters: list[str],
        state: dict[str, Any],
        adapter_id: str,
        verb: str,
    ) -> Deployment:
        """Write the new adapter list if the row is still at ``version``; event ``adapter_{verb}``."""
        with self.db.session() as session:
            row = repo.require(session, tenant_id, deployment_id)
            if row.version != version or not compare_and_set(
                session, row, adapter_ids=adapters, backend_state=state
            ):
                # The backend change is done and idempotent; the janitor's stray sweep removes a
                # component no live row lists. The caller may simply retry.
                raise Conflict(f"deployment {deployment_id} changed meanwhile; retry")
            message = f"adapter {adapter_id} {verb}"
            events.add(session, tenant_id, deployment_id, f"adapter_{verb}", message, adapter=adapter_id)
            return to_model(row)

    # -- status -------------------------------------------------------------------------------
    def sync_once(self) -> int:
        """Move ``creating`` deployments to in_service/failed; the idle clock starts at in_service."""
        with self.db.session() as session:
            creating = [r for r in repo.live(session) if r.status == DeploymentStatus.CREATING.value]
        return sum(self._sync(row) for row in creating)

    def _sync(self, row: models.DeploymentRow) -> bool:
        """Record what the backend says of one ``creating`` deployment; whether its status moved."""
        if not row.backend_state or row.endpoint_name is None:
            return False
        try:
            observed = self.backend.describe_endpoint(row.endpoint_name, dict(row.backend_state))
        except Exception:
            log.exception("describe failed", extra={"deployment_id": row.id})
            return False
        if observed.status == DeploymentStatus.CREATING:
            return False
        values: dict[str, Any] = {}
        if observed.status == DeploymentStatus.IN_SERVICE:
            values["in_service_at"] = datetime.now(UTC)
        elif observed.status == DeploymentStatus.FAILED:
            values["failure_reason"] = observed.failure_reason
        with self.db.session() as session:
            current = repo.require(session, row.tenant_id, row.id)
            if current.status != DeploymentStatus.CREATING.value:
                return False
            data = {"reason": observed.failure_reason}
            return transition(session, current, observed.status, data=data, **values) is not None

    # -- inference (relayed) ------------------------------------------------------------------
    def resolve_target(
        self, tenant_id: str, deployment_id: str | None, adapter_id: str | None
    ) -> models.DeploymentRow:
        return self.relay.resolve_target(tenant_id, deployment_id, adapter_id)

    def infer(self, tenant_id: str, req: InferenceRequest) -> InferenceResponse:
        return self.relay.infer(tenant_id, req)

    def infer_stream(self, tenant_id: str, req: InferenceRequest) -> Generator[str | InferenceResponse]:
        return self.relay.infer_stream(tenant_id, req)


def _check_live(row: models.DeploymentRow) -> None:
    if row.status not in (DeploymentStatus.CREATING.value, DeploymentStatus.IN_SERVICE.value):
        raise Conflict(f"deployment {row.id} is {row.status}")


def spec_for(row: models.DeploymentRow) -> EndpointSpec:
    """The endpoint spec of a deployment, rebuilt from its row (the same on every call)."""
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


def to_model(row: models.DeploymentRow) -> Deployment:
    deployment = Deployment.model_validate(row, from_attributes=True)
    return deployment.model_copy(update={"teardown_at": teardown_at(row)})
