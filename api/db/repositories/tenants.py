"""Tenants, API keys, and the per-tenant admission lock the quota checks run under."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.db.models import ApiKeyRow, DeploymentRow, FineTuneJobRow, TenantRow
from api.db.repositories.jobs import ACTIVE as ACTIVE_JOBS
from api.db.repositories.rows import count
from api.domain.enums import DeploymentStatus

# What an endpoint quota counts: endpoints that exist or are coming up (a deleting one is leaving).
ACTIVE_ENDPOINTS = [DeploymentStatus.CREATING.value, DeploymentStatus.IN_SERVICE.value]


def get(session: Session, tenant_id: str) -> TenantRow | None:
    return session.get(TenantRow, tenant_id)


def ensure(session: Session, tenant_id: str) -> TenantRow:
    """The tenant's row, created if missing (a concurrent creator may win; then it is re-read)."""
    row = session.get(TenantRow, tenant_id)
    if row is not None:
        return row
    try:
        with session.begin_nested():
            row = TenantRow(id=tenant_id, admissions=0)
            session.add(row)
    except IntegrityError:
        row = session.get(TenantRow, tenant_id, populate_existing=True)
        assert row is not None
    return row


def lock(session: Session, tenant_id: str) -> TenantRow:
    """Serialise quota-checked admissions of one tenant until the transaction ends.

    An UPDATE takes the row lock on PostgreSQL and the write lock on SQLite, so two requests can't
    both count the same free slot.
    """
    ensure(session, tenant_id)
    session.execute(
        update(TenantRow)
        .where(TenantRow.id == tenant_id)
        .values(admissions=TenantRow.admissions + 1)
        .execution_options(synchronize_session=False)
    )
    row = session.get(TenantRow, tenant_id, populate_existing=True)
    assert row is not None
    return row


def active_jobs(session: Session, tenant_id: str) -> int:
    return count(
        session, FineTuneJobRow, FineTuneJobRow.tenant_id == tenant_id, FineTuneJobRow.status.in_(ACTIVE_JOBS)
    )


def active_endpoints(session: Session, tenant_id: str) -> int:
    return count(
        session,
        DeploymentRow,
        DeploymentRow.tenant_id == tenant_id,
        DeploymentRow.status.in_(ACTIVE_ENDPOINTS),
    )


def key_by_hash(session: Session, secret_sha256: str) -> ApiKeyRow | None:
    return session.scalar(select(ApiKeyRow).where(ApiKeyRow.secret_sha256 == secret_sha256))


def keys(session: Session, tenant_id: str | None = None) -> Sequence[ApiKeyRow]:
    query = select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.id)
    if tenant_id is not None:
        query = query.where(ApiKeyRow.tenant_id == tenant_id)
    return session.scalars(query).all()


def any_key(session: Session) -> bool:
    return session.scalar(select(ApiKeyRow.id).limit(1)) is not None
