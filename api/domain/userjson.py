"""Parsing JSON that users supply (batch lines, drop sidecars, hyperparameters) without letting its
nesting depth reach Python's recursion limit.

``json.loads`` recurses once per nesting level: a line of 10^5 ``[`` raises ``RecursionError``,
which is not a ``ValueError`` and so escaped every ``except ValueError`` around user input (a batch
response cut short, a drop retried as if the failure were transient). :func:`loads` turns it, and
any document nested deeper than ``max_depth``, into :class:`JSONDepthError`, a ``ValueError`` with
a message fit for the user. Nothing Fastuner accepts is legitimately nested deeper than a few
levels; the limit leaves ample room.
"""

from __future__ import annotations

import json
from typing import Any, Final

MAX_JSON_DEPTH: Final = 64


class JSONDepthError(ValueError):
    """The document is nested deeper than the limit."""


def depth_error(max_depth: int = MAX_JSON_DEPTH) -> JSONDepthError:
    return JSONDepthError(f"JSON nested deeper than {max_depth} levels (arrays/objects inside each other)")


def nesting_depth(value: Any, limit: int | None = None) -> int:
    """How deeply arrays/objects nest in ``value`` (a scalar: 0). Iterative: safe for any depth.
    With ``limit``, stops counting once the depth exceeds it."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        if limit is not None and deepest > limit:
            return deepest
        stack.extend((child, level) for child in children if isinstance(child, dict | list | tuple))
    return deepest


def loads(data: str | bytes | bytearray, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for user input: raises ``json.JSONDecodeError`` (a ``ValueError``) for bad JSON
    and :class:`JSONDepthError` (a ``ValueError``) for nesting beyond ``max_depth``; never
    ``RecursionError``."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise depth_error(max_depth) from None
    if nesting_depth(value, max_depth) > max_depth:
        raise depth_error(max_depth)
    return value
