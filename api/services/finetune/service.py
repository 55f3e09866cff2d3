"""Fine-tune use-cases: start (preflight → recorded launch → launch), list, get, cancel, events, metrics."""

from __future__ import annotations

import hashlib

from pydantic import TypeAdapter
from sqlalchemy.exc import IntegrityError

from api.backends.base import ComputeBackend
from api.db import models
from api.db.repositories import events
from api.db.repositories import jobs as repo
from api.db.session import Database
from api.domain.datasets import Dataset
from api.domain.enums import JobStatus, TaskType
from api.domain.errors import Conflict
from api.domain.finetune import DryRun, FineTuneJob, FineTuneRequest, JobEvent, MetricPoint
from api.domain.ids import new_id
from api.logging import get_logger
from api.services.datasets.service import DatasetService, split_key
from api.services.finetune import preflight
from api.services.finetune.launch import UNLAUNCHED, Launcher, launch_record
from api.services.tenants import TenantService
from api.services.transitions import transition
from api.settings import Settings

log = get_logger("finetune")
CHANNELS = ("train", "validation", "test")  # the engine computes task metrics on test
REPLAY_WAIT_S = 30.0  # a replay or cancel waits this long for a launch in progress in this process
_EVENTS = TypeAdapter(list[JobEvent])
_METRICS = TypeAdapter(list[MetricPoint])


def engine_task_type(task_type: TaskType) -> str:
    """The engine's ``task_type`` for a dataset's: how its task metrics score the generations."""
    return "classification" if task_type is TaskType.CLASSIFICATION else "generation"


def job_name_for(job_id: str) -> str:
    """Deterministic, unique, SageMaker-safe (<= 63 chars of [a-zA-Z0-9-]): a retried start reuses it."""
    return "fastuner-" + job_id.replace("_", "-")


