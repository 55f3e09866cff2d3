"""The ComputeBackend protocol for training jobs.

A backend launches the training container (``containers/training``) under the SageMaker container
contract and reports on it. The control plane keeps whatever the backend returns from
``start_training`` in the job row (``backend_state``) and hands it back on every later call, so a
backend holds no state of its own that a restart could lose. Job names are deterministic and
recorded before the launch; ``find_training`` recovers the state from the name alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from api.domain.enums import JobStatus


@dataclass(frozen=True)
class TrainingSpec:
    job_id: str
    tenant_id: str
    job_name: str  # deterministic, unique, <= 63 chars, [a-zA-Z0-9-]
    hyperparameters: dict[str, str]  # already stringified, as SageMaker passes them
    channels: dict[str, str]  # channel name -> object-store key of exactly one split file
    output_prefix: str  # store key prefix for outputs:  {tenant}/jobs/{ft}/output
    checkpoint_prefix: str  # store key prefix for checkpoints: {tenant}/jobs/{ft}/checkpoints
    instance_type: str
    instance_count: int = 1
    spot: bool = False
    max_runtime_seconds: int = 86400
    max_wait_seconds: int | None = None  # spot only; >= max_runtime_seconds
    volume_gb: int = 50
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingStatus:
    status: JobStatus
    secondary_status: str | None = None
    failure_reason: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    billable_seconds: int | None = None


@runtime_checkable
class ComputeBackend(Protocol):
    name: str

    def start_training(self, spec: TrainingSpec) -> dict[str, Any]:
        """Launch; idempotent for the same ``spec.job_name``. Returns the state to keep."""
        ...

    def find_training(self, job_name: str) -> dict[str, Any] | None:
        """The state ``start_training`` would have returned for the job named ``job_name``, or None
        when the backend has no job of that name. Needs nothing but the name: this is how a launch
        whose caller died before recording the state is adopted instead of started twice."""
        ...

    def describe_training(self, job_name: str, state: dict[str, Any]) -> TrainingStatus: ...

    def stop_training(self, job_name: str, state: dict[str, Any]) -> None:
        """Ask the job to stop (it checkpoints and ends as cancelled). Stopping a finished job is a no-op."""
        ...

    def read_metrics(self, job_name: str, state: dict[str, Any], after_step: int) -> list[dict[str, float]]:
        """Metric records (engine keys, ``step`` included) with step > ``after_step``."""
        ...

    def read_logs(self, job_name: str, state: dict[str, Any], tail: int) -> list[str]:
        """The last ``tail`` lines of the job's log."""
        ...

    def fetch_model(self, job_name: str, state: dict[str, Any], dest: Path) -> None:
        """Put the finished job's unpacked model folder (PEFT adapter, eval.json, …) into ``dest``."""
        ...
