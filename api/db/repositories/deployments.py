"""Deployment rows: by id, live ones, the one serving an adapter; the last-used touch and claim release."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.db.models import DeploymentRow, utcnow
from api.db.repositories.paging import page
from api.db.repositories.rows import owned, required
from api.domain.enums import DeploymentStatus

LIVE = [DeploymentStatus.CREATING.value, DeploymentStatus.IN_SERVICE.value, DeploymentStatus.DELETING.value]


def get(session: Session, tenant_id: str, deployment_id: str) -> DeploymentRow | None:
    return owned(session, DeploymentRow, tenant_id, deployment_id)


def require(session: Session, tenant_id: str, deployment_id: str) -> DeploymentRow:
    """The tenant's deployment, or :class:`NotFound`."""
    return required(session, DeploymentRow, tenant_id, deployment_id, "deployment")


def list_page(
    session: Session, tenant_id: str, *, limit: int, cursor: str | None, live_only: bool = False
) -> tuple[list[DeploymentRow], str | None]:
    query = select(DeploymentRow).where(DeploymentRow.tenant_id == tenant_id)
    if live_only:
        query = query.where(DeploymentRow.status.in_(LIVE))
    return page(session, DeploymentRow, query, limit=limit, cursor=cursor)


def live(session: Session, tenant_id: str | None = None) -> Sequence[DeploymentRow]:
    """Every deployment that may hold resources, across tenants unless ``tenant_id`` is given."""
    query = select(DeploymentRow).where(DeploymentRow.status.in_(LIVE))
    if tenant_id is not None:
        query = query.where(DeploymentRow.tenant_id == tenant_id)
    return session.scalars(query.order_by(DeploymentRow.created_at)).all()


def serving_adapter(session: Session, tenant_id: str, adapter_id: str) -> DeploymentRow | None:
    rows = session.scalars(
        select(DeploymentRow)
        .where(
            DeploymentRow.tenant_id == tenant_id, DeploymentRow.status == DeploymentStatus.IN_SERVICE.value
        )
        .order_by(DeploymentRow.created_at.desc())
    )
    return next((r for r in rows if adapter_id in r.adapter_ids), None)


def touch(session: Session, deployment_id: str, at: datetime) -> None:
    """Record a use. Bumping ``version`` makes a janitor that read the row before this lose its CAS."""
    session.execute(
        update(DeploymentRow)
        .where(DeploymentRow.id == deployment_id, DeploymentRow.status == DeploymentStatus.IN_SERVICE.value)
        .values(last_used_at=at, version=DeploymentRow.version + 1, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


CLAIM_RELEASED = datetime(1970, 1, 1, tzinfo=UTC)


def release_claim(session: Session, deployment_id: str, version: int) -> None:
    """Let the next teardown retry a row left ``deleting`` now, not after the claim's lease.

    Only the claim holder (the row still at the ``version`` its claim wrote) releases it.
    """
    session.execute(
        update(DeploymentRow)
        .where(DeploymentRow.id == deployment_id, DeploymentRow.version == version)
        .values(updated_at=CLAIM_RELEASED)
        .execution_options(synchronize_session=False)
    )
