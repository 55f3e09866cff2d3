"""Wire models of the OpenAI-compatible ``/v1`` routes (files, fine-tuning jobs, models) and the
error a ``/v1`` route raises to name the parameter at fault.

The shapes follow OpenAI's API reference, so the ``openai`` clients parse them unchanged; Fastuner's
own view of a job rides along under ``fastuner`` (clients keep unknown fields). Times are Unix
seconds, as OpenAI's are.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from api.domain.errors import BadRequest, FastunerError

T = TypeVar("T")

# Our job states, in OpenAI's words (README: "Use it from the OpenAI SDK").
OpenAIJobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
Auto = Literal["auto"]
EXTENSION_KEY = "fastuner"


class InvalidParam(BadRequest):
    """A ``/v1`` request refused (400); ``param`` names the request parameter at fault, ``code`` is
    the stable machine code (OpenAI's ``error.code``)."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.openai_code = code


def error_param(exc: FastunerError) -> str | None:
    """The request parameter an error is about, if it says."""
    param = getattr(exc, "param", None)
    if param is None and isinstance(exc.details, dict):
        param = exc.details.get("param")
    return param if isinstance(param, str) else None


ERROR_TYPES = (
    "invalid_request_error, authentication_error, permission_error, rate_limit_error or server_error"
)


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description=ERROR_TYPES)
    param: str | None = Field(description="the request parameter at fault, when known")
    code: str | None = Field(description="stable machine code (Fastuner's error code)")


class OpenAIErrorBody(BaseModel):
    """Every error of a ``/v1`` route (the request id is in the ``X-Request-ID`` header)."""

    error: OpenAIErrorDetail


class ListPage(BaseModel, Generic[T]):
    """OpenAI's list envelope; the next page is asked for with ``after=last_id``."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None

    @classmethod
    def of(cls, items: list[Any], has_more: bool = False) -> Self:
        return cls(
            data=items,
            has_more=has_more,
            first_id=items[0].id if items else None,
            last_id=items[-1].id if items else None,
        )


# -- files ------------------------------------------------------------------------------------------
class File(BaseModel):
    """An uploaded training file: a Fastuner dataset (the file id is the dataset id)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["fine-tune"] = "fine-tune"
    status: Literal["processed"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class FileList(ListPage[File]):
    pass


# -- fine-tuning jobs -------------------------------------------------------------------------------
NumberOrAuto = Auto | Annotated[float, Field(allow_inf_nan=False)]


class Hyperparameters(BaseModel):
    """OpenAI's hyperparameters; each is ``"auto"`` (the engine's smart default) or a number.

    ``n_epochs`` → the engine's ``epochs``; ``batch_size`` → sequences per optimizer step (the
    engine's ``batch_size`` with ``grad_accum`` 1); ``learning_rate_multiplier`` multiplies the
    engine's default learning rate for the model's size."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: Auto | Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] = "auto"
    batch_size: Auto | Annotated[int, Field(ge=1, le=4096)] = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] = "auto"


class SupervisedMethod(BaseModel):
    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    """OpenAI's ``method``: only ``supervised`` is supported (LoRA/QLoRA is chosen under
    ``fastuner.method``)."""

    type: Literal["supervised"] = "supervised"
    supervised: SupervisedMethod | None = None


class FineTuningJobCreate(BaseModel):
    """``POST /v1/fine_tuning/jobs``. Fastuner's own options go under ``fastuner`` (with the
    ``openai`` client: ``extra_body={"fastuner": {...}}``): any field of ``POST /v0/finetune``
    but ``dataset_id``, ``base_model`` and ``dry_run`` — ``method`` (lora | qlora), ``target_s``,
    ``max_steps``, ``learning_rate``, ``lora_r``, ``instance_type``, ``instance_count``, ``spot``,
    ``max_runtime_seconds``, ``volume_gb`` and ``hyperparameters`` (any engine key). They win over
    the OpenAI fields they overlap."""

    model_config = ConfigDict(extra="forbid")

    training_file: Annotated[str, Field(min_length=1, max_length=64, description="a file id (ds_…)")]
    model: Annotated[
        str,
        Field(
            min_length=1,
            max_length=512,
            description="a base model from GET /v1/models (hub id on the allow-list or local folder)",
        ),
    ]
    validation_file: Annotated[
        str | None,
        Field(
            max_length=64,
            description="not supported: Fastuner splits the training file into train/validation/test "
            "at upload (fine-tune on a file whose split holds your validation rows)",
        ),
    ] = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: Annotated[str | None, Field(max_length=64)] = None
    seed: Annotated[int | None, Field(ge=0, le=2**32 - 1)] = None
    metadata: Annotated[
        dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None,
        Field(max_length=16),
    ] = None
    integrations: list[dict[str, Any]] | None = None
    fastuner: Annotated[
        dict[str, Any] | None,
        Field(description="Fastuner's own options (fields of POST /v0/finetune), see above"),
    ] = None

    def effective_hyperparameters(self) -> Hyperparameters:
        """``method.supervised.hyperparameters`` when given (the newer spelling wins, as in
        OpenAI's API), else ``hyperparameters``, else all ``auto``."""
        if self.method is not None and self.method.supervised and self.method.supervised.hyperparameters:
            return self.method.supervised.hyperparameters
        return self.hyperparameters or Hyperparameters()


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None = Field(description="the adapter id: the `model` of chat/completions")
    organization_id: str = Field(description="the tenant")
    status: OpenAIJobStatus
    hyperparameters: dict[str, Any]
    training_file: str
    validation_file: str | None = None
    result_files: list[str] = []
    trained_tokens: int | None
    error: JobError | None
    seed: int
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None
    user_provided_suffix: str | None = None
    method: dict[str, Any]
    fastuner: dict[str, Any] = Field(description="Fastuner's view: status, adapter, metrics, cost …")


class FineTuningJobList(ListPage[FineTuningJob]):
    pass


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: dict[str, Any] | None = None
    type: Literal["message", "metrics"]


class FineTuningJobEventList(ListPage[FineTuningJobEvent]):
    pass


class CheckpointMetrics(BaseModel):
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class FineTuningJobCheckpointList(ListPage[FineTuningJobCheckpoint]):
    pass


# -- models -----------------------------------------------------------------------------------------
class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = Field(description="'fastuner' for base models, the tenant for its adapters")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
