"""The OpenAI-compatible view of Fastuner: files are datasets, fine-tuning jobs are jobs, fine-tuned
models are adapters. Maps requests onto the dataset and fine-tune services and our objects onto
OpenAI's shapes (api/domain/openai.py); tenancy is the services' (another tenant's id: 404).
"""

from __future__ import annotations

import contextlib
import math
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from scu.config import TrainConfig
from scu.defaults import learning_rate as default_learning_rate

from api.db.repositories import events as events_repo
from api.db.repositories import jobs as jobs_repo
from api.db.repositories.paging import encode_cursor
from api.domain.datasets import Dataset, DatasetOptions, ValidationReport
from api.domain.enums import JobStatus
from api.domain.errors import NotFound, ValidationFailed
from api.domain.finetune import Adapter, FineTuneJob, FineTuneRequest
from api.domain.ids import has_prefix
from api.domain.openai import (
    EXTENSION_KEY,
    CheckpointMetrics,
    File,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCreate,
    FineTuningJobEvent,
    InvalidParam,
    JobError,
    Model,
    OpenAIJobStatus,
)
from api.services import openai_events
from api.services.finetune import preflight
from api.services.finetune.estimate import model_facts
from api.services.openai_events import RECORD_KIND, nats, unix
from api.services.openai_models import base_models

if TYPE_CHECKING:
    from api.context import AppContext

ENGINE_SEED = int(TrainConfig.model_fields["seed"].default)

STATUS: dict[JobStatus, OpenAIJobStatus] = {
    JobStatus.QUEUED: "queued",
    JobStatus.LAUNCHING: "queued",
    JobStatus.PROVISIONING: "running",
    JobStatus.RUNNING: "running",
    JobStatus.CANCELLING: "cancelled",
    JobStatus.COMPLETED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}
# Fields of POST /v0/finetune that the request itself sets (not options under `fastuner`).
RESERVED_OPTIONS = {"dataset_id", "base_model", "dry_run"}


