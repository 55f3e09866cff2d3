"""What the /v0 list routes share: the page-size parameter and a page from a service's ``list_page``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Self

from fastapi import Query
from pydantic import BaseModel

PageSize = Annotated[int, Query(ge=1, le=200)]


class Page(BaseModel):
    """Base of the list responses; each declares ``items`` (its type) and ``next_cursor``."""

    @classmethod
    def of(cls, found: tuple[Sequence[Any], str | None]) -> Self:
        """The page of a service's ``list_page`` answer: ``(items, next_cursor)``."""
        items, next_cursor = found
        return cls(items=items, next_cursor=next_cursor)
