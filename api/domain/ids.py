"""Prefixed random identifiers (``ds_``, ``ft_``, ``adp_``, ``dep_``)."""

from __future__ import annotations

import secrets
from typing import Final, Literal

Prefix = Literal["ds", "ft", "adp", "dep", "req", "drop", "key"]

SUFFIX_LEN: Final = 12
# Longest prefix + "_" + suffix; every id column is sized to this.
ID_MAX_LEN: Final = 32
_ALPHABET: Final = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_id(prefix: Prefix) -> str:
    return prefix + "_" + "".join(secrets.choice(_ALPHABET) for _ in range(SUFFIX_LEN))


def has_prefix(value: str, prefix: Prefix) -> bool:
    head, sep, tail = value.partition("_")
    return head == prefix and sep == "_" and 0 < len(tail) <= ID_MAX_LEN - len(prefix) - 1
