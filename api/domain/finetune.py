"""Fine-tune jobs and adapters: requests, API views, events, metrics, estimates."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.domain.enums import JobStatus, TuneMethod
from api.domain.errors import BadRequest
from api.domain.text import RequestBody, has_control_char

HyperValue = str | int | float | bool
MAX_HYPERPARAMETER_TEXT = 4096


def is_finite_value(value: HyperValue) -> bool:
    """False for a float (or a string spelling one: ``"inf"``, ``"NaN"``, ``"1e309"``) that is not finite."""
    if isinstance(value, bool):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        text = value.strip().strip('"')
        try:
            number = float(text)
        except ValueError:
            return True
        return math.isfinite(number)
    return True


MAX_STEPS = 1_000_000
MAX_HYPERPARAMETERS = 100


class InvalidHyperparameters(BadRequest):
    """Hyperparameters the engine would refuse: a request validation error (422), found before any
    data is copied or compute is started."""

    code = "invalid_request"
    status = 422


class FineTuneRequest(RequestBody):
    """``POST /v0/finetune``. Engine hyperparameters may be given in ``hyperparameters`` (any key
    the SCU engine accepts) or through the common shortcuts below, which win when both are set.

    Every number must be finite (no NaN/Infinity, no overflow like ``1e309``) and lie in the range
    its description gives; the engine's own keys have the ranges listed in
    ``containers/training/README.md`` ("Ranges") and are checked before anything is launched."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dataset_id: Annotated[str, Field(min_length=4, max_length=32)]
    base_model: Annotated[
        str,
        Field(
            min_length=1,
            max_length=512,
            description="a hub id matching FASTUNER_ALLOWED_MODELS, or (local backend) a model folder "
            "under one of FASTUNER_MODEL_ROOTS",
        ),
    ]
    method: TuneMethod = TuneMethod.LORA
    hyperparameters: Annotated[
        dict[Annotated[str, Field(max_length=64)], HyperValue],
        Field(
            max_length=MAX_HYPERPARAMETERS,
            description="engine hyperparameters (see containers/training/README.md for keys and ranges); "
            "numbers, also as strings, must be finite",
        ),
    ] = {}
    target_s: Annotated[float | None, Field(gt=0, lt=1, description="S*, in (0, 1)")] = None
    epochs: Annotated[float | None, Field(gt=0, le=1000, description="in (0, 1000]")] = None
    max_steps: Annotated[
        int | None, Field(ge=1, le=MAX_STEPS, description=f"optimizer steps, 1 to {MAX_STEPS:,}")
    ] = None
    learning_rate: Annotated[float | None, Field(gt=0, lt=1, description="in (0, 1)")] = None
    lora_r: Annotated[int | None, Field(ge=1, le=1024, description="LoRA rank, 1 to 1024")] = None
    instance_type: str | None = None
    instance_count: Annotated[int, Field(ge=1, le=64, description="1 to 64")] = 1
    spot: bool = False
    max_runtime_seconds: Annotated[
        int,
        Field(
            ge=60,
            le=28 * 86400,
            description="60 s to 28 days; at the limit the job is stopped (it checkpoints first) and "
            "fails with reason 'max runtime'",
        ),
    ] = 24 * 3600
    volume_gb: Annotated[int, Field(ge=1, le=16384, description="1 to 16384")] = 50
    dry_run: bool = False

    @field_validator("hyperparameters")
    @classmethod
    def _finite(cls, value: dict[str, HyperValue]) -> dict[str, HyperValue]:
        for key, item in value.items():
            if isinstance(item, str) and len(item) > MAX_HYPERPARAMETER_TEXT:
                raise ValueError(f"hyperparameters.{key}: longer than {MAX_HYPERPARAMETER_TEXT} characters")
            if not is_finite_value(item):
                raise ValueError(f"hyperparameters.{key}: must be a finite number, not {item!r}")
        return value

    @field_validator("base_model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if has_control_char(value):
            raise ValueError("base_model must not contain control characters")
        return value

    def engine_hyperparameters(self) -> dict[str, HyperValue]:
        hp: dict[str, HyperValue] = dict(self.hyperparameters)
        hp["base_model"] = self.base_model
        hp["method"] = self.method.value
        for key in ("target_s", "epochs", "max_steps", "learning_rate", "lora_r"):
            value = getattr(self, key)
            if value is not None:
                hp[key] = value
        return hp


class CostEstimate(BaseModel):
    instance_type: str
    instance_count: int
    spot: bool
    hourly_usd: float
    n_params: int | None
    train_tokens: int | None
    expected_runtime_seconds: int | None
    estimated_cost_usd: float | None
    gpu_memory_needed_gb: float | None
    gpu_memory_available_gb: float | None
    notes: list[str] = []


class FineTuneJob(BaseModel):
    id: str
    dataset_id: str
    base_model: str
    method: TuneMethod
    hyperparameters: dict[str, Any]
    backend: str
    backend_job_name: str | None
    instance_type: str
    instance_count: int
    spot: bool
    status: JobStatus
    secondary_status: str | None
    failure_reason: str | None
    estimate: CostEstimate | None
    billable_seconds: int | None
    cost_estimate_usd: float | None
    adapter_id: str | None
    latest_metrics: dict[str, float] | None = None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None


class DryRun(BaseModel):
    """What ``--dry-run`` returns: the launch that would happen, and its estimate."""

    dry_run: bool = True
    backend: str
    hyperparameters: dict[str, str]
    estimate: CostEstimate
    warnings: list[str] = []


class JobEvent(BaseModel):
    id: int
    kind: str
    message: str
    data: dict[str, Any]
    at: datetime


class MetricPoint(BaseModel):
    step: int
    values: dict[str, float]


class Adapter(BaseModel):
    id: str
    job_id: str
    dataset_id: str
    dataset_sha256: str
    base_model: str
    uri: str
    eval_metrics: dict[str, Any] = Field(
        description=(
            "The engine's eval.json: held-out bits per token and perplexity, base vs adapter "
            "(rows, tokens, base, adapter, delta_bpt, …) and, under 'task', task metrics from greedy "
            "generation on held-out rows: {kind: generation|classification, rows, max_new_tokens, "
            "seconds, split, base, adapter, labels (classification), samples (first 8: prompt, "
            "target, base, adapter)} with exact_match (generation) or accuracy and macro_f1 "
            "(classification), each in [0, 1]"
        )
    )
    config: dict[str, Any]
    created_at: datetime
