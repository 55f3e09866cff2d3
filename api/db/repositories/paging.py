"""Keyset pagination, newest first, over any model with ``created_at`` and a string ``id``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from api.domain.errors import BadRequest
from api.domain.ids import valid_id


class _Keyed(Protocol):
    id: Any
    created_at: Any


T = TypeVar("T", bound=_Keyed)


def page(
    session: Session, model: type[T], query: Select[T], *, limit: int, cursor: str | None
) -> tuple[list[T], str | None]:
    """One page of ``query`` and the cursor of the next page (None on the last one)."""
    if cursor:
        at, last_id = decode_cursor(cursor)
        query = query.where(or_(model.created_at < at, and_(model.created_at == at, model.id < last_id)))
    rows: Sequence[T] = session.scalars(
        query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    ).all()
    items = list(rows[:limit])
    next_cursor = encode_cursor(items[-1].created_at, items[-1].id) if len(rows) > limit else None
    return items, next_cursor


def encode_cursor(at: datetime, row_id: str) -> str:
    return f"{at.isoformat()}|{row_id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, last_id = cursor.split("|", 1)
        when = datetime.fromisoformat(at)
    except ValueError as exc:
        raise BadRequest("invalid cursor") from exc
    # Ours always hold an aware timestamp and an id; a query could bind nothing else (naive
    # datetimes are refused, PostgreSQL cannot bind a NUL).
    if when.tzinfo is None or not valid_id(last_id):
        raise BadRequest("invalid cursor")
    return when, last_id
