"""Launch as a recorded intent: a job's backend launch survives any crash of the control plane.

Before the backend is called, the job row is written ``launching`` with its deterministic backend
job name (``job_name_for``) and, in ``launch``, what its :class:`TrainingSpec` needs beyond the row
and who is launching it (host, pid and process start time). ``backend_state`` stays empty until
the backend has answered and its answer is written (``launching → provisioning``). A row
``launching`` (or legacy ``queued``, or ``cancelling``) with no ``backend_state`` is resolved by
:meth:`Launcher.resolve` — from the reconciler, an idempotent replay of the start, or a cancel:

* the backend has a job of that name (``find_training``) → **adopted**: its state is recorded and
  the job goes on like any other (a finished one registers its adapter on the next pass);
* none exists and the launch may still be in flight (its launcher process is alive, or cannot be
  seen from here and the intent is younger than ``launch_grace_seconds``) → left alone;
* none exists and the launcher is gone → **launched again** under the same name (at most
  :data:`MAX_RELAUNCHES` times), or **failed** with the reason; a ``cancelling`` row is
  **cancelled** (nothing ever ran).

Names are deterministic and every backend's start is idempotent per name (a second SageMaker job of
a name is refused and the existing one adopted), so one row never has two backend jobs. Within
one process, a row is launched or resolved by one thread at a time (:func:`_claim`).

Transient launch errors (throttling, 5xx, connection errors: ``details["transient"]``) are retried
with exponential backoff and jitter before the job fails: AWS calls by botocore's standard retry
mode (the SageMaker client's config), anything else here with ``tenacity``
(``launch_retries``, ``launch_retry_wait_seconds``). The failure reason, the ``launch.error`` kept on
the row and the error returned say whether the cause was transient; a start replayed with the same
Idempotency-Key retries a launch that failed transiently.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from api import faults
from api.backends.base import ComputeBackend, TrainingSpec
from api.db import models
from api.db.repositories import events
from api.db.repositories import jobs as repo
from api.db.repositories.cas import compare_and_set
from api.db.session import Database
from api.domain.enums import JobStatus
from api.domain.errors import BackendError, FastunerError
from api.logging import get_logger
from api.services.finetune.launcher import launcher_state, launcher_token
from api.services.transitions import reason_of, transition
from api.settings import Settings

log = get_logger("finetune.launch")

MAX_RELAUNCHES = 1  # a launch found lost is redone once; lost again, the job fails
RETRY_WAIT_CAP_S = 30.0
CAS_TRIES = 5
UNLAUNCHED = (JobStatus.LAUNCHING.value, JobStatus.QUEUED.value, JobStatus.CANCELLING.value)


def job_prefix(tenant_id: str, job_id: str) -> str:
    return f"{tenant_id}/jobs/{job_id}"


def launch_record(
    channels: dict[str, str], *, max_runtime_seconds: int, volume_gb: int, attempts: int = 1
) -> dict[str, Any]:
    """The ``launch`` column of a job about to be launched by this process."""
    return {
        "channels": channels,
        "max_runtime_seconds": max_runtime_seconds,
        "volume_gb": volume_gb,
        "attempts": attempts,
        "launcher": launcher_token(),
        "intent_at": datetime.now(UTC).isoformat(),
    }


def spec_for(row: models.FineTuneJobRow) -> TrainingSpec:
    """The job's training spec, rebuilt from the row alone (the same on every launch attempt)."""
    launch = row.launch or {}
    assert row.backend_job_name is not None and launch
    runtime = int(launch["max_runtime_seconds"])
    prefix = job_prefix(row.tenant_id, row.id)
    return TrainingSpec(
        job_id=row.id,
        tenant_id=row.tenant_id,
        job_name=row.backend_job_name,
        hyperparameters=row.hyperparameters,
        channels=dict(launch["channels"]),
        output_prefix=f"{prefix}/output",
        checkpoint_prefix=f"{prefix}/checkpoints",
        instance_type=row.instance_type,
        instance_count=row.instance_count,
        spot=row.spot,
        max_runtime_seconds=runtime,
        max_wait_seconds=2 * runtime if row.spot else None,
        volume_gb=int(launch["volume_gb"]),
        tags={"fastuner:tenant": row.tenant_id, "fastuner:job": row.id, "fastuner:managed": "true"},
    )


def is_transient(exc: BaseException) -> bool:
    """Worth trying again: throttling, 5xx, connection errors (as the backend classified them)."""
    if isinstance(exc, FastunerError):
        return isinstance(exc.details, dict) and exc.details.get("transient") is True
    return isinstance(exc, ConnectionError | TimeoutError)


def _retry_here(exc: BaseException) -> bool:
    """Transient, and not retried already: an AWS call has been retried by botocore's standard
    mode (``RETRY_CONFIG``: backoff with jitter, 10 attempts); doing it again here would only
    multiply the calls under throttling."""
    if isinstance(exc, FastunerError) and isinstance(exc.details, dict) and "aws_error" in exc.details:
        return False
    return is_transient(exc)


