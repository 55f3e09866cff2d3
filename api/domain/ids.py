"""Prefixed random identifiers (``ds_``, ``ft_``, ``adp_``, ``dep_``)."""

from __future__ import annotations

import re
import secrets
from typing import Final, Literal

Prefix = Literal["ds", "ft", "adp", "dep", "req", "drop", "key"]

SUFFIX_LEN: Final = 12
# Longest prefix + "_" + suffix; every id column is sized to this.
ID_MAX_LEN: Final = 32
_ALPHABET: Final = "0123456789abcdefghijklmnopqrstuvwxyz"
# What an id may look like: every one new_id makes, and hand-made ones (``ds_missing``) too.
_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]+")


def new_id(prefix: Prefix) -> str:
    return prefix + "_" + "".join(secrets.choice(_ALPHABET) for _ in range(SUFFIX_LEN))


def valid_id(value: str) -> bool:
    """Whether ``value`` could be an id: anything else names nothing, and must not reach a query
    (PostgreSQL cannot even bind a NUL)."""
    return len(value) <= ID_MAX_LEN and _ID_RE.fullmatch(value) is not None


def has_prefix(value: str, prefix: Prefix) -> bool:
    head, sep, tail = value.partition("_")
    return head == prefix and sep == "_" and 0 < len(tail) <= ID_MAX_LEN - len(prefix) - 1
