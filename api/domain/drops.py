"""S3 drop-and-train: the states of a dropped object and the ``<name>.status.json`` written beside it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Literal, get_args

from pydantic import BaseModel

from api.domain.datasets import ValidationReport

DropSource = Literal["sqs", "scan"]
"""Where a worker learns of drops: the bucket's SQS event queue, or a scan of ``drop/``."""
DROP_SOURCES: tuple[DropSource, ...] = get_args(DropSource)


class DropState(StrEnum):
    """Ledger (and status.json) state of one object version.

    ``processing`` (a worker holds the lease) and ``pending`` (waiting for a retry: quota, or a
    transient storage/backend error) are not final; the other three are.
    """

    PROCESSING = "processing"
    PENDING = "pending"
    STARTED = "started"  # dataset stored, job started
    FAILED = "failed"  # the job failed at launch, or retries ran out
    REJECTED = "rejected"  # bad key, tenant, sidecar or data: fix it and drop again

    @property
    def final(self) -> bool:
        return self in (DropState.STARTED, DropState.FAILED, DropState.REJECTED)


@dataclass(frozen=True)
class DropRef:
    """One object version to handle: its store key and the etag the event or listing saw.

    ``etag`` None means "whatever is there now" (an event that did not carry one).
    """

    key: str
    etag: str | None = None
    version_id: str | None = None


class DropStatus(BaseModel):
    """``drop/{tenant}/<name>.status.json``: what happened to the drop, for users with only S3."""

    schema_version: Literal[1] = 1
    state: DropState
    object: str  # the bucket key of the drop
    etag: str
    message: str
    dataset_id: str | None = None
    job_id: str | None = None
    job_status: str | None = None
    errors: list[str] = []  # sidecar and key problems, one line each
    report: ValidationReport | None = None  # the dataset validation report (line numbers)
    attempts: int = 0
    retry_after: datetime | None = None
    updated_at: datetime