# -- files ----------------------------------------------------------------------------------------
def safe_filename(name: str | None) -> str:
    """The uploaded file's name as a dataset name (no slashes or control characters, ≤ 128)."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c if c.isprintable() else "_" for c in base).strip()
    return cleaned[:128] or "upload.jsonl"


def to_file(ds: Dataset) -> File:
    return File(id=ds.id, bytes=ds.source_bytes, created_at=unix(ds.created_at) or 0, filename=ds.name)


def report_message(report: ValidationReport) -> str:
    """One line a person can act on: every error class with its line numbers."""
    parts = []
    for group in report.errors:
        where = ""
        if group.lines:
            more = "" if group.count <= len(group.lines) else f" (and {group.count - len(group.lines)} more)"
            noun = "line" if len(group.lines) == 1 else "lines"
            where = f" at {noun} {', '.join(str(n) for n in group.lines)}{more}"
        parts.append(f"{group.code}{where}: {group.message}")
    return "the training file failed validation: " + ("; ".join(parts) or "no usable rows")


# -- jobs -----------------------------------------------------------------------------------------
class OpenAICompat:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    # files
    def create_file(self, tenant: str, path: Path, options: DatasetOptions, filename: str | None) -> File:
        try:
            ds = self.ctx.datasets.create(tenant, path, options, filename=filename)
        except ValidationFailed as exc:
            message = exc.message
            if isinstance(exc.details, dict):
                with contextlib.suppress(ValidationError):
                    message = report_message(ValidationReport.model_validate(exc.details))
            raise InvalidParam(message, param="file", code="invalid_file") from exc
        return to_file(ds)

    def file(self, tenant: str, file_id: str) -> File:
        return to_file(self._dataset(tenant, file_id))

    def files(self, tenant: str, *, after: str | None, limit: int) -> tuple[list[File], bool]:
        cursor = None
        if after:
            ds = self._dataset(tenant, after, param="after")
            cursor = encode_cursor(ds.created_at, ds.id)
        items, more = self.ctx.datasets.list_page(tenant, limit=limit, cursor=cursor)
        return [to_file(d) for d in items], more is not None

    def _dataset(self, tenant: str, file_id: str, param: str | None = None) -> Dataset:
        try:
            ds = self.ctx.datasets.get(tenant, file_id)
        except NotFound:
            raise self._no_file(file_id, param) from None
        if ds.status.value != "ready":
            raise self._no_file(file_id, param)
        return ds

    @staticmethod
    def _no_file(file_id: str, param: str | None) -> NotFound:
        return NotFound(f"No such file: {file_id}", details={"param": param} if param else None)

    # fine-tuning jobs: create
    def job_request(self, body: FineTuningJobCreate) -> FineTuneRequest:
        """The /v0 request an OpenAI job creation means (see FineTuningJobCreate)."""
        if body.validation_file is not None:
            raise InvalidParam(
                "validation_file is not supported: Fastuner splits the training file into train, "
                "validation and test at upload (files.create with extra_body={'split': '0.9,0.1'}) and "
                "evaluates on its validation split; leave validation_file unset",
                param="validation_file",
            )
        if body.integrations:
            raise InvalidParam("integrations are not supported", param="integrations")
        hp = body.effective_hyperparameters()
        options = dict(body.fastuner or {})
        reserved = sorted(RESERVED_OPTIONS & options.keys())
        if reserved:
            raise InvalidParam(
                f"{EXTENSION_KEY}.{reserved[0]} cannot be set here (training_file and model say it)",
                param=f"{EXTENSION_KEY}.{reserved[0]}",
            )
        engine: dict[str, Any] = {}
        if body.seed is not None:
            engine["seed"] = body.seed
        if hp.batch_size != "auto":
            engine["batch_size"] = hp.batch_size
            engine["grad_accum"] = 1
        extra = options.get("hyperparameters")
        if extra is not None and not isinstance(extra, dict):
            raise InvalidParam("must be an object", param=f"{EXTENSION_KEY}.hyperparameters")
        raw: dict[str, Any] = {
            "dataset_id": body.training_file,
            "base_model": body.model,
            **options,
            "hyperparameters": {**engine, **(extra or {})},
        }
        if hp.n_epochs != "auto" and "epochs" not in options:
            raw["epochs"] = hp.n_epochs
        if hp.learning_rate_multiplier != "auto" and "learning_rate" not in options:
            raw["learning_rate"] = self._learning_rate(body.model, hp.learning_rate_multiplier)
        try:
            return FineTuneRequest.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = [str(p) for p in err["loc"]]
            if loc and loc[0] == "learning_rate" and "learning_rate" not in options:
                param = "hyperparameters.learning_rate_multiplier"
            elif loc and loc[0] == "epochs" and "epochs" not in options:
                param = "hyperparameters.n_epochs"
            elif loc and loc[0] in ("dataset_id", "base_model"):
                param = "training_file" if loc[0] == "dataset_id" else "model"
            else:
                param = ".".join([EXTENSION_KEY, *loc]) if loc else EXTENSION_KEY
            raise InvalidParam(f"{param}: {err['msg']}", param=param) from exc

    def _learning_rate(self, model: str, multiplier: float) -> float:
        local_dir = preflight.check_model_allowed(model, self.ctx.settings)
        facts = model_facts(model, local_dir)
        if facts is None:
            raise InvalidParam(
                f"the size of {model} is unknown, so its default learning rate is too; give "
                f"{EXTENSION_KEY}.learning_rate instead of learning_rate_multiplier",
                param="hyperparameters.learning_rate_multiplier",
            )
        return multiplier * default_learning_rate(facts.n_params)

    def record(self, tenant: str, job_id: str, body: FineTuningJobCreate) -> None:
        """Keep what only the OpenAI request says (suffix, metadata, hyperparameters as given) in
        one job event, once (a replayed Idempotency-Key finds it there)."""
        if self._record(tenant, job_id) is not None:
            return
        message = "created through the OpenAI-compatible API"
        data = {"suffix": body.suffix, "metadata": body.metadata}
        hp = body.effective_hyperparameters().model_dump()
        with self.ctx.db.session() as session:
            events_repo.add(session, tenant, job_id, RECORD_KIND, message, **data, hyperparameters=hp)

    def _record(self, tenant: str, job_id: str) -> dict[str, Any] | None:
        with self.ctx.db.session() as session:
            for event in events_repo.after(session, tenant, job_id):
                if event.kind == RECORD_KIND:
                    return dict(event.data)
        return None

    # fine-tuning jobs: read
    def jobs(self, tenant: str, *, after: str | None, limit: int) -> tuple[list[FineTuningJob], bool]:
        cursor = None
        if after:
            try:
                prev = self.ctx.finetune.get(tenant, after)
            except NotFound:
                raise NotFound(f"No such fine-tuning job: {after}", details={"param": "after"}) from None
            cursor = encode_cursor(prev.created_at, prev.id)
        items, more = self.ctx.finetune.list_page(tenant, limit=limit, cursor=cursor)
        return [self.to_job(tenant, j) for j in items], more is not None

    def job(self, tenant: str, job_id: str) -> FineTuningJob:
        return self.to_job(tenant, self.ctx.finetune.get(tenant, job_id))

    def to_job(self, tenant: str, job: FineTuneJob) -> FineTuningJob:
        record = self._record(tenant, job.id) or {}
        adapter = self._adapter(tenant, job.adapter_id)
        config = adapter.config if adapter else {}
        hp: dict[str, Any] = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
        hp.update(record.get("hyperparameters") or {})
        if hp["n_epochs"] == "auto" and "epochs" in job.hyperparameters:
            hp["n_epochs"] = _number(job.hyperparameters["epochs"])
        if config:  # what the engine resolved "auto" to
            if hp["n_epochs"] == "auto" and isinstance(config.get("epochs"), int | float):
                hp["n_epochs"] = config["epochs"]
            if hp["batch_size"] == "auto" and isinstance(config.get("batch_size"), int):
                hp["batch_size"] = config["batch_size"] * int(config.get("grad_accum") or 1)
        seed = _number(job.hyperparameters.get("seed", config.get("seed", ENGINE_SEED)))
        status = STATUS[job.status]
        error = None
        if job.status == JobStatus.FAILED:
            error = JobError(code="job_failed", message=job.failure_reason or "the job failed")
        return FineTuningJob(
            id=job.id,
            created_at=unix(job.created_at) or 0,
            finished_at=unix(job.ended_at) if job.status.terminal else None,
            model=job.base_model,
            fine_tuned_model=job.adapter_id,
            organization_id=tenant,
            status=status,
            hyperparameters=hp,
            training_file=job.dataset_id,
            trained_tokens=_trained_tokens(config, job.latest_metrics) if adapter else None,
            error=error,
            seed=int(seed) if isinstance(seed, int | float) else ENGINE_SEED,
            estimated_finish=self._estimated_finish(tenant, job) if status == "running" else None,
            metadata=record.get("metadata"),
            user_provided_suffix=record.get("suffix"),
            method={"type": "supervised", "supervised": {"hyperparameters": hp}},
            fastuner={
                "status": job.status.value,
                "method": job.method.value,
                "adapter_id": job.adapter_id,
                "backend": job.backend,
                "instance_type": job.instance_type,
                "failure_reason": job.failure_reason,
                "latest_metrics": job.latest_metrics,
                "billable_seconds": job.billable_seconds,
                "cost_estimate_usd": job.cost_estimate_usd,
                "eval_metrics": adapter.eval_metrics if adapter else None,
            },
        )

    def _adapter(self, tenant: str, adapter_id: str | None) -> Adapter | None:
        if adapter_id is None:
            return None
        try:
            return self.ctx.adapters.get(tenant, adapter_id)
        except NotFound:
            return None

    def _estimated_finish(self, tenant: str, job: FineTuneJob) -> int | None:
        with self.ctx.db.session() as session:
            latest = jobs_repo.latest_metric(session, job.id)
            if latest is None or latest.tenant_id != tenant:
                return None
            eta = latest.values.get("eta_s")
            at = latest.at
        if not isinstance(eta, int | float) or not math.isfinite(eta) or eta < 0:
            return None
        return unix(at + timedelta(seconds=float(eta)))

    def events(
        self, tenant: str, job_id: str, *, after: str | None, limit: int
    ) -> tuple[list[FineTuningJobEvent], bool]:
        """Our job events and one ``metrics`` event per logged step, newest first."""
        self.ctx.finetune.get(tenant, job_id)  # 404 for another tenant's job
        with self.ctx.db.session() as session:
            items = openai_events.job_events(session, tenant, job_id)
        return openai_events.page(items, job_id, after=after, limit=limit)

    def checkpoints(self, tenant: str, job_id: str) -> list[FineTuningJobCheckpoint]:
        """The registered adapter is the job's checkpoint: the model chat/completions can use."""
        job = self.ctx.finetune.get(tenant, job_id)
        adapter = self._adapter(tenant, job.adapter_id)
        if adapter is None:
            return []
        latest = job.latest_metrics or {}
        step = int(latest.get("step") or adapter.eval_metrics.get("steps") or 0)
        valid = nats((adapter.eval_metrics.get("adapter") or {}).get("bpt"))
        metrics = CheckpointMetrics(
            step=float(step),
            train_loss=nats(latest.get("data_bpt")),
            valid_loss=valid,
            full_valid_loss=valid,
        )
        return [
            FineTuningJobCheckpoint(
                id=f"ftckpt-{adapter.id}",
                created_at=unix(adapter.created_at) or 0,
                fine_tuned_model_checkpoint=adapter.id,
                fine_tuning_job_id=job.id,
                metrics=metrics,
                step_number=step,
            )
        ]

    # models
    def models(self, tenant: str) -> list[Model]:
        return self.base_models() + self.adapter_models(tenant)

    def model(self, tenant: str, model_id: str) -> Model:
        if has_prefix(model_id, "adp"):
            try:
                adapter = self.ctx.adapters.get(tenant, model_id)
            except NotFound:
                raise NotFound(f"The model '{model_id}' does not exist", details={"param": "model"}) from None
            return Model(id=adapter.id, created=unix(adapter.created_at) or 0, owned_by=tenant)
        for model in self.base_models():
            if model.id == model_id:
                return model
        raise NotFound(f"The model '{model_id}' does not exist", details={"param": "model"})

    def adapter_models(self, tenant: str) -> list[Model]:
        out: list[Model] = []
        cursor: str | None = None
        while True:
            items, cursor = self.ctx.adapters.list_page(tenant, limit=200, cursor=cursor)
            out += [Model(id=a.id, created=unix(a.created_at) or 0, owned_by=tenant) for a in items]
            if cursor is None:
                return out

    def base_models(self) -> list[Model]:
        return base_models(self.ctx.settings, self.ctx.backend)


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() else number
    return value


def _trained_tokens(config: dict[str, Any], latest: dict[str, float] | None) -> int | None:
    tokens = ((config.get("data") or {}).get("train") or {}).get("tokens")
    if not isinstance(tokens, int | float):
        return None
    epochs = (latest or {}).get("epoch") or config.get("epochs")
    return round(tokens * float(epochs)) if isinstance(epochs, int | float) else None
