"""Human durations: ``90``, ``90s``, ``30m``, ``8h``, ``1d``, ``1h30m`` ↔ seconds."""

from __future__ import annotations

import re

import click

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+)([smhd]?)")


def parse_duration(text: str) -> int:
    text = text.strip().lower()
    pos, total = 0, 0
    while pos < len(text):
        match = _PART.match(text, pos)
        if not match:
            raise ValueError(f"invalid duration {text!r} (use e.g. 90s, 30m, 8h, 1d, 1h30m)")
        total += int(match.group(1)) * _UNITS[match.group(2) or "s"]
        pos = match.end()
    if not text or total <= 0:
        raise ValueError(f"invalid duration {text!r}")
    return total


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    if seconds or not parts:
        parts.append(f"{seconds}s")
    return "".join(parts)


class Duration(click.ParamType[int]):
    name = "duration"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
