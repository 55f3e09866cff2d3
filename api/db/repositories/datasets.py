"""Dataset rows, always filtered by tenant."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db.models import DatasetRow, FineTuneJobRow
from api.db.repositories.paging import page
from api.db.repositories.rows import count, owned
from api.domain.enums import DatasetStatus, JobStatus


def get(session: Session, tenant_id: str, dataset_id: str) -> DatasetRow | None:
    return owned(session, DatasetRow, tenant_id, dataset_id)


def list_page(
    session: Session, tenant_id: str, *, limit: int, cursor: str | None
) -> tuple[list[DatasetRow], str | None]:
    """Newest first, deleted datasets hidden."""
    query = select(DatasetRow).where(
        DatasetRow.tenant_id == tenant_id, DatasetRow.status != DatasetStatus.DELETED.value
    )
    return page(session, DatasetRow, query, limit=limit, cursor=cursor)


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
    return count(
        session,
        FineTuneJobRow,
        FineTuneJobRow.tenant_id == tenant_id,
        FineTuneJobRow.dataset_id == dataset_id,
    )
