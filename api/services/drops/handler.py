"""The one drop handler: every source (SQS events, the scanner, the retry sweep) calls :meth:`handle`.

For an object version it claims the ledger row, then runs the same services as the CLI and API:
``DatasetService.create`` (with the dataset id allocated with the claim, so a retry reuses the
dataset) and ``FineTuneService.start`` (with an idempotency key derived from the ledger row, so a
retry after a crash gets the job it already made). The outcome lands in the ledger and in
``<name>.status.json``. Bad input never raises: it ends as ``rejected``; quota and transient
errors end as ``pending`` and are retried later.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from api.db.repositories import drops as repo
from api.db.session import Database
from api.domain.datasets import Dataset, DatasetOptions, ValidationReport
from api.domain.drops import DropRef, DropState
from api.domain.enums import JobStatus
from api.domain.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    QuotaExceeded,
    UnsafePath,
    ValidationFailed,
)
from api.domain.finetune import FineTuneJob
from api.domain.ids import new_id
from api.logging import get_logger
from api.services import scratch
from api.services.datasets.service import DatasetService
from api.services.drops import keys, sidecar
from api.services.drops.keys import DropKey, Location
from api.services.drops.ledger import Claim, Ledger
from api.services.drops.objects import Objects
from api.services.drops.status import StatusWriter
from api.services.finetune import preflight
from api.services.finetune.service import FineTuneService
from api.services.transitions import reason_of
from api.settings import Settings

log = get_logger("drops")
# What the user must fix (final); anything else but a quota is worth retrying.
_REJECTING = (BadRequest, Forbidden, Conflict, NotFound, UnsafePath)


@dataclass(frozen=True)
class Outcome:
    """What one call did: ``ignored`` (no drop, gone, superseded), ``skipped`` (finished, or held
    by another worker), or the drop state it recorded."""

    action: str
    key: str
    message: str = ""
    dataset_id: str | None = None
    job_id: str | None = None


class _Rejected(Exception):
    def __init__(
        self, message: str, *, errors: list[str] | None = None, report: ValidationReport | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or []
        self.report = report


class _Superseded(Exception):
    pass


@dataclass
class _Attempt:
    drop: DropKey
    etag: str
    claim: Claim
    dataset_id: str | None = None  # set once the dataset exists

    def log_extra(self, **more: Any) -> dict[str, Any]:
        ids = {"drop_key": self.drop.key, "tenant_id": self.drop.tenant_id, "dataset_id": self.dataset_id}
        return {**ids, "attempt": self.claim.attempts, **more}


class DropHandler:
    def __init__(
        self,
        *,
        db: Database,
        datasets: DatasetService,
        finetune: FineTuneService,
        settings: Settings,
        location: Location,
        objects: Objects,
        ledger: Ledger,
        status: StatusWriter,
    ) -> None:
        self.db = db
        self.datasets = datasets
        self.finetune = finetune
        self.settings = settings
        self.location = location
        self.objects = objects
        self.ledger = ledger
        self.status = status

    def handle(self, ref: DropRef) -> Outcome:
        drop = keys.parse(ref.key)
        if drop is None:
            return Outcome("ignored", ref.key, "not a drop")
        seen = self.objects.current(ref.key)
        if seen is None:
            return Outcome("ignored", ref.key, "the object is gone")
        if ref.etag is not None and seen.etag != ref.etag:
            return Outcome("ignored", ref.key, "superseded by a newer version of the object")
        if seen.unsafe and not drop.problem:
            drop = replace(drop, problem=seen.unsafe)  # a symbolic link is rejected, never read
        claim = self.ledger.claim(
            tenant_id=drop.tenant_id,
            bucket=self.location.bucket,
            key=self.location.bucket_key(drop.key),
            etag=seen.etag,
            version_id=ref.version_id,
            dataset_id=None if drop.problem else new_id("ds"),
        )
        if isinstance(claim, str):
            return Outcome("skipped", ref.key, claim)
        return self._attempt(_Attempt(drop, seen.etag, claim))

    # -- one attempt --------------------------------------------------------------------------
    def _attempt(self, at: _Attempt) -> Outcome:
        try:
            job = self._process(at)
        except _Rejected as exc:
            return self._final(at, DropState.REJECTED, exc.message, errors=exc.errors, report=exc.report)
        except _Superseded:
            self.ledger.abandon(at.claim)
            return Outcome("ignored", at.drop.key, "superseded while it was being read")
        except QuotaExceeded as exc:
            return self._retry(at, exc.message)
        except Exception as exc:  # storage, backend, database: worth another try
            log.exception("drop attempt failed", extra=at.log_extra())
            return self._retry(at, reason_of(exc))
        if job.status == JobStatus.FAILED:
            message = f"job {job.id} failed: {job.failure_reason or 'unknown reason'}"
            return self._final(at, DropState.FAILED, message, job=job)
        return self._final(
            at, DropState.STARTED, f"dataset {at.dataset_id} stored, job {job.id} started", job=job
        )

    def _process(self, at: _Attempt) -> FineTuneJob:
        drop, claim = at.drop, at.claim
        if drop.problem:
            raise _Rejected(drop.problem, errors=[drop.problem])
        with self.db.session() as session:
            if not repo.tenant_exists(session, drop.tenant_id):
                raise _Rejected(f"tenant {drop.tenant_id!r} does not exist; ask an admin to create it")
        assert claim.dataset_id is not None
        plan = self._plan(at)
        try:
            preflight.check_model_allowed(plan.job.base_model, self.settings)  # before any data is stored
            preflight.resolve_instance(plan.job, self.settings)
        except BadRequest as exc:
            raise _Rejected(exc.message, errors=[exc.message]) from exc
        self.status.write(
            drop, at.etag, DropState.PROCESSING, "validating the dataset", attempts=claim.attempts
        )
        try:
            at.dataset_id = self._dataset(at, plan.dataset).id
            result = self.finetune.start(drop.tenant_id, plan.job, idempotency_key=f"drop-{claim.id}")
        except ValidationFailed as exc:
            report = ValidationReport.model_validate(exc.details) if exc.details else None
            raise _Rejected(exc.message, report=report) from exc
        except _REJECTING as exc:
            raise _Rejected(exc.message, errors=[exc.message]) from exc
        assert isinstance(result, FineTuneJob)
        return result

    def _plan(self, at: _Attempt) -> sidecar.DropPlan:
        """The sidecar's plan; the first attempt snapshots the sidecar so retries use the same one."""
        try:
            if at.claim.options is not None:
                parsed = sidecar.Sidecar.model_validate(at.claim.options)
            else:
                parsed = self._read_sidecar(at.drop)
                self.ledger.save_options(at.claim, parsed.model_dump(mode="json", exclude_none=True))
            assert at.claim.dataset_id is not None
            return sidecar.plan(
                parsed,
                name=at.drop.name,
                dataset_id=at.claim.dataset_id,
                limits=self.settings.limits,
                default_base_model=self.settings.drop_default_base_model,
            )
        except sidecar.SidecarError as exc:
            sidecar_name = at.drop.sidecar_key.rsplit("/", 1)[-1]
            message = f"the options ({sidecar_name} or the defaults) are not usable: {'; '.join(exc.errors)}"
            raise _Rejected(message, errors=exc.errors) from exc

    def _read_sidecar(self, drop: DropKey) -> sidecar.Sidecar:
        try:
            raw = self.objects.store.get_bytes(drop.sidecar_key)
        except FileNotFoundError:
            return sidecar.Sidecar()
        except UnsafePath as exc:
            raise sidecar.SidecarError([exc.message]) from exc
        return sidecar.parse(raw)

    def _dataset(self, at: _Attempt, options: DatasetOptions) -> Dataset:
        dataset_id = at.claim.dataset_id
        assert dataset_id is not None
        try:
            return self.datasets.get(at.drop.tenant_id, dataset_id)  # made by an earlier attempt
        except NotFound:
            pass
        with scratch.directory(self.settings.work_dir, "drop-") as tmp:
            source = tmp / "source.jsonl"
            if not self.objects.fetch(at.drop.key, at.etag, source):
                raise _Superseded
            return self.datasets.create(
                at.drop.tenant_id,
                source,
                options,
                filename=at.drop.key.rsplit("/", 1)[-1],
                dataset_id=dataset_id,
            )

    # -- outcomes -----------------------------------------------------------------------------
    def _final(
        self,
        at: _Attempt,
        state: DropState,
        message: str,
        *,
        job: FineTuneJob | None = None,
        errors: list[str] | None = None,
        report: ValidationReport | None = None,
    ) -> Outcome:
        """Status first, ledger last: if the status can't be written, the drop is retried."""
        job_id = job.id if job else None
        try:
            self.status.write(
                at.drop,
                at.etag,
                state,
                message,
                dataset_id=at.dataset_id,
                job_id=job_id,
                job_status=job.status.value if job else None,
                errors=errors or [],
                report=report,
                attempts=at.claim.attempts,
            )
        except Exception as exc:
            log.exception("writing the drop status failed", extra=at.log_extra())
            return self._retry(at, f"could not write {at.drop.status_key}: {exc}", write_status=False)
        error = None if state == DropState.STARTED else message
        if not self.ledger.finish(at.claim, state, dataset_id=at.dataset_id, job_id=job_id, error=error):
            log.warning("drop lease lost before the outcome was recorded", extra=at.log_extra())
        log.info(f"drop {state.value}", extra=at.log_extra(job_id=job_id, detail=message))
        return Outcome(state.value, at.drop.key, message, at.dataset_id, job_id)

    def _retry(self, at: _Attempt, reason: str, *, write_status: bool = True) -> Outcome:
        released = self.ledger.release(at.claim, reason)
        if released.state == DropState.FAILED:
            message = f"gave up after {at.claim.attempts} attempts: {reason}"
        else:
            message = f"will retry: {reason}"
        if write_status:
            try:
                self.status.write(
                    at.drop,
                    at.etag,
                    released.state,
                    message,
                    dataset_id=at.dataset_id,
                    attempts=at.claim.attempts,
                    retry_after=released.retry_after,
                )
            except Exception:
                log.exception("writing the drop status failed", extra=at.log_extra())
        log.warning(f"drop {released.state.value}", extra=at.log_extra(reason=reason))
        return Outcome(released.state.value, at.drop.key, message, at.dataset_id)
