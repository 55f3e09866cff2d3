"""Tearing a deployment down: claim its row, delete the backend endpoint, mark it deleted.

Every teardown claims by compare-and-set (``→ deleting``), a retry of a row left ``deleting`` too,
so two janitors (or a janitor and a user) never both delete the same endpoint.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from api.backends.endpoints import EndpointBackend
from api.db import models
from api.db.models import utcnow
from api.db.repositories import deployments as repo
from api.db.repositories import events
from api.db.session import Database
from api.domain.enums import DeploymentStatus
from api.domain.errors import BackendError
from api.logging import get_logger
from api.services.transitions import transition

log = get_logger("deployments")

# How long a teardown's claim on a ``deleting`` row keeps others off it (deleting a SageMaker
# endpoint is three API calls; a claim this old belongs to a teardown that died).
DELETE_LEASE = timedelta(minutes=5)


def teardown(
    db: Database,
    backend: EndpointBackend,
    row: models.DeploymentRow,
    reason: str,
    *,
    expected_version: int | None = None,
) -> models.DeploymentRow | None:
    """Claim the row (CAS → deleting), delete the backend resources, mark it deleted.

    Returns the deleted row, or None when another caller holds the claim or, with
    ``expected_version`` (the janitor's), when the row changed since it was judged (another
    janitor's teardown, or a fresh use). A failed delete leaves the row ``deleting`` with its claim
    released, so the janitor's next pass retries it; a teardown that died mid-way is retried once
    its claim is ``DELETE_LEASE`` old.
    """
    claim = _claim(db, row, reason, expected_version)
    if claim is None:
        return None
    name, state, version = claim
    try:
        if name is not None:  # even with no state: a half-finished create may have left parts behind
            backend.delete_endpoint(name, state)
    except Exception as exc:
        with db.session() as session:
            repo.release_claim(session, row.id, version)
            events.add(session, row.tenant_id, row.id, "delete_failed", f"delete failed, will retry: {exc}")
        raise BackendError(f"deleting {row.id} failed (will be retried): {exc}") from exc
    with db.session() as session:
        current = repo.require(session, row.tenant_id, row.id)
        if current.version == version:
            transition(
                session,
                current,
                DeploymentStatus.DELETED,
                data={"reason": reason},
                deleted_at=datetime.now(UTC),
                deleted_reason=reason,
            )
        log.info("deployment deleted", extra={"deployment_id": row.id, "reason": reason})
        return current


def _claim(
    db: Database, row: models.DeploymentRow, reason: str, expected_version: int | None
) -> tuple[str | None, dict[str, Any], int] | None:
    """Move the row to ``deleting`` for this caller: its endpoint name, state and claimed version."""
    with db.session() as session:
        current = repo.get(session, row.tenant_id, row.id)
        if current is None or current.status == DeploymentStatus.DELETED.value:
            return None
        if expected_version is not None and current.version != expected_version:
            return None
        retry = current.status == DeploymentStatus.DELETING.value
        if retry and current.updated_at > utcnow() - DELETE_LEASE:
            return None  # another teardown holds the claim; a failed one releases it at once
        claimed = transition(
            session,
            current,
            DeploymentStatus.DELETING,
            data={"reason": reason},
            record=not retry,
            deleted_reason=reason,
        )
        if claimed is None:
            return None
        return current.endpoint_name, dict(current.backend_state), current.version


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
