"""``<name>.fastuner.json``: the dataset and job options of a drop.

```json
{"dataset": {"task_type": "classification", "split": "0.8,0.1,0.1", "seed": 7},
 "job": {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "max_steps": 200}}
```

``dataset`` takes :class:`~api.domain.datasets.DatasetOptions`' fields (``name`` defaults to the
file name), ``job`` takes :class:`~api.domain.finetune.FineTuneRequest`'s fields except
``dataset_id`` and ``dry_run``. Unknown keys are errors. The values are checked by those very
models (:func:`plan`), so a drop accepts exactly what the API accepts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from api.domain import userjson
from api.domain.datasets import DatasetOptions, SplitRatios, ValidationLimits
from api.domain.enums import DatasetFormat, TaskType, TuneMethod
from api.domain.finetune import FineTuneRequest, HyperValue


class SidecarError(ValueError):
    """The sidecar is unusable; ``errors`` has one readable line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class DatasetSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    task_type: TaskType | None = None
    format: DatasetFormat | None = None
    seed: int | None = None
    split: SplitRatios | None = None

    @field_validator("split", mode="before")
    @classmethod
    def _split_text(cls, value: object) -> object:
        return SplitRatios.parse(value) if isinstance(value, str) else value


class JobSection(BaseModel):
    """FineTuneRequest's fields less ``dataset_id`` and ``dry_run`` (unset: the API's default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_model: str | None = None
    method: TuneMethod | None = None
    hyperparameters: dict[str, HyperValue] | None = None
    target_s: float | None = None
    epochs: float | None = None
    max_steps: int | None = None
    learning_rate: float | None = None
    lora_r: int | None = None
    instance_type: str | None = None
    instance_count: int | None = None
    spot: bool | None = None
    max_runtime_seconds: int | None = None
    volume_gb: int | None = None


class Sidecar(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: DatasetSection = DatasetSection()
    job: JobSection = JobSection()


@dataclass(frozen=True)
class DropPlan:
    dataset: DatasetOptions
    job: FineTuneRequest


def parse(raw: bytes) -> Sidecar:
    try:
        data = userjson.loads(raw)
    except userjson.JSONDepthError as exc:
        raise SidecarError([f"not accepted: {exc}"]) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SidecarError([f"not valid JSON: {exc}"]) from exc
    try:
        return Sidecar.model_validate(data)
    except ValidationError as exc:
        raise SidecarError(error_lines(exc)) from exc


def plan(
    sidecar: Sidecar,
    *,
    name: str,
    dataset_id: str,
    limits: ValidationLimits,
    default_base_model: str | None,
) -> DropPlan:
    """The dataset options and job request of a drop, validated by the API's own models."""
    errors: list[str] = []
    dataset: DatasetOptions | None = None
    job: FineTuneRequest | None = None
    try:
        values = sidecar.dataset.model_dump(exclude_none=True)
        dataset = DatasetOptions(**{"name": name, **values}, limits=limits)
    except ValidationError as exc:
        errors += error_lines(exc, "dataset")
    base_model = sidecar.job.base_model or default_base_model
    if not base_model:
        errors.append(
            "job.base_model: no base model; name one in the sidecar (<name>.fastuner.json: "
            '{"job": {"base_model": "…"}}) or ask an operator to set FASTUNER_DROP_DEFAULT_BASE_MODEL'
        )
    else:
        try:
            options = sidecar.job.model_dump(exclude_none=True, exclude={"base_model"})
            job = FineTuneRequest(dataset_id=dataset_id, base_model=base_model, **options)
        except ValidationError as exc:
            errors += error_lines(exc, "job")
    if errors or dataset is None or job is None:
        raise SidecarError(errors)
    return DropPlan(dataset=dataset, job=job)


def error_lines(exc: ValidationError, section: str | None = None) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in ((section,) if section else ()) + tuple(err["loc"]))
        lines.append(f"{loc}: {err['msg']}" if loc else str(err["msg"]))
    return lines