# -- one launcher per job name at a time, within this process ---------------------------------
_inflight: set[str] = set()
_inflight_cond = threading.Condition()


@contextmanager
def _claim(name: str, wait_s: float) -> Iterator[bool]:
    """Hold ``name`` for this thread; yields False if another thread of this process kept it
    for longer than ``wait_s``."""
    with _inflight_cond:
        if not _inflight_cond.wait_for(lambda: name not in _inflight, timeout=wait_s):
            yield False
            return
        _inflight.add(name)
    try:
        yield True
    finally:
        with _inflight_cond:
            _inflight.discard(name)
            _inflight_cond.notify_all()


class Launcher:
    def __init__(self, db: Database, backend: ComputeBackend, settings: Settings) -> None:
        self.db = db
        self.backend = backend
        self.settings = settings

    # -- launching ----------------------------------------------------------------------------
    @contextmanager
    def claim(self, name: str, wait_s: float = 0.0) -> Iterator[bool]:
        with _claim(name, wait_s) as claimed:
            yield claimed

    def launch(self, tenant_id: str, job_id: str) -> None:
        """Call the backend for a row just recorded ``launching`` (the caller holds its claim) and
        record the outcome. Raises :class:`BackendError` (``details.transient``) if it failed."""
        faults.point("finetune.before_launch")
        with self.db.session() as session:
            row = repo.get(session, tenant_id, job_id)
            assert row is not None
            spec = spec_for(row)
        attempts = 0

        def count(_: RetryCallState) -> None:
            nonlocal attempts
            attempts += 1

        def note(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.warning("transient launch error; retrying", extra={"job_id": job_id, "error": str(error)})

        retrying = Retrying(
            retry=retry_if_exception(_retry_here),
            stop=stop_after_attempt(self.settings.launch_retries + 1),
            wait=wait_exponential(multiplier=self.settings.launch_retry_wait_seconds, max=RETRY_WAIT_CAP_S)
            + wait_random(0, self.settings.launch_retry_wait_seconds),  # full backoff plus jitter
            before=count,
            before_sleep=note,
            reraise=True,
        )
        try:
            state = retrying(self.backend.start_training, spec)
        except Exception as exc:
            found = self._find_quietly(spec.job_name)  # created in spite of the error?
            if found is None:
                self._fail(tenant_id, job_id, exc, attempts)
                raise BackendError(
                    f"could not launch job {job_id}: {reason_of(exc)}",
                    details={"job_id": job_id, "transient": is_transient(exc), "attempts": attempts},
                ) from exc
            state = found
        faults.point("finetune.after_backend_call")
        self.record(tenant_id, job_id, state, how="launched")
        faults.point("finetune.after_db_write")
        log.info("job launched", extra={"job_id": job_id, "backend": self.backend.name})

    def _find_quietly(self, name: str) -> dict[str, Any] | None:
        try:
            return self.backend.find_training(name)
        except Exception:
            log.warning("could not look the job up after a failed launch", exc_info=True)
            return None

    def _fail(self, tenant_id: str, job_id: str, exc: Exception, attempts: int) -> None:
        reason = reason_of(exc)
        transient = is_transient(exc)
        kind = (
            ("transient" + (f", {attempts} attempts" if attempts > 1 else "")) if transient else "permanent"
        )
        failure = f"launch failed ({kind}): {reason}"
        log.error("launch failed", extra={"job_id": job_id, "error": reason, "transient": transient})
        for _ in range(CAS_TRIES):
            with self.db.session() as session:
                job = repo.get(session, tenant_id, job_id)
                if job is None or job.backend_state or JobStatus(job.status).terminal:
                    return
                launch = dict(job.launch or {}, error={"reason": reason, "transient": transient})
                # Cancelled while launching: nothing runs, so it ends as the user asked.
                cancelled = job.status == JobStatus.CANCELLING.value
                to = JobStatus.CANCELLED if cancelled else JobStatus.FAILED
                values: dict[str, Any] = {} if cancelled else {"failure_reason": failure}
                data = {"reason": failure, "transient": transient}
                if transition(
                    session, job, to, data=data, launch=launch, ended_at=datetime.now(UTC), **values
                ):
                    return

    def record(self, tenant_id: str, job_id: str, state: dict[str, Any], *, how: str) -> str | None:
        """Write the backend's state into a row not yet holding one; returns the transition made.

        ``launching``/``queued`` → ``provisioning``. A row cancelled meanwhile (``cancelling``) keeps
        its status and the backend job is asked to stop; the reconciler then ends it ``cancelled``.
        """
        for _ in range(CAS_TRIES):
            with self.db.session() as session:
                job = repo.get(session, tenant_id, job_id)
                if job is None or job.backend_state:
                    return None
                before, name = job.status, job.backend_job_name
                if before in (JobStatus.LAUNCHING.value, JobStatus.QUEUED.value):
                    change = transition(
                        session, job, JobStatus.PROVISIONING, data={"how": how}, backend_state=state
                    )
                    if change is None:
                        continue
                elif compare_and_set(session, job, backend_state=state):
                    # cancelling, or (should not happen) terminal: keep it tracked, then stop it
                    message = f"backend job {how} while {before}; stopping it"
                    events.add(session, tenant_id, job_id, "launch", message, how=how)
                    change = None
                else:
                    continue
            break
        else:
            raise BackendError(f"could not record the launch of job {job_id}: it kept changing")
        if change is None and name:
            self.backend.stop_training(name, state)
        if how != "launched":
            log.info("launch adopted", extra={"job_id": job_id, "how": how})
        return change

    # -- resolving ----------------------------------------------------------------------------
    def in_flight(self, row: models.FineTuneJobRow) -> bool:
        """Whether a launch of ``row`` may still be running somewhere (the caller holds the claim,
        so not in this process)."""
        launch = row.launch or {}
        who = launcher_state(launch.get("launcher"))
        if who in ("self", "dead"):
            return False
        since = _parse_time(launch.get("intent_at")) or row.created_at
        return datetime.now(UTC) - since < timedelta(seconds=self.settings.launch_grace_seconds)

    def resolve(self, tenant_id: str, job_id: str, *, wait_s: float = 0.0) -> str | None:
        """Settle a row whose launch is not recorded (see the module docstring).

        ``wait_s``: how long to wait for a launch of this job in progress in this process. Returns
        what was done (``adopted``, ``relaunched``, ``cancelled``, ``failed``) or None (nothing to
        do, or a launch may still be in flight).
        """
        with self.db.session() as session:
            row = repo.get(session, tenant_id, job_id)
            if row is None or row.backend_job_name is None:
                return None
            name = row.backend_job_name
        with _claim(name, wait_s) as claimed:
            if not claimed:
                return None
            with self.db.session() as session:
                row = repo.get(session, tenant_id, job_id)
                if row is None or row.backend_state or row.status not in UNLAUNCHED:
                    return None
            found = self.backend.find_training(name)
            if found is not None:
                self.record(tenant_id, job_id, found, how="adopted")
                return "adopted"
            if self.in_flight(row):
                return None
            if row.status == JobStatus.CANCELLING.value:
                self._settle(row, JobStatus.CANCELLED, "cancelled before its backend job started")
                return "cancelled"
            launch = row.launch or {}
            if not launch:  # a legacy row: nothing to rebuild its spec from
                self._settle(row, JobStatus.FAILED, f"the launch never completed (no backend job {name})")
                return "failed"
            attempts = int(launch.get("attempts", 1))
            if attempts > MAX_RELAUNCHES:
                lost = f"the launch was lost {attempts} times (no backend job {name}); not trying again"
                self._settle(row, JobStatus.FAILED, lost)
                return "failed"
            if not self._reclaim(row, attempts + 1, "launch lost (its launcher is gone); launching again"):
                return None
            try:
                self.launch(tenant_id, job_id)
            except BackendError:
                return "failed"
            return "relaunched"

    def retry_failed(self, row: models.FineTuneJobRow, admit: Any) -> bool:
        """Turn a job whose launch failed for a transient cause back into ``launching``.

        ``admit(session)`` re-checks the tenant's quotas in the same transaction. The caller holds
        the claim and then calls :meth:`launch`. False if the row changed meanwhile.
        """
        with self.db.session() as session:
            job = repo.get(session, row.tenant_id, row.id)
            if job is None or job.status != JobStatus.FAILED.value or job.backend_state:
                return False
            admit(session)
            launch = dict(job.launch or {})
            launch.pop("error", None)
            launch.update(launcher=launcher_token(), intent_at=datetime.now(UTC).isoformat(), attempts=1)
            why = "retried under the same Idempotency-Key after a transient launch failure"
            change = transition(
                session,
                job,
                JobStatus.LAUNCHING,
                data={"reason": why},
                failure_reason=None,
                ended_at=None,
                launch=launch,
            )
            return change is not None

    def _reclaim(self, row: models.FineTuneJobRow, attempts: int, why: str) -> bool:
        with self.db.session() as session:
            job = repo.get(session, row.tenant_id, row.id)
            if job is None or job.version != row.version:
                return False
            launch = dict(job.launch or {}, attempts=attempts)
            launch.update(launcher=launcher_token(), intent_at=datetime.now(UTC).isoformat())
            if not transition(session, job, JobStatus.LAUNCHING, record=False, launch=launch):
                return False
            events.add(session, row.tenant_id, row.id, "launch", why, attempt=attempts)
            log.warning("relaunching a lost launch", extra={"job_id": row.id, "attempt": attempts})
            return True

    def _settle(self, row: models.FineTuneJobRow, status: JobStatus, reason: str) -> None:
        with self.db.session() as session:
            job = repo.get(session, row.tenant_id, row.id)
            if job is None or job.version != row.version:
                return
            values: dict[str, Any] = {"ended_at": datetime.now(UTC)}
            if status == JobStatus.FAILED:
                values["failure_reason"] = reason
            if transition(session, job, status, data={"reason": reason}, **values):
                log.warning("unlaunched job settled", extra={"job_id": row.id, "status": status.value})


def _parse_time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None
