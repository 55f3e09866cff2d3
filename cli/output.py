"""Rendering: Rich tables for people, JSON for scripts (``--json``)."""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def to_jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    return value


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(value), indent=2, default=str) + "\n")


# Bidirectional overrides/isolates: they reorder what a terminal shows (Trojan Source).
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def cell(value: Any) -> str:
    """A table cell from any value, safe to print: control characters (ESC, newlines, NUL, C1 …)
    and bidi overrides are shown escaped (``\\x1b``) instead of reaching the terminal. Every table
    goes through this. (Cells are Rich markup, as before: pass user text through
    ``rich.markup.escape`` where a ``[`` in it must not be read as a style.)"""
    text = "" if value is None else str(value)
    if any(_unsafe(c) for c in text):
        text = "".join(c.encode("unicode_escape").decode("ascii") if _unsafe(c) else c for c in text)
    return text


def _unsafe(c: str) -> bool:
    return c in _BIDI or unicodedata.category(c) == "Cc"


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    t = Table(title=title, header_style="bold", show_lines=False)
    for i, col in enumerate(columns):
        t.add_column(col, no_wrap=i == 0)
    for row in rows:
        t.add_row(*(cell(v) for v in row))
    return t


def kv_table(title: str | None, items: Iterable[tuple[str, Any]]) -> Table:
    t = Table(title=title, show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold cyan", no_wrap=True)
    t.add_column()
    for key, value in items:
        t.add_row(cell(key), cell(value))
    return t
