"""The TTL janitor: tears down idle, expired and orphaned endpoints so nobody pays for forgotten GPUs.

A deployment is torn down when it has been idle longer than its TTL (the idle clock starts when it
is in service, and every inference resets it), when it outlives ``max_lifetime``, or when a previous
delete failed (retried every pass). Orphans — live backend endpoints tagged
``fastuner:managed=true`` with no live row — are deleted after a grace period. Untagged endpoints
are never looked at. Each teardown claims its row with compare-and-set, so janitors may run
concurrently (API loop, CLI, Lambda) and a use racing the janitor wins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from api.backends.endpoints import AdapterHosting, EndpointBackend
from api.db import models
from api.db.repositories import deployments as repo
from api.db.repositories import events
from api.db.session import Database
from api.domain.deployments import JanitorAction, JanitorReport
from api.domain.enums import DeploymentStatus
from api.logging import get_logger
from api.services.teardown import teardown
from api.settings import Settings

log = get_logger("janitor")


def now_utc() -> datetime:
    return datetime.now(UTC)


def expiry_reason(row: models.DeploymentRow, now: datetime) -> str | None:
    if row.status == DeploymentStatus.DELETING.value:
        return row.deleted_reason or "retrying a failed delete"
    if row.max_lifetime_seconds is not None:
        age = now - row.created_at
        if age > timedelta(seconds=row.max_lifetime_seconds):
            return f"max lifetime exceeded ({int(age.total_seconds())} s > {row.max_lifetime_seconds} s)"
    if row.status == DeploymentStatus.IN_SERVICE.value and not row.adapter_ids:
        return "no adapters left"  # the last one was removed: the base and endpoint go too
    if row.status == DeploymentStatus.IN_SERVICE.value and row.ttl_seconds is not None and row.in_service_at:
        idle = now - (row.last_used_at or row.in_service_at)
        if idle > timedelta(seconds=row.ttl_seconds):
            return f"idle {int(idle.total_seconds())} s > ttl {row.ttl_seconds} s"
    return None


class Janitor:
    def __init__(
        self,
        db: Database,
        backend: EndpointBackend,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        self.db = db
        self.backend = backend
        self.settings = settings
        self.clock = clock

    def run_once(self, *, dry_run: bool = False, tenant_id: str | None = None) -> JanitorReport:
        """One pass over every tenant's deployments, or only ``tenant_id``'s (an API caller's).

        The orphan sweep (managed endpoints with no live row) belongs to no tenant: only the
        deployment-wide pass (background loop, Lambda) runs it.
        """
        now = self.clock()
        actions: list[JanitorAction] = []
        with self.db.session() as session:
            rows = list(repo.live(session, tenant_id))
        for row in rows:
            reason = expiry_reason(row, now)
            if reason is None or row.endpoint_name is None:
                continue
            action = JanitorAction(
                deployment_id=row.id,
                endpoint_name=row.endpoint_name,
                reason=reason,
                hourly_price_usd=row.hourly_price_usd,
                done=False,
            )
            if not dry_run:
                self._teardown(row, action)
            actions.append(action)
        if tenant_id is None:
            actions.extend(self._orphans(now, dry_run))
            if isinstance(self.backend, AdapterHosting):
                actions.extend(self._stray_components(self.backend, now, dry_run))
        saved = sum(a.hourly_price_usd or 0.0 for a in actions if a.done or (dry_run and a.error is None))
        report = JanitorReport(dry_run=dry_run, actions=actions, hourly_savings_usd=round(saved, 4))
        if actions:
            log.info("janitor pass", extra={"actions": len(actions), "dry_run": dry_run})
        return report

    def _teardown(self, row: models.DeploymentRow, action: JanitorAction) -> None:
        try:
            torn = teardown(self.db, self.backend, row, action.reason, expected_version=row.version)
        except Exception as exc:
            action.error = str(exc)
            log.warning("teardown failed; retried next pass", extra={"deployment_id": row.id})
            return
        action.done = torn is not None

    def _orphans(self, now: datetime, dry_run: bool) -> list[JanitorAction]:
        grace = timedelta(seconds=self.settings.orphan_grace_seconds)
        with self.db.session() as session:
            live_names = {r.endpoint_name for r in repo.live(session)}
        actions = []
        for endpoint in self.backend.list_managed():
            if endpoint.tags.get("fastuner:managed") != "true" or endpoint.name in live_names:
                continue
            if endpoint.created_at is not None and now - endpoint.created_at < grace:
                continue  # maybe a deployment whose row is being written right now
            action = _stray(
                endpoint.tags, endpoint.name, "orphan: managed endpoint without a live deployment"
            )
            if not dry_run:
                try:
                    self.backend.delete_endpoint(endpoint.name, {})
                    action.done = True
                    self._orphan_event(endpoint.tags.get("fastuner:tenant"), action)
                except Exception as exc:
                    action.error = str(exc)
            actions.append(action)
        return actions

    def _orphan_event(self, tenant: str | None, action: JanitorAction) -> None:
        if tenant and action.deployment_id:
            with self.db.session() as session:
                message = f"orphan endpoint {action.endpoint_name} deleted"
                events.add(session, tenant, action.deployment_id, "orphan_deleted", message)

    def _stray_components(self, backend: AdapterHosting, now: datetime, dry_run: bool) -> list[JanitorAction]:
        """Adapter components (tagged ``fastuner:managed=true``) that no live deployment serves: an
        adapter removed while its delete failed, or a crash between the create and the row update.
        Components of endpoints with no live row go with the endpoint (the orphan sweep)."""
        grace = timedelta(seconds=self.settings.orphan_grace_seconds)
        with self.db.session() as session:
            serving = {r.endpoint_name: set(r.adapter_ids) for r in repo.live(session) if r.endpoint_name}
        actions = []
        for component in backend.list_managed_components():
            if component.tags.get("fastuner:managed") != "true" or component.adapter_id is None:
                continue
            if (
                component.endpoint_name not in serving
                or component.adapter_id in serving[component.endpoint_name]
            ):
                continue
            if component.created_at is not None and now - component.created_at < grace:
                continue  # maybe an adapter being added right now
            action = _stray(
                component.tags,
                component.endpoint_name,
                f"stray adapter component {component.name} ({component.adapter_id} no longer served)",
            )
            if not dry_run:
                try:
                    backend.delete_component(component.name)
                    action.done = True
                except Exception as exc:
                    action.error = str(exc)
            actions.append(action)
        return actions


def _stray(tags: Mapping[str, str], endpoint_name: str, reason: str) -> JanitorAction:
    """The action on a managed resource no live deployment holds (nothing is billed to a row)."""
    deployment_id = tags.get("fastuner:deployment")
    return JanitorAction(
        deployment_id=deployment_id,
        endpoint_name=endpoint_name,
        reason=reason,
        hourly_price_usd=None,
        done=False,
    )
