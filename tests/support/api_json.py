"""The API's JSON for a job and a dataset, as tests that fake the server answer them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

CREATED = datetime(2026, 1, 1, tzinfo=UTC).isoformat()


def job_json(
    job_id: str, status: str, *, latest: dict[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    """A fine-tune job as ``GET /v0/finetune/{id}`` returns it; ``fields`` override the defaults."""
    job: dict[str, Any] = {
        "id": job_id,
        "dataset_id": "ds_x",
        "base_model": "tiny",
        "method": "lora",
        "hyperparameters": {"max_steps": 10},
        "backend": "local",
        "backend_job_name": "bj",
        "instance_type": "local",
        "instance_count": 1,
        "spot": False,
        "status": status,
        "secondary_status": None,
        "failure_reason": None,
        "estimate": None,
        "billable_seconds": None,
        "cost_estimate_usd": None,
        "adapter_id": None,
        "latest_metrics": latest,
        "created_at": CREATED,
        "started_at": None,
        "ended_at": None,
    }
    return {**job, **fields}


def dataset_json(dataset_id: str, **fields: Any) -> dict[str, Any]:
    """A ready dataset as ``POST /v0/datasets`` returns it; ``fields`` override the defaults."""
    dataset: dict[str, Any] = {
        "id": dataset_id,
        "name": "train",
        "format": "input_target",
        "task_type": "generation",
        "status": "ready",
        "row_counts": {"train": 1},
        "seed": 42,
        "ratios": {"train": 0.8, "validation": 0.1, "test": 0.1},
        "content_sha256": "0" * 64,
        "manifest_uri": "store://m",
        "source_bytes": 10,
        "created_at": "2026-01-01T00:00:00Z",
    }
    return {**dataset, **fields}
