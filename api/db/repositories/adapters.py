"""Adapter rows (one per completed job), always filtered by tenant."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db.models import AdapterRow
from api.db.repositories.paging import page
from api.db.repositories.rows import owned, required


def get(session: Session, tenant_id: str, adapter_id: str) -> AdapterRow | None:
    return owned(session, AdapterRow, tenant_id, adapter_id)


def require(session: Session, tenant_id: str, adapter_id: str) -> AdapterRow:
    """The tenant's adapter, or :class:`NotFound`."""
    return required(session, AdapterRow, tenant_id, adapter_id, "adapter")


def list_page(
    session: Session, tenant_id: str, *, limit: int, cursor: str | None
) -> tuple[list[AdapterRow], str | None]:
    query = select(AdapterRow).where(AdapterRow.tenant_id == tenant_id)
    return page(session, AdapterRow, query, limit=limit, cursor=cursor)
