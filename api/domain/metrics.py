"""Parsing of the engine's ``metrics.jsonl`` records (pure; shared by backends and services)."""

from __future__ import annotations

import json
from collections.abc import Iterable


def parse_metric_records(lines: Iterable[str], after_step: int = 0) -> list[dict[str, float]]:
    """Numeric fields of every JSON record with a ``step`` > ``after_step``; torn lines are skipped."""
    out: list[dict[str, float]] = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line being written right now
        if not isinstance(rec, dict):
            continue
        step = rec.get("step")
        if isinstance(step, int | float) and not isinstance(step, bool) and step > after_step:
            out.append(
                {
                    k: float(v)
                    for k, v in rec.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                }
            )
    return out
