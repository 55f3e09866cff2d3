"""A job's events in OpenAI's shape: our job events and one ``metrics`` event per logged step,
newest first, paged by event id."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy.orm import Session

from api.db.repositories import events as events_repo
from api.db.repositories import jobs as jobs_repo
from api.domain.openai import FineTuningJobEvent, InvalidParam

LN2 = math.log(2)
RECORD_KIND = "openai"  # the job event holding what only OpenAI's request carries (suffix, metadata)
# (when, tie-break, event): sorted newest first
Stamped = tuple[datetime, int, FineTuningJobEvent]


def unix(when: datetime | None) -> int | None:
    if when is None:
        return None
    return int(aware(when).timestamp())


def aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def nats(bpt: Any) -> float | None:
    """Bits per token as nats (OpenAI's losses); None for anything but a finite number."""
    return float(bpt) * LN2 if isinstance(bpt, int | float) and math.isfinite(bpt) else None


def job_events(session: Session, tenant: str, job_id: str) -> list[FineTuningJobEvent]:
    """Every event of the job, newest first (the OpenAI request record left out)."""
    stamped = [
        _event(job_id, e.id, e.kind, e.message, dict(e.data), e.at)
        for e in events_repo.after(session, tenant, job_id)
        if e.kind != RECORD_KIND
    ]
    # a step's stored time can be later than a later step's (seen in tests: [6, 8, 4, 2]): each
    # step's time is taken as no earlier than the steps before it, so newest first is also
    # highest step first
    newest: datetime | None = None
    steps: list[Stamped] = []
    for m in jobs_repo.metrics(session, tenant, job_id):  # in step order
        at = aware(m.at)
        newest = at if newest is None or at > newest else newest
        steps.append(_metric_event(job_id, m.step, dict(m.values), newest))
    stamped += steps[::-1]  # the sort below is stable: of steps at the same time, the higher first
    stamped.sort(key=lambda e: (e[0], e[1]), reverse=True)
    return [e for _, _, e in stamped]


def page(
    items: list[FineTuningJobEvent], job_id: str, *, after: str | None, limit: int
) -> tuple[list[FineTuningJobEvent], bool]:
    """The ``limit`` events past the one with id ``after``, and whether more follow."""
    start = 0
    if after:
        ids = [e.id for e in items]
        if after not in ids:
            raise InvalidParam(f"No such event of job {job_id}: {after}", param="after")
        start = ids.index(after) + 1
    return items[start : start + limit], start + limit < len(items)


def _level(kind: str, message: str) -> Literal["info", "warn", "error"]:
    if kind == "warning":
        return "warn"
    if message.endswith("→ failed") or kind in ("error", "failed"):
        return "error"
    return "info"


def _event(
    job_id: str, event_id: int, kind: str, message: str, data: dict[str, Any], at: datetime
) -> Stamped:
    event = FineTuningJobEvent(
        id=f"ftevent-{job_id}-{event_id}",
        created_at=unix(at) or 0,
        level=_level(kind, message),
        message=message,
        data=data or None,
        type="message",
    )
    return aware(at), event_id, event


def _metric_event(job_id: str, step: int, values: dict[str, Any], at: datetime) -> Stamped:
    loss = nats(values.get("data_bpt"))
    valid = nats(values.get("val_bpt"))  # only on the steps the engine evaluated
    message = f"Step {step}: training loss={loss:.4f}" if loss is not None else f"Step {step}"
    if valid is not None:
        message += f", validation loss={valid:.4f}"
    extra = {"valid_loss": valid} if valid is not None else {}
    event = FineTuningJobEvent(
        id=f"ftevent-{job_id}-step-{step}",
        created_at=unix(at) or 0,
        level="info",
        message=message,
        data={"step": step, "train_loss": loss, **extra, **values},
        type="metrics",
    )
    # A step logged in the same instant as an event comes before it (newest first: after).
    return aware(at), -1, event
