"""Queries every tenant-owned table shares: one row by id, a tail past a position, a count."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from api.domain.errors import NotFound
from api.domain.ids import valid_id


class _Owned(Protocol):
    id: Any
    tenant_id: Any


R = TypeVar("R", bound=_Owned)
T = TypeVar("T")


def owned(session: Session, model: type[R], tenant_id: str, row_id: str) -> R | None:
    """The tenant's row ``row_id`` of ``model``; None if it is not there (or is another tenant's)."""
    if not valid_id(row_id):  # names nothing; PostgreSQL could not even bind it with a NUL
        return None
    return session.scalar(select(model).where(model.tenant_id == tenant_id, model.id == row_id))


def required(session: Session, model: type[R], tenant_id: str, row_id: str, what: str) -> R:
    """As :func:`owned`, but a missing row is :class:`NotFound` (``{what} {row_id} not found``)."""
    row = owned(session, model, tenant_id, row_id)
    if row is None:
        raise NotFound(f"{what} {row_id} not found")
    return row


def tail(session: Session, query: Select[T], position: InstrumentedAttribute[int], after: int) -> Sequence[T]:
    """The rows of ``query`` past ``after``, in ``position`` order (what a poller has not seen)."""
    return session.scalars(query.where(position > after).order_by(position)).all()


def count(session: Session, model: type[Any], *conditions: ColumnElement[bool]) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*conditions)) or 0
