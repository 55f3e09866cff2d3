"""The reconciler: brings every non-terminal job in line with its backend.

A job whose launch is not recorded yet (``launching``, crashed mid-launch) is first resolved by its
backend job name (:meth:`Launcher.resolve <api.services.finetune.launch.Launcher.resolve>`:
adopted, relaunched, cancelled or failed). For each launched job it describes the backend job,
records transitions (compare-and-set on the row, so several reconcilers may run at once), ingests
new metrics and, when training has completed, registers the adapter before the job is marked
completed. Safe to run at any time, any number of times.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from api.backends.base import ComputeBackend, TrainingStatus
from api.db import models
from api.db.repositories import events
from api.db.repositories import jobs as repo
from api.db.repositories.cas import compare_and_set
from api.db.session import Database
from api.domain.enums import JobStatus
from api.domain.metrics import (
    UNREACHABLE_EVENT_KIND,
    parse_metric_records,
    unreachable_flag,
    unreachable_message,
    unreachable_onsets,
)
from api.logging import get_logger, job_id_var
from api.services.finetune.launch import Launcher
from api.services.transitions import reason_of, transition
from api.settings import Settings
from api.storage.base import ObjectStore, upload_dir

log = get_logger("reconciler")
# How long after a backend reports completion a model that cannot be fetched or is unusable (no
# archive, no adapter_config.json, an unsafe or corrupt archive) is retried before the job fails.
REGISTER_GRACE = timedelta(minutes=15)


@dataclass
class ReconcileReport:
    checked: int = 0
    transitions: list[str] = field(default_factory=list)
    metrics_ingested: int = 0
    adapters_registered: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def adapter_id_for(job_id: str) -> str:
    """One adapter per job, with an id derived from it: concurrent reconcilers agree on it."""
    return "adp_" + job_id.split("_", 1)[1]


def adapter_prefix(tenant_id: str, adapter_id: str) -> str:
    return f"{tenant_id}/adapters/{adapter_id}"


class Reconciler:
    def __init__(self, db: Database, store: ObjectStore, backend: ComputeBackend, settings: Settings) -> None:
        self.db = db
        self.store = store
        self.backend = backend
        self.settings = settings
        self.launcher = Launcher(db, backend, settings)

    def run_once(self, tenant_id: str | None = None) -> ReconcileReport:
        """Sync every non-terminal job (or only ``tenant_id``'s) with its backend."""
        report = ReconcileReport()
        with self.db.session() as session:
            targets = repo.active_ids(session, tenant_id)
        for tenant_id, job_id in targets:
            token = job_id_var.set(job_id)
            try:
                self._reconcile(tenant_id, job_id, report)
            except Exception as exc:  # one broken job must not stop the others
                log.exception("reconcile failed")
                report.errors.append(f"{job_id}: {type(exc).__name__}: {exc}")
            finally:
                job_id_var.reset(token)
            report.checked += 1
        return report

    def _reconcile(self, tenant_id: str, job_id: str, report: ReconcileReport) -> None:
        with self.db.session() as session:
            job = repo.get(session, tenant_id, job_id)
            if job is None or JobStatus(job.status).terminal:
                return
            name, state = job.backend_job_name, dict(job.backend_state)
        if not state:  # the launch is not recorded: adopt, relaunch, cancel or fail it by name
            outcome = self.launcher.resolve(tenant_id, job_id)
            if outcome is not None:
                report.transitions.append(f"{job_id}: launch {outcome}")
            with self.db.session() as session:
                job = repo.get(session, tenant_id, job_id)
                if job is None or JobStatus(job.status).terminal or not job.backend_state:
                    return
                name, state = job.backend_job_name, dict(job.backend_state)
        if name is None:
            return
        with self.db.session() as session:
            after = repo.last_metric_step(session, job_id)
        observed = self.backend.describe_training(name, state)
        report.metrics_ingested += self._ingest(
            tenant_id, job_id, self.backend.read_metrics(name, state, after)
        )
        if observed.status == JobStatus.COMPLETED:
            self._complete(tenant_id, job_id, name, state, observed, report)
            return
        with self.db.session() as session:
            job = repo.get(session, tenant_id, job_id)
            if job is None:
                return
            self._apply(session, job, observed, report)

    def _apply(
        self, session: Any, job: models.FineTuneJobRow, observed: TrainingStatus, report: ReconcileReport
    ) -> None:
        current = JobStatus(job.status)
        target = observed.status
        if current == JobStatus.CANCELLING and not target.terminal:
            target = JobStatus.CANCELLING  # the stop was asked for; wait for the backend to finish
        values: dict[str, Any] = {}
        if observed.secondary_status != job.secondary_status:
            values["secondary_status"] = observed.secondary_status
        if observed.started_at and job.started_at is None:
            values["started_at"] = observed.started_at
        if target == current:
            if values:
                compare_and_set(session, job, **values)
            return
        if target.terminal:
            values["ended_at"] = observed.ended_at or datetime.now(UTC)
            values["billable_seconds"] = observed.billable_seconds
            if target == JobStatus.FAILED:
                values["failure_reason"] = observed.failure_reason or "the backend reported a failure"
        data = {"secondary": observed.secondary_status, "reason": observed.failure_reason}
        change = transition(session, job, target, data=data, **values)
        if change is not None:
            report.transitions.append(f"{job.id}: {change}")

    def _ingest(self, tenant_id: str, job_id: str, records: list[dict[str, float]]) -> int:
        """Store the records of steps not stored yet, and an event where the SCU target turns unreachable.

        The event is written in the same transaction as the rows, and an episode is judged against
        the newest stored row, so re-reading the same records (or a racing reconciler) adds none.
        """
        if not records:
            return 0
        try:
            with self.db.session() as session:
                latest = repo.latest_metric(session, job_id)
                last = latest.step if latest is not None else 0
                fresh = {int(r["step"]): r for r in records if int(r["step"]) > last}
                for step, rec in sorted(fresh.items()):
                    values = {k: v for k, v in rec.items() if k != "step"}
                    session.add(
                        models.MetricRow(tenant_id=tenant_id, job_id=job_id, step=step, values=values)
                    )
                previous = unreachable_flag(latest.values if latest is not None else None)
                for onset in unreachable_onsets([fresh[k] for k in sorted(fresh)], previous):
                    self._unreachable_event(session, tenant_id, job_id, onset)
                return len(fresh)
        except IntegrityError:  # another reconciler ingested the same steps first
            return 0

    @staticmethod
    def _unreachable_event(session: Any, tenant_id: str, job_id: str, rec: Mapping[str, float]) -> None:
        step = int(rec["step"])
        message = unreachable_message(rec, since_step=step)
        keys = ("target_s", "band", "s", "s_hat", "lambda")
        data: dict[str, Any] = {"step": step, "unreachable": unreachable_flag(rec)}
        data.update((k, rec[k]) for k in keys if math.isfinite(rec.get(k, math.nan)))  # JSONB has no NaN
        events.add(session, tenant_id, job_id, UNREACHABLE_EVENT_KIND, message, **data)
        log.warning("SCU target unreachable", extra={"step": step, "unreachable": unreachable_flag(rec)})

    def _complete(
        self,
        tenant_id: str,
        job_id: str,
        name: str,
        state: dict[str, Any],
        observed: TrainingStatus,
        report: ReconcileReport,
    ) -> None:
        """Store the job's model as its adapter, register it, then mark the job completed."""
        adapter_id = adapter_id_for(job_id)
        prefix = adapter_prefix(tenant_id, adapter_id)
        work = Path(tempfile.mkdtemp(prefix=f"{job_id}-", dir=_mkdir(self.settings.work_dir)))
        try:
            try:
                model = _fetch_model(self.backend, name, state, work)
            except Exception as exc:
                # Retried on every pass for a while (an upload may lag); then the job fails
                # rather than staying "running" forever.
                ended = observed.ended_at
                if ended is None or datetime.now(UTC) - ended <= REGISTER_GRACE:
                    raise
                self._fail_registration(tenant_id, job_id, observed, reason_of(exc), report)
                return
            self._upload(work, prefix)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        report.metrics_ingested += self._ingest(tenant_id, job_id, model.metrics)
        if not self._register(tenant_id, job_id, adapter_id, observed, model):
            return
        report.adapters_registered.append(adapter_id)
        report.transitions.append(f"{job_id}: → completed")
        # The adapter is safe; the job's checkpoints (spot resumption) are not needed any more.
        try:
            self.store.delete_prefix(f"{tenant_id}/jobs/{job_id}/checkpoints/")
        except Exception:
            log.warning("could not delete the checkpoints of a completed job", exc_info=True)
        log.info("adapter registered", extra={"adapter_id": adapter_id})

    def _upload(self, work: Path, prefix: str) -> None:
        try:
            upload_dir(self.store, work, prefix)
        except Exception:
            self.store.delete_prefix(prefix + "/")
            raise

    def _register(
        self, tenant_id: str, job_id: str, adapter_id: str, observed: TrainingStatus, model: _Model
    ) -> bool:
        """Add the adapter row and complete the job in one transaction; False if another did."""
        try:
            with self.db.session() as session:
                job = repo.get(session, tenant_id, job_id)
                if job is None or JobStatus(job.status).terminal:
                    return False
                session.add(self._adapter_row(session, job, adapter_id, model))
                values = dict(_ended(job, observed), adapter_id=adapter_id)
                if not transition(
                    session, job, JobStatus.COMPLETED, data={"adapter_id": adapter_id}, **values
                ):
                    raise IntegrityError("job changed concurrently", None, ValueError())
                message = f"adapter {adapter_id} registered"
                events.add(session, tenant_id, job_id, "adapter", message, **model.eval_metrics)
                return True
        except IntegrityError:
            log.info("adapter already registered by another reconciler")
            return False

    def _adapter_row(
        self, session: Any, job: models.FineTuneJobRow, adapter_id: str, model: _Model
    ) -> models.AdapterRow:
        dataset = session.get(models.DatasetRow, job.dataset_id)
        return models.AdapterRow(
            id=adapter_id,
            tenant_id=job.tenant_id,
            job_id=job.id,
            dataset_id=job.dataset_id,
            dataset_sha256=dataset.content_sha256 if dataset else "",
            base_model=job.base_model,
            uri=self.store.uri(adapter_prefix(job.tenant_id, adapter_id)),
            eval_metrics=model.eval_metrics,
            config=model.config,
        )

    def _fail_registration(
        self, tenant_id: str, job_id: str, observed: TrainingStatus, reason: str, report: ReconcileReport
    ) -> None:
        reason = f"training completed but its model could not be registered: {reason}"
        with self.db.session() as session:
            job = repo.get(session, tenant_id, job_id)
            if job is None or JobStatus(job.status).terminal:
                return
            data = {"secondary": observed.secondary_status, "reason": reason}
            change = transition(
                session, job, JobStatus.FAILED, data=data, failure_reason=reason, **_ended(job, observed)
            )
            if change is not None:
                report.transitions.append(f"{job_id}: {change}")
                log.warning("model not registrable; job failed", extra={"reason": reason})


@dataclass(frozen=True)
class _Model:
    """What a completed job's output holds besides the adapter's weights."""

    eval_metrics: dict[str, Any]
    config: dict[str, Any]
    metrics: list[dict[str, float]]  # metrics.jsonl: the records the last reads may have missed


def _fetch_model(backend: ComputeBackend, name: str, state: dict[str, Any], work: Path) -> _Model:
    backend.fetch_model(name, state, work)
    if not (work / "adapter_config.json").is_file():
        raise ValueError("the job's output holds no adapter_config.json")
    return _Model(
        eval_metrics=_read_json(work / "eval.json"),
        config=_read_json(work / "fastuner_config.json"),
        metrics=_read_jsonl(work / "metrics.jsonl"),
    )


def _ended(job: models.FineTuneJobRow, observed: TrainingStatus) -> dict[str, Any]:
    """The columns a job's end takes from the backend's last description of it."""
    return {
        "secondary_status": observed.secondary_status,
        "ended_at": observed.ended_at or datetime.now(UTC),
        "billable_seconds": observed.billable_seconds,
        "started_at": job.started_at or observed.started_at,
    }


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def _read_jsonl(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", errors="replace") as fh:
        return parse_metric_records(fh)
