"""Dataset rows, always filtered by tenant."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from api.db.models import DatasetRow, FineTuneJobRow
from api.domain.enums import JobStatus


def get(session: Session, tenant_id: str, dataset_id: str) -> DatasetRow | None:
    return session.scalar(
        select(DatasetRow).where(DatasetRow.tenant_id == tenant_id, DatasetRow.id == dataset_id)
    )


def list_page(
    session: Session, tenant_id: str, *, limit: int, after: tuple[datetime, str] | None = None
) -> Sequence[DatasetRow]:
    """Newest first; ``after`` is the (created_at, id) of the last row of the previous page."""
    query = select(DatasetRow).where(DatasetRow.tenant_id == tenant_id)
    if after is not None:
        at, last_id = after
        query = query.where(
            or_(DatasetRow.created_at < at, and_(DatasetRow.created_at == at, DatasetRow.id < last_id))
        )
    query = query.order_by(DatasetRow.created_at.desc(), DatasetRow.id.desc()).limit(limit)
    return session.scalars(query).all()


def active_jobs_using(session: Session, tenant_id: str, dataset_id: str) -> list[str]:
    terminal = [s.value for s in JobStatus if s.terminal]
    rows = session.scalars(
        select(FineTuneJobRow.id).where(
            FineTuneJobRow.tenant_id == tenant_id,
            FineTuneJobRow.dataset_id == dataset_id,
            FineTuneJobRow.status.not_in(terminal),
        )
    )
    return list(rows)


def any_jobs_using(session: Session, tenant_id: str, dataset_id: str) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(FineTuneJobRow)
            .where(FineTuneJobRow.tenant_id == tenant_id, FineTuneJobRow.dataset_id == dataset_id)
        )
        or 0
    )
