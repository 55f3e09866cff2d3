"""Events of jobs and deployments (transitions and notable happenings), keyed by subject id."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db.models import EventRow
from api.db.repositories.rows import tail


def add(session: Session, tenant_id: str, subject_id: str, kind: str, message: str, **data: Any) -> EventRow:
    event = EventRow(tenant_id=tenant_id, subject_id=subject_id, kind=kind, message=message, data=data)
    session.add(event)
    return event


def after(session: Session, tenant_id: str, subject_id: str, after_id: int = 0) -> Sequence[EventRow]:
    """The subject's events past ``after_id``, oldest first."""
    query = select(EventRow).where(EventRow.tenant_id == tenant_id, EventRow.subject_id == subject_id)
    return tail(session, query, EventRow.id, after_id)
