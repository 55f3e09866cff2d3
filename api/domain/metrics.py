"""The engine's metric records: parsing ``metrics.jsonl`` and reading the SCU controller's state.

Pure; shared by backends, services and the CLI.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping


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


# -- SCU: the controller's view of a record --------------------------------------------------------
# The engine logs ``unreachable`` = +1 while lambda has sat on lambda_max for a whole window (S stays
# above the target even at the strongest allowed regularisation), -1 while it has sat on lambda_min
# (S stays below the target with almost no regularisation), else 0. Records from engines that
# predate the key read as 0.
UNREACHABLE_EVENT_KIND = "warning"


def unreachable_flag(record: Mapping[str, float] | None) -> int:
    """+1, -1 or 0 (absent, zero or not a number)."""
    value = (record or {}).get("unreachable", 0.0)
    if not math.isfinite(value):
        return 0
    return 1 if value > 0 else -1 if value < 0 else 0


def unreachable_onsets(
    records: Iterable[Mapping[str, float]], previous: int = 0
) -> list[Mapping[str, float]]:
    """The records (taken in order) where an unreachable episode starts.

    ``previous`` is the flag of the record just before the first one. An episode starts where the
    flag turns non-zero, or flips sign (a different bound, different advice); it lasts while the
    flag stays, so a long episode is reported once, and again only after it has ended (0).
    """
    out: list[Mapping[str, float]] = []
    for record in records:
        flag = unreachable_flag(record)
        if flag and flag != previous:
            out.append(record)
        previous = flag
    return out


def unreachable_message(
    record: Mapping[str, float], *, since_step: int | None = None, target_s: float | None = None
) -> str:
    """What an unreachable target means and what to change (empty when the record is reachable)."""
    flag = unreachable_flag(record)
    if not flag:
        return ""
    target = record.get("target_s", target_s)
    head = "SCU target S*" + (f"={target:.4g}" if target is not None else "") + " unreachable"
    if since_step is not None:
        head += f" since step {since_step}"
    lam = record.get("lambda")
    lam_text = f" {lam:.4g}" if lam is not None and math.isfinite(lam) else ""
    if flag > 0:
        return (
            f"{head}: λ pinned at its maximum{lam_text} (S stays above the target even at the "
            "strongest allowed regularisation); raise lambda_max or target_s"
        )
    return (
        f"{head}: λ pinned at its minimum{lam_text} (S stays below the target even with almost no "
        "regularisation); lower target_s or lambda_min"
    )


def loss_bpt(record: Mapping[str, float]) -> float | None:
    """The regularised loss in bits per token; older engines logged ``loss`` in nats."""
    if "loss_bpt" in record:
        return record["loss_bpt"]
    if "loss" in record:
        return record["loss"] / math.log(2)
    return None


def target_band(
    record: Mapping[str, float], target_s: float | None = None
) -> tuple[float, float, float] | None:
    """(low, target, high) of the controller's band ``target_s * exp(+-band)`` for this record.

    ``target_s`` stands in where the record has none (older engines); without a ``band`` the
    band is the target alone.
    """
    target = record.get("target_s", target_s)
    if target is None or not math.isfinite(target):
        return None
    band = record.get("band", 0.0)
    band = abs(band) if math.isfinite(band) else 0.0
    return target * math.exp(-band), target, target * math.exp(band)
