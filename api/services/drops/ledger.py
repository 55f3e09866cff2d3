"""Claims on the drop ledger: exactly one worker at a time works on an object version.

A new version is claimed by INSERT (the unique (bucket, key, etag) constraint picks one winner
among racing workers); an existing row is re-claimed only if it is due (a pending retry) or its
lease lapsed (the worker died), by compare-and-set. A finished row is never claimed again.
Each claim has its own owner token; only the token's holder can record the outcome.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from api.db.models import DropObjectRow
from api.db.repositories import drops as repo
from api.db.session import Database
from api.domain.drops import DropState

MAX_BACKOFF = timedelta(hours=1)


@dataclass(frozen=True)
class Claim:
    id: int
    owner: str
    attempts: int
    dataset_id: str | None
    options: dict[str, Any] | None


@dataclass(frozen=True)
class Released:
    state: DropState  # pending, or failed when the attempts ran out
    retry_after: datetime | None


class Ledger:
    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], datetime],
        lease: timedelta,
        retry_base: timedelta,
        max_attempts: int,
    ) -> None:
        self.db = db
        self.clock = clock
        self.lease = lease
        self.retry_base = retry_base
        self.max_attempts = max_attempts

    def claim(
        self,
        *,
        tenant_id: str,
        bucket: str,
        key: str,
        etag: str,
        version_id: str | None,
        dataset_id: str | None,
    ) -> Claim | str:
        """A claim on (bucket, key, etag), or why there is none: ``finished``, ``busy`` (another
        worker holds the lease) or ``waiting`` (a retry that is not due yet)."""
        owner = uuid.uuid4().hex
        now = self.clock()
        try:
            with self.db.session() as session:
                row = DropObjectRow(
                    tenant_id=tenant_id,
                    bucket=bucket,
                    key=key,
                    etag=etag,
                    version_id=version_id,
                    status=DropState.PROCESSING.value,
                    dataset_id=dataset_id,
                    attempts=1,
                    lease_owner=owner,
                    lease_expires_at=now + self.lease,
                    created_at=now,
                    updated_at=now,
                )
                session.add(row)
                session.flush()
                return Claim(row.id, owner, 1, dataset_id, None)
        except IntegrityError:
            pass  # a row exists: finished, held by someone, or claimable
        with self.db.session() as session:  # the UPDATE first: the transaction starts as a writer
            won = repo.take_over(
                session, bucket, key, etag, owner=owner, lease_until=now + self.lease, now=now
            )
            existing = repo.by_identity(session, bucket, key, etag)
            if existing is None:
                return "busy"  # abandoned just now; the next event or scan sees the object again
            if won:
                return Claim(existing.id, owner, existing.attempts, existing.dataset_id, existing.options)
            state = DropState(existing.status)
            return "finished" if state.final else "waiting" if state == DropState.PENDING else "busy"

    def save_options(self, claim: Claim, options: dict[str, Any]) -> bool:
        with self.db.session() as session:
            return repo.update_claimed(
                session, claim.id, claim.owner, options=options, updated_at=self.clock()
            )

    def finish(
        self,
        claim: Claim,
        state: DropState,
        *,
        dataset_id: str | None = None,
        job_id: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Record a final outcome; False if this claim had lost its lease (another worker took over)."""
        assert state.final
        now = self.clock()
        with self.db.session() as session:
            return repo.update_claimed(
                session,
                claim.id,
                claim.owner,
                status=state.value,
                dataset_id=dataset_id,
                job_id=job_id,
                error=error,
                lease_owner=None,
                lease_expires_at=None,
                next_attempt_at=None,
                finished_at=now,
                updated_at=now,
            )

    def release(self, claim: Claim, reason: str) -> Released:
        """Give the row back for a later retry (exponential backoff), or fail it when out of attempts."""
        now = self.clock()
        if claim.attempts >= self.max_attempts:
            self.finish(claim, DropState.FAILED, error=f"gave up after {claim.attempts} attempts: {reason}")
            return Released(DropState.FAILED, None)
        retry_after = now + min(self.retry_base * 2 ** (claim.attempts - 1), MAX_BACKOFF)
        with self.db.session() as session:
            repo.update_claimed(
                session,
                claim.id,
                claim.owner,
                status=DropState.PENDING.value,
                error=reason,
                lease_owner=None,
                lease_expires_at=None,
                next_attempt_at=retry_after,
                updated_at=now,
            )
        return Released(DropState.PENDING, retry_after)

    def abandon(self, claim: Claim) -> None:
        """Forget a claim whose object version is gone: if that content comes back, it is new."""
        with self.db.session() as session:
            repo.delete_claimed(session, claim.id, claim.owner)
