"""Database rows as the services leave them, for tests that start from a finished fine-tune."""

from __future__ import annotations

from api.db import models
from api.db.session import Database


def add_dataset(
    db: Database,
    dataset_id: str,
    *,
    tenant_id: str = "default",
    status: str = "ready",
    manifest_uri: str = "x",
) -> None:
    """A dataset row (its files are the test's business)."""
    with db.session() as s:
        s.add(
            models.DatasetRow(
                id=dataset_id,
                tenant_id=tenant_id,
                name="d",
                format="chat",
                task_type="generation",
                status=status,
                seed=1,
                ratios={},
                row_counts={},
                content_sha256="0" * 64,
                manifest_uri=manifest_uri,
                source_bytes=1,
            )
        )


def add_finished_adapter(
    db: Database,
    adapter_id: str,
    *,
    dataset_id: str,
    job_id: str,
    base_model: str,
    uri: str,
    backend: str = "local",
    instance_type: str = "local",
    tenant_id: str = "default",
) -> None:
    """An adapter row with the ready dataset and the completed fine-tune it comes from."""
    add_dataset(db, dataset_id, tenant_id=tenant_id, manifest_uri=f"{uri}/manifest.json")
    with db.session() as s:
        s.add(
            models.FineTuneJobRow(
                id=job_id,
                tenant_id=tenant_id,
                dataset_id=dataset_id,
                base_model=base_model,
                method="lora",
                hyperparameters={},
                backend=backend,
                instance_type=instance_type,
                status="completed",
            )
        )
        s.flush()
        s.add(
            models.AdapterRow(
                id=adapter_id,
                tenant_id=tenant_id,
                job_id=job_id,
                dataset_id=dataset_id,
                dataset_sha256="0" * 64,
                base_model=base_model,
                uri=uri,
            )
        )
