"""Status transitions of jobs and deployments, and how an exception becomes a failure reason.

Every transition is the same three steps: compare-and-set the row (several writers may race;
one wins), record the ``status`` event ``before → after`` on the winning write, log it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from api.db.repositories import events
from api.db.repositories.cas import Versioned, compare_and_set
from api.domain.enums import DeploymentStatus, JobStatus
from api.domain.errors import FastunerError
from api.logging import get_logger

log = get_logger("transitions")


def transition(
    session: Session,
    row: Versioned,
    to: JobStatus | DeploymentStatus,
    *,
    data: Mapping[str, Any] | None = None,
    record: bool = True,
    **values: Any,
) -> str | None:
    """Move ``row`` to status ``to`` (writing ``values`` too) if nobody changed it since it was read.

    On success the event ``before → to`` (kind ``status``, with ``data``) is recorded unless
    ``record`` is false, and that text is returned; None if another writer won.
    """
    before = row.status
    if not compare_and_set(session, row, status=to.value, **values):
        return None
    change = f"{before} → {to.value}"
    if record:
        events.add(session, row.tenant_id, row.id, "status", change, **(data or {}))
    log.info("transition", extra={"subject_id": row.id, "from": before, "to": to.value})
    return change


def reason_of(exc: BaseException) -> str:
    """What a failure reason says of ``exc``: our errors' message, else its type and text."""
    return exc.message if isinstance(exc, FastunerError) else f"{type(exc).__name__}: {exc}"
