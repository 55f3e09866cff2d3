"""Optimistic concurrency: update a row only if nobody changed it since it was read."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from api.db.models import DeploymentRow, FineTuneJobRow, utcnow

Versioned = FineTuneJobRow | DeploymentRow


def compare_and_set(session: Session, row: Versioned, **values: Any) -> bool:
    """Apply ``values`` and bump ``version`` iff the row still has the version it was read with."""
    model = type(row)
    result = session.execute(
        update(model)
        .where(model.id == row.id, model.version == row.version)
        .values(version=row.version + 1, updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    session.refresh(row)
    return True
