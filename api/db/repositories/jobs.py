"""Fine-tune job rows and their metrics."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.db.models import FineTuneJobRow, MetricRow
from api.db.repositories.paging import page
from api.db.repositories.rows import owned, required, tail
from api.domain.enums import JobStatus

ACTIVE = [s.value for s in JobStatus if not s.terminal]


def get(session: Session, tenant_id: str, job_id: str) -> FineTuneJobRow | None:
    return owned(session, FineTuneJobRow, tenant_id, job_id)


def require(session: Session, tenant_id: str, job_id: str) -> FineTuneJobRow:
    """The tenant's job, or :class:`NotFound`."""
    return required(session, FineTuneJobRow, tenant_id, job_id, "fine-tune job")


def by_idempotency_key(session: Session, tenant_id: str, key: str) -> FineTuneJobRow | None:
    return session.scalar(
        select(FineTuneJobRow).where(
            FineTuneJobRow.tenant_id == tenant_id, FineTuneJobRow.idempotency_key == key
        )
    )


def list_page(
    session: Session, tenant_id: str, *, limit: int, cursor: str | None, status: str | None = None
) -> tuple[list[FineTuneJobRow], str | None]:
    query = select(FineTuneJobRow).where(FineTuneJobRow.tenant_id == tenant_id)
    if status:
        query = query.where(FineTuneJobRow.status == status)
    return page(session, FineTuneJobRow, query, limit=limit, cursor=cursor)


def active_ids(session: Session, tenant_id: str | None = None) -> list[tuple[str, str]]:
    """(tenant, id) of every job not yet terminal, across tenants unless ``tenant_id`` is given."""
    query = select(FineTuneJobRow.tenant_id, FineTuneJobRow.id).where(FineTuneJobRow.status.in_(ACTIVE))
    if tenant_id is not None:
        query = query.where(FineTuneJobRow.tenant_id == tenant_id)
    return [(t, i) for t, i in session.execute(query.order_by(FineTuneJobRow.created_at))]


def last_metric_step(session: Session, job_id: str) -> int:
    return int(session.scalar(select(func.max(MetricRow.step)).where(MetricRow.job_id == job_id)) or 0)


def metrics(session: Session, tenant_id: str, job_id: str, after_step: int = 0) -> Sequence[MetricRow]:
    """The job's metric records past ``after_step``, in step order."""
    query = select(MetricRow).where(MetricRow.tenant_id == tenant_id, MetricRow.job_id == job_id)
    return tail(session, query, MetricRow.step, after_step)


def latest_metric(session: Session, job_id: str) -> MetricRow | None:
    return session.scalar(
        select(MetricRow).where(MetricRow.job_id == job_id).order_by(MetricRow.step.desc()).limit(1)
    )
