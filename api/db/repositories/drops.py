"""The drop ledger: one row per (bucket, key, etag); claims, leases and outcomes.

Every state change after the claiming INSERT is a conditional UPDATE (the WHERE names the state
it expects and, once claimed, the lease owner's token), so concurrent workers never both win.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.orm import Session

from api.db.models import DropObjectRow, TenantRow
from api.domain.drops import DropState

_IN_CHUNK = 500


def tenant_exists(session: Session, tenant_id: str) -> bool:
    return session.get(TenantRow, tenant_id) is not None


def by_identity(session: Session, bucket: str, key: str, etag: str) -> DropObjectRow | None:
    return session.scalar(
        select(DropObjectRow).where(
            DropObjectRow.bucket == bucket, DropObjectRow.key == key, DropObjectRow.etag == etag
        )
    )


def _claimable(now: datetime) -> Any:
    """Rows another worker may take: a due pending retry, or a processing row whose lease lapsed."""
    return or_(
        and_(
            DropObjectRow.status == DropState.PENDING.value,
            or_(DropObjectRow.next_attempt_at.is_(None), DropObjectRow.next_attempt_at <= now),
        ),
        and_(DropObjectRow.status == DropState.PROCESSING.value, DropObjectRow.lease_expires_at < now),
    )


def take_over(
    session: Session, bucket: str, key: str, etag: str, *, owner: str, lease_until: datetime, now: datetime
) -> bool:
    """Claim an existing row if it is claimable (compare-and-set); True if this caller won."""
    result = session.execute(
        update(DropObjectRow)
        .where(
            DropObjectRow.bucket == bucket,
            DropObjectRow.key == key,
            DropObjectRow.etag == etag,
            _claimable(now),
        )
        .values(
            status=DropState.PROCESSING.value,
            lease_owner=owner,
            lease_expires_at=lease_until,
            next_attempt_at=None,
            attempts=DropObjectRow.attempts + 1,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def update_claimed(session: Session, row_id: int, owner: str, **values: Any) -> bool:
    """Change a row this caller still holds the lease on; False if the lease was lost."""
    result = session.execute(
        update(DropObjectRow)
        .where(
            DropObjectRow.id == row_id,
            DropObjectRow.lease_owner == owner,
            DropObjectRow.status == DropState.PROCESSING.value,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def delete_claimed(session: Session, row_id: int, owner: str) -> bool:
    result = session.execute(
        delete(DropObjectRow)
        .where(DropObjectRow.id == row_id, DropObjectRow.lease_owner == owner)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def due(session: Session, bucket: str, now: datetime, limit: int) -> Sequence[DropObjectRow]:
    """Rows of ``bucket`` a retry sweep should take now (oldest first)."""
    return session.scalars(
        select(DropObjectRow)
        .where(DropObjectRow.bucket == bucket, _claimable(now))
        .order_by(DropObjectRow.id)
        .limit(limit)
    ).all()


def settled_identities(
    session: Session, bucket: str, keys: Iterable[str], now: datetime
) -> set[tuple[str, str]]:
    """(key, etag) of the rows among ``keys`` nobody may claim now (finished, leased, or a retry
    not due yet): a scanner skips those without a look."""
    wanted = sorted(set(keys))
    out: set[tuple[str, str]] = set()
    for start in range(0, len(wanted), _IN_CHUNK):
        rows = session.execute(
            select(DropObjectRow.key, DropObjectRow.etag).where(
                DropObjectRow.bucket == bucket,
                DropObjectRow.key.in_(wanted[start : start + _IN_CHUNK]),
                ~_claimable(now),
            )
        )
        out.update((k, e) for k, e in rows)
    return out


def forget(session: Session, row_id: int, now: datetime) -> bool:
    """Drop a claimable row whose object version no longer exists (gone or overwritten)."""
    result = session.execute(
        delete(DropObjectRow)
        .where(DropObjectRow.id == row_id, _claimable(now))
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]
