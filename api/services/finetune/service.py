"""Fine-tune use-cases: start (preflight → row → launch), list, get, cancel, events, metrics."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy.exc import IntegrityError

from api.backends.base import ComputeBackend, TrainingSpec
from api.db import models
from api.db.repositories import jobs as repo
from api.db.session import Database
from api.domain.enums import JobStatus, TuneMethod
from api.domain.errors import BackendError, Conflict, FastunerError, NotFound
from api.domain.finetune import CostEstimate, DryRun, FineTuneJob, FineTuneRequest, JobEvent, MetricPoint
from api.domain.ids import new_id
from api.logging import get_logger
from api.services.datasets.service import DatasetService, split_key
from api.services.finetune import preflight
from api.services.tenants import TenantService
from api.settings import Settings

log = get_logger("finetune")
CHANNELS = ("train", "validation")


def job_name_for(job_id: str) -> str:
    """Deterministic, unique, SageMaker-safe (<= 63 chars of [a-zA-Z0-9-]): a retried start reuses it."""
    return "fastuner-" + job_id.replace("_", "-")


def job_prefix(tenant_id: str, job_id: str) -> str:
    return f"{tenant_id}/jobs/{job_id}"


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

    # -- start --------------------------------------------------------------------------------
    def start(
        self, tenant_id: str, req: FineTuneRequest, *, idempotency_key: str | None = None
    ) -> FineTuneJob | DryRun:
        request_hash = hashlib.sha256(req.model_dump_json().encode()).hexdigest()
        if idempotency_key is not None and not req.dry_run:
            with self.db.session() as session:
                existing = repo.by_idempotency_key(session, tenant_id, idempotency_key)
                if existing is not None:
                    return self._replay(session, existing, request_hash)
        dataset = self.datasets.get(tenant_id, req.dataset_id)
        manifest = self.datasets.manifest(tenant_id, req.dataset_id)
        checked = preflight.run(req, dataset, manifest, self.settings)
        if req.dry_run:
            with self.db.session() as session:
                self.tenants.check_instance_type(session, tenant_id, checked.instance.name)
            return DryRun(
                backend=self.backend.name,
                hyperparameters=checked.hyperparameters,
                estimate=checked.estimate,
                warnings=checked.warnings,
            )
        job_id = new_id("ft")
        row = models.FineTuneJobRow(
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
            status=JobStatus.QUEUED.value,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            cost_estimate_usd=checked.estimate.estimated_cost_usd,
            estimate=checked.estimate.model_dump(mode="json"),
            backend_state={},
        )
        try:
            with self.db.session() as session:
                self.tenants.admit_job(session, tenant_id, checked.instance.name)
                session.add(row)
                repo.add_event(session, tenant_id, job_id, "created", "job queued", warnings=checked.warnings)
        except IntegrityError:
            if idempotency_key is None:
                raise
            with self.db.session() as session:  # a concurrent request with the same key won
                existing = repo.by_idempotency_key(session, tenant_id, idempotency_key)
                if existing is None:
                    raise
                return self._replay(session, existing, request_hash)
        self._launch(row, req)
        return self.get(tenant_id, job_id)

    def _replay(self, session: Any, existing: models.FineTuneJobRow, request_hash: str) -> FineTuneJob:
        if existing.request_hash != request_hash:
            raise Conflict(
                "this Idempotency-Key was used for a different request",
                details={"job_id": existing.id},
            )
        return self._to_model(session, existing)

    def _launch(self, row: models.FineTuneJobRow, req: FineTuneRequest) -> None:
        assert row.backend_job_name is not None
        counts = self.datasets.get(row.tenant_id, row.dataset_id).row_counts
        spec = TrainingSpec(
            job_id=row.id,
            tenant_id=row.tenant_id,
            job_name=row.backend_job_name,
            hyperparameters=row.hyperparameters,
            channels={
                c: split_key(row.tenant_id, row.dataset_id, c) for c in CHANNELS if counts.get(c, 0) > 0
            },
            output_prefix=f"{job_prefix(row.tenant_id, row.id)}/output",
            checkpoint_prefix=f"{job_prefix(row.tenant_id, row.id)}/checkpoints",
            instance_type=row.instance_type,
            instance_count=row.instance_count,
            spot=row.spot,
            max_runtime_seconds=req.max_runtime_seconds,
            max_wait_seconds=2 * req.max_runtime_seconds if req.spot else None,
            volume_gb=req.volume_gb,
            tags={"fastuner:tenant": row.tenant_id, "fastuner:job": row.id, "fastuner:managed": "true"},
        )
        try:
            state = self.backend.start_training(spec)
        except Exception as exc:
            reason = exc.message if isinstance(exc, FastunerError) else f"{type(exc).__name__}: {exc}"
            log.error("launch failed", extra={"job_id": row.id, "error": reason})
            with self.db.session() as session:
                job = repo.get(session, row.tenant_id, row.id)
                assert job is not None
                repo.compare_and_set(
                    session, job, status=JobStatus.FAILED.value, failure_reason=f"launch failed: {reason}"
                )
                repo.add_event(session, row.tenant_id, row.id, "status", "queued → failed", reason=reason)
            raise BackendError(f"could not launch job {row.id}: {reason}") from exc
        with self.db.session() as session:
            job = repo.get(session, row.tenant_id, row.id)
            assert job is not None
            if job.status == JobStatus.QUEUED.value:
                repo.compare_and_set(session, job, status=JobStatus.PROVISIONING.value, backend_state=state)
                repo.add_event(session, row.tenant_id, row.id, "status", "queued → provisioning")
        log.info("job launched", extra={"job_id": row.id, "backend": self.backend.name})

    # -- read ---------------------------------------------------------------------------------
    def get(self, tenant_id: str, job_id: str) -> FineTuneJob:
        with self.db.session() as session:
            return self._to_model(session, self._row(session, tenant_id, job_id))

    def list_page(
        self, tenant_id: str, *, limit: int = 50, cursor: str | None = None, status: JobStatus | None = None
    ) -> tuple[list[FineTuneJob], str | None]:
        with self.db.session() as session:
            rows, next_cursor = repo.list_page(
                session, tenant_id, limit=limit, cursor=cursor, status=status.value if status else None
            )
            return [self._to_model(session, r) for r in rows], next_cursor

    def events(self, tenant_id: str, job_id: str, after_id: int = 0) -> list[JobEvent]:
        with self.db.session() as session:
            self._row(session, tenant_id, job_id)
            return [
                JobEvent(id=e.id, kind=e.kind, message=e.message, data=e.data, at=e.at)
                for e in repo.events(session, tenant_id, job_id, after_id)
            ]

    def metrics(self, tenant_id: str, job_id: str, after_step: int = 0) -> list[MetricPoint]:
        with self.db.session() as session:
            self._row(session, tenant_id, job_id)
            return [
                MetricPoint(step=m.step, values=m.values)
                for m in repo.metrics(session, tenant_id, job_id, after_step)
            ]

    def logs(self, tenant_id: str, job_id: str, tail: int = 200) -> list[str]:
        job = self.get(tenant_id, job_id)
        with self.db.session() as session:
            state = dict(self._row(session, tenant_id, job_id).backend_state)
        if not state or job.backend_job_name is None:
            return []
        return self.backend.read_logs(job.backend_job_name, state, tail)

    # -- cancel -------------------------------------------------------------------------------
    def cancel(self, tenant_id: str, job_id: str) -> FineTuneJob:
        with self.db.session() as session:
            job = self._row(session, tenant_id, job_id)
            status = JobStatus(job.status)
            if status.terminal:
                raise Conflict(f"job {job_id} is already {status.value}")
            if status == JobStatus.CANCELLING:
                return self._to_model(session, job)
            name, state = job.backend_job_name, dict(job.backend_state)
        if state and name:
            self.backend.stop_training(name, state)
        with self.db.session() as session:
            job = self._row(session, tenant_id, job_id)
            before = job.status
            # A job not launched yet is simply cancelled; a running one ends via the reconciler.
            target = JobStatus.CANCELLED if not state else JobStatus.CANCELLING
            if not JobStatus(before).terminal and repo.compare_and_set(session, job, status=target.value):
                repo.add_event(session, tenant_id, job_id, "status", f"{before} → {target.value}", by="user")
            return self._to_model(session, job)

    # -- helpers ------------------------------------------------------------------------------
    def _row(self, session: Any, tenant_id: str, job_id: str) -> models.FineTuneJobRow:
        row = repo.get(session, tenant_id, job_id)
        if row is None:
            raise NotFound(f"fine-tune job {job_id} not found")
        return row

    def _to_model(self, session: Any, row: models.FineTuneJobRow) -> FineTuneJob:
        latest = repo.latest_metric(session, row.id)
        return FineTuneJob(
            id=row.id,
            dataset_id=row.dataset_id,
            base_model=row.base_model,
            method=TuneMethod(row.method),
            hyperparameters=row.hyperparameters,
            backend=row.backend,
            backend_job_name=row.backend_job_name,
            instance_type=row.instance_type,
            instance_count=row.instance_count,
            spot=row.spot,
            status=JobStatus(row.status),
            secondary_status=row.secondary_status,
            failure_reason=row.failure_reason,
            estimate=CostEstimate.model_validate(row.estimate) if row.estimate else None,
            billable_seconds=row.billable_seconds,
            cost_estimate_usd=row.cost_estimate_usd,
            adapter_id=row.adapter_id,
            latest_metrics={"step": float(latest.step), **latest.values} if latest else None,
            created_at=row.created_at,
            started_at=row.started_at,
            ended_at=row.ended_at,
        )
