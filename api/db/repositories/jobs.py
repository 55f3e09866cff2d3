"""Fine-tune job rows, their events and metrics; compare-and-set status transitions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.db.models import AdapterRow, EventRow, FineTuneJobRow, MetricRow
from api.db.repositories.cas import compare_and_set as compare_and_set
from api.db.repositories.paging import page
from api.domain.enums import JobStatus
from api.domain.ids import valid_id

ACTIVE = [s.value for s in JobStatus if not s.terminal]


def get(session: Session, tenant_id: str, job_id: str) -> FineTuneJobRow | None:
    if not valid_id(job_id):  # names nothing; PostgreSQL could not even bind it with a NUL
        return None
    return session.scalar(
        select(FineTuneJobRow).where(FineTuneJobRow.tenant_id == tenant_id, FineTuneJobRow.id == job_id)
    )


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


def add_event(
    session: Session, tenant_id: str, subject_id: str, kind: str, message: str, **data: Any
) -> EventRow:
    event = EventRow(tenant_id=tenant_id, subject_id=subject_id, kind=kind, message=message, data=data)
    session.add(event)
    return event


def events(session: Session, tenant_id: str, subject_id: str, after_id: int = 0) -> Sequence[EventRow]:
    return session.scalars(
        select(EventRow)
        .where(EventRow.tenant_id == tenant_id, EventRow.subject_id == subject_id, EventRow.id > after_id)
        .order_by(EventRow.id)
    ).all()


def last_metric_step(session: Session, job_id: str) -> int:
    return int(session.scalar(select(func.max(MetricRow.step)).where(MetricRow.job_id == job_id)) or 0)


def metrics(session: Session, tenant_id: str, job_id: str, after_step: int = 0) -> Sequence[MetricRow]:
    return session.scalars(
        select(MetricRow)
        .where(MetricRow.tenant_id == tenant_id, MetricRow.job_id == job_id, MetricRow.step > after_step)
        .order_by(MetricRow.step)
    ).all()


def latest_metric(session: Session, job_id: str) -> MetricRow | None:
    return session.scalar(
        select(MetricRow).where(MetricRow.job_id == job_id).order_by(MetricRow.step.desc()).limit(1)
    )


def adapter(session: Session, tenant_id: str, adapter_id: str) -> AdapterRow | None:
    if not valid_id(adapter_id):  # names nothing; PostgreSQL could not even bind it with a NUL
        return None
    return session.scalar(
        select(AdapterRow).where(AdapterRow.tenant_id == tenant_id, AdapterRow.id == adapter_id)
    )


def adapters_page(
    session: Session, tenant_id: str, *, limit: int, cursor: str | None
) -> tuple[list[AdapterRow], str | None]:
    query = select(AdapterRow).where(AdapterRow.tenant_id == tenant_id)
    return page(session, AdapterRow, query, limit=limit, cursor=cursor)