class FineTuneService:
    def __init__(
        self,
        db: Database,
        datasets: DatasetService,
        backend: ComputeBackend,
        settings: Settings,
        tenants: TenantService,
    ) -> None:
        self.db = db
        self.tenants = tenants
        self.datasets = datasets
        self.backend = backend
        self.settings = settings
        self.launcher = Launcher(db, backend, settings)

    # -- start --------------------------------------------------------------------------------
    def start(
        self, tenant_id: str, req: FineTuneRequest, *, idempotency_key: str | None = None
    ) -> FineTuneJob | DryRun:
        """Preflight, record the launch (``launching``, backend job name), then launch.

        The row is committed before the backend is called, so a crash at any point leaves a row the
        reconciler resolves by the job's name (see :mod:`api.services.finetune.launch`).
        """
        request_hash = hashlib.sha256(req.model_dump_json().encode()).hexdigest()
        if idempotency_key is not None and not req.dry_run:
            existing = self._by_key(tenant_id, idempotency_key)
            if existing is not None:
                return self._replay(existing, request_hash)
        dataset = self.datasets.get(tenant_id, req.dataset_id)
        manifest = self.datasets.manifest(tenant_id, req.dataset_id)
        checked = preflight.run(req, dataset, manifest, self.settings, self.backend)
        checked.hyperparameters.setdefault("task_type", engine_task_type(dataset.task_type))
        if req.dry_run:
            return self._dry_run(tenant_id, checked)
        row = self._new_row(tenant_id, req, dataset, checked, key=idempotency_key, request_hash=request_hash)
        assert row.backend_job_name is not None
        with self.launcher.claim(row.backend_job_name) as claimed:
            assert claimed  # a fresh id: nobody else holds its name
            try:
                self._insert(row, checked)
            except IntegrityError:
                existing = self._by_key(tenant_id, idempotency_key) if idempotency_key else None
                if existing is None:
                    raise
                return self._replay(existing, request_hash)  # a concurrent request with the same key won
            self.launcher.launch(tenant_id, row.id)
        return self.get(tenant_id, row.id)

    def _by_key(self, tenant_id: str, idempotency_key: str) -> models.FineTuneJobRow | None:
        with self.db.session() as session:
            return repo.by_idempotency_key(session, tenant_id, idempotency_key)

    def _dry_run(self, tenant_id: str, checked: preflight.Preflight) -> DryRun:
        with self.db.session() as session:
            self.tenants.check_instance_type(session, tenant_id, checked.instance.name)
        return DryRun(
            backend=self.backend.name,
            hyperparameters=checked.hyperparameters,
            estimate=checked.estimate,
            warnings=checked.warnings,
        )

    def _new_row(
        self,
        tenant_id: str,
        req: FineTuneRequest,
        dataset: Dataset,
        checked: preflight.Preflight,
        *,
        key: str | None,
        request_hash: str,
    ) -> models.FineTuneJobRow:
        """The job's row, ``launching`` under a fresh id and its deterministic backend job name."""
        job_id = new_id("ft")
        channels = {
            c: split_key(tenant_id, dataset.id, c) for c in CHANNELS if dataset.row_counts.get(c, 0) > 0
        }
        return models.FineTuneJobRow(
            id=job_id,
            tenant_id=tenant_id,
            dataset_id=dataset.id,
            base_model=req.base_model,
            method=req.method.value,
            hyperparameters=checked.hyperparameters,
            backend=self.backend.name,
            backend_job_name=job_name_for(job_id),
            instance_type=checked.instance.name,
            instance_count=req.instance_count,
            spot=req.spot,
            status=JobStatus.LAUNCHING.value,
            idempotency_key=key,
            request_hash=request_hash,
            cost_estimate_usd=checked.estimate.estimated_cost_usd,
            estimate=checked.estimate.model_dump(mode="json"),
            backend_state={},
            launch=launch_record(
                channels, max_runtime_seconds=req.max_runtime_seconds, volume_gb=req.volume_gb
            ),
        )

    def _insert(self, row: models.FineTuneJobRow, checked: preflight.Preflight) -> None:
        """Commit the row (quota-checked) and its ``created`` event."""
        with self.db.session() as session:
            self.tenants.admit_job(session, row.tenant_id, checked.instance.name)
            session.add(row)
            events.add(session, row.tenant_id, row.id, "created", "job launching", warnings=checked.warnings)

    def _replay(self, existing: models.FineTuneJobRow, request_hash: str) -> FineTuneJob:
        """The job a start with an Idempotency-Key already used made — never one never launched.

        * Its launch is not recorded yet (``launching``): resolved first, inline (waiting up to
          :data:`REPLAY_WAIT_S` for a launch of it in progress in this process): adopted if the
          backend has the job, launched again if its launcher is gone. If it may still be launching
          elsewhere, :class:`Conflict` (retry shortly) rather than a job that may never run.
        * Its launch failed for a transient cause (throttling, 5xx, connection; nothing was
          created): the same job is launched again under the same name — a retry is what the
          client asks for, and the name still guarantees at most one backend job. A launch that
          failed for a permanent cause (invalid request, missing input) replays the failure.
        * Anything else is returned as it stands.
        """
        if existing.request_hash != request_hash:
            raise Conflict(
                "this Idempotency-Key was used for a different request",
                details={"job_id": existing.id},
            )
        tenant_id, job_id = existing.tenant_id, existing.id
        if not existing.backend_state and existing.status in UNLAUNCHED:
            self.launcher.resolve(tenant_id, job_id, wait_s=REPLAY_WAIT_S)
            job = self.get(tenant_id, job_id)
            with self.db.session() as session:
                launched = bool(repo.require(session, tenant_id, job_id).backend_state)
            if not launched and not job.status.terminal:
                raise Conflict(
                    f"job {job_id} is still launching; retry shortly",
                    details={"job_id": job_id, "status": job.status.value},
                )
            return job
        error = (existing.launch or {}).get("error")
        if existing.status == JobStatus.FAILED.value and isinstance(error, dict) and error.get("transient"):
            assert existing.backend_job_name is not None
            with self.launcher.claim(existing.backend_job_name, REPLAY_WAIT_S) as claimed:
                if claimed and self.launcher.retry_failed(
                    existing,
                    lambda session: self.tenants.admit_job(session, tenant_id, existing.instance_type),
                ):
                    self.launcher.launch(tenant_id, job_id)
        return self.get(tenant_id, job_id)

    # -- read ---------------------------------------------------------------------------------
    def get(self, tenant_id: str, job_id: str) -> FineTuneJob:
        with self.db.session() as session:
            return to_model(repo.require(session, tenant_id, job_id), repo.latest_metric(session, job_id))

    def list_page(
        self, tenant_id: str, *, limit: int = 50, cursor: str | None = None, status: JobStatus | None = None
    ) -> tuple[list[FineTuneJob], str | None]:
        with self.db.session() as session:
            rows, next_cursor = repo.list_page(
                session, tenant_id, limit=limit, cursor=cursor, status=status.value if status else None
            )
            return [to_model(r, repo.latest_metric(session, r.id)) for r in rows], next_cursor

    def events(self, tenant_id: str, job_id: str, after_id: int = 0) -> list[JobEvent]:
        with self.db.session() as session:
            repo.require(session, tenant_id, job_id)
            rows = events.after(session, tenant_id, job_id, after_id)
            return _EVENTS.validate_python(rows, from_attributes=True)

    def metrics(self, tenant_id: str, job_id: str, after_step: int = 0) -> list[MetricPoint]:
        with self.db.session() as session:
            repo.require(session, tenant_id, job_id)
            points = repo.metrics(session, tenant_id, job_id, after_step)
            return _METRICS.validate_python(points, from_attributes=True)

    def logs(self, tenant_id: str, job_id: str, tail: int = 200) -> list[str]:
        job = self.get(tenant_id, job_id)
        with self.db.session() as session:
            state = dict(repo.require(session, tenant_id, job_id).backend_state)
        if not state or job.backend_job_name is None:
            return []
        return self.backend.read_logs(job.backend_job_name, state, tail)

    # -- cancel -------------------------------------------------------------------------------
    def cancel(self, tenant_id: str, job_id: str) -> FineTuneJob:
        """Stop the job: ``cancelling`` until the backend job has stopped, then ``cancelled``.

        A job whose launch is not recorded yet is marked ``cancelling`` first (so no one launches
        it again), then resolved by name: a backend job found is recorded and stopped; if none
        exists and no launch of it can still be in flight, it is ``cancelled`` at once.
        """
        with self.db.session() as session:
            job = repo.require(session, tenant_id, job_id)
            status = JobStatus(job.status)
            if status.terminal:
                raise Conflict(f"job {job_id} is already {status.value}")
            if status == JobStatus.CANCELLING:
                return to_model(job, repo.latest_metric(session, job_id))
            name, state = job.backend_job_name, dict(job.backend_state)
        if state and name:
            self.backend.stop_training(name, state)
        with self.db.session() as session:
            job = repo.require(session, tenant_id, job_id)
            if not JobStatus(job.status).terminal:
                transition(session, job, JobStatus.CANCELLING, data={"by": "user"})
        if not state:
            self.launcher.resolve(tenant_id, job_id, wait_s=REPLAY_WAIT_S)
        return self.get(tenant_id, job_id)


def to_model(row: models.FineTuneJobRow, latest: models.MetricRow | None) -> FineTuneJob:
    """The job as the API shows it, with its newest metric record (if any)."""
    job = FineTuneJob.model_validate(row, from_attributes=True)
    return job.model_copy(
        update={"latest_metrics": {"step": float(latest.step), **latest.values} if latest else None}
    )
