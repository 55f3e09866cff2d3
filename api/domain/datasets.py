"""Dataset domain models: the options a user gives, the validation report and the manifest."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from api.domain.enums import DatasetFormat, DatasetStatus, TaskType
from api.domain.text import has_control_char

SPLIT_NAMES: tuple[str, str, str] = ("train", "validation", "test")


class SplitRatios(BaseModel):
    model_config = ConfigDict(frozen=True)

    train: Annotated[float, Field(gt=0, le=1)] = 0.8
    validation: Annotated[float, Field(ge=0, lt=1)] = 0.1
    test: Annotated[float, Field(ge=0, lt=1)] = 0.1

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitRatios:
        total = self.train + self.validation + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"split ratios must sum to 1.0, got {total:.6g}")
        return self

    @classmethod
    def parse(cls, text: str) -> SplitRatios:
        """Parse ``"0.8,0.1,0.1"`` (two values mean no test split)."""
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if len(parts) not in (2, 3):
            raise ValueError("split must be 'train,validation[,test]', e.g. 0.8,0.1,0.1")
        try:
            values = [float(p) for p in parts]
        except ValueError as exc:
            raise ValueError(f"split values must be numbers: {text!r}") from exc
        if len(values) == 2:
            values.append(0.0)
        return cls(train=values[0], validation=values[1], test=values[2])

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.train, self.validation, self.test)


class ValidationLimits(BaseModel):
    model_config = ConfigDict(frozen=True)

    max_input_chars: Annotated[int, Field(gt=0)] = 8192
    max_target_chars: Annotated[int, Field(gt=0)] = 2048
    min_unique_rows: Annotated[int, Field(ge=1)] = 100
    max_errors_shown: Annotated[int, Field(ge=1)] = 20
    near_limit_fraction: Annotated[float, Field(gt=0, le=1)] = 0.9


class DatasetOptions(BaseModel):
    """What the user asks for when uploading or validating a dataset."""

    model_config = ConfigDict(frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=128)]
    task_type: TaskType = TaskType.GENERATION
    format: DatasetFormat | None = None
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 42
    split: SplitRatios = SplitRatios()
    limits: ValidationLimits = ValidationLimits()

    @field_validator("name")
    @classmethod
    def _name_chars(cls, v: str) -> str:
        v = v.strip()
        if not v or any(c in v for c in "/\\") or has_control_char(v):
            raise ValueError("name must be non-empty and contain no slashes or control characters")
        return v


class IssueGroup(BaseModel):
    """One class of problem found in the file, with the lines where it occurs."""

    code: str
    message: str
    count: int
    lines: list[int]


class LengthStats(BaseModel):
    min: int
    max: int
    mean: float
    p50: int
    p95: int


class ValidationReport(BaseModel):
    ok: bool
    format: DatasetFormat | None
    total_lines: int
    valid_rows: int
    unique_rows: int
    duplicates_dropped: int
    errors: list[IssueGroup]
    warnings: list[IssueGroup]
    split_counts: dict[str, int] = {}
    label_distribution: dict[str, dict[str, int]] | None = None
    char_length: LengthStats | None = None
    token_length: LengthStats | None = Field(
        default=None,
        description="ESTIMATED tokens per row (no tokenizer in the control plane): a quarter token per "
        "ASCII character plus one per non-ASCII character, rounded up; see records.estimate_tokens",
    )
    content_sha256: str | None = None


class SplitFile(BaseModel):
    uri: str
    rows: int
    sha256: str
    bytes: int


class Manifest(BaseModel):
    # 2: records may carry name/weight/tool_calls/tool_call_id, record-level tools, or be
    # {"text"} rows (see api.services.datasets.records); 1: role/content messages only.
    schema_version: Literal[1, 2] = 2
    dataset_id: str
    name: str
    tenant_id: str
    format: DatasetFormat
    task_type: TaskType
    seed: int
    ratios: SplitRatios
    content_sha256: str
    source_filename: str | None
    source_bytes: int
    splits: dict[str, SplitFile]
    report: ValidationReport
    created_at: datetime


class Dataset(BaseModel):
    """The API view of a stored dataset."""

    id: str
    name: str
    format: DatasetFormat
    task_type: TaskType
    status: DatasetStatus
    seed: int
    ratios: SplitRatios
    row_counts: dict[str, int]
    content_sha256: str
    manifest_uri: str
    source_bytes: int
    created_at: datetime
