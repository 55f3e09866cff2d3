"""SQLAlchemy 2 ORM models. Every row carries ``tenant_id``; every query filters on it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from api.domain.ids import ID_MAX_LEN

TENANT_LEN = 64


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes on every database (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class DatasetRow(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(ID_MAX_LEN), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(TENANT_LEN), index=True)
    name: Mapped[str] = mapped_column(String(128))
    format: Mapped[str] = mapped_column(String(32))
    task_type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    seed: Mapped[int] = mapped_column(BigInteger)
    ratios: Mapped[dict[str, Any]]
    row_counts: Mapped[dict[str, Any]]
    content_sha256: Mapped[str] = mapped_column(String(64))
    manifest_uri: Mapped[str] = mapped_column(Text)
    source_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FineTuneJobRow(Base):
    __tablename__ = "finetune_jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_finetune_idempotency"),
        Index("ix_finetune_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(ID_MAX_LEN), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(TENANT_LEN), index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    base_model: Mapped[str] = mapped_column(String(512))
    method: Mapped[str] = mapped_column(String(16))
    hyperparameters: Mapped[dict[str, Any]]
    backend: Mapped[str] = mapped_column(String(16))
    backend_job_name: Mapped[str | None] = mapped_column(String(63))
    instance_type: Mapped[str] = mapped_column(String(64))
    instance_count: Mapped[int] = mapped_column(Integer, default=1)
    spot: Mapped[bool] = mapped_column(default=False)
    status: Mapped[str] = mapped_column(String(16))
    secondary_status: Mapped[str | None] = mapped_column(String(64))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    billable_seconds: Mapped[int | None] = mapped_column(Integer)
    cost_estimate_usd: Mapped[float | None] = mapped_column(Float)
    estimate: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    adapter_id: Mapped[str | None] = mapped_column(String(ID_MAX_LEN))
    backend_state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The recorded launch intent (spec inputs not derivable from the row, launcher, attempts, last
    # launch error): lets a crashed launch be adopted, redone or failed from the row alone.
    launch: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AdapterRow(Base):
    __tablename__ = "adapters"

    id: Mapped[str] = mapped_column(String(ID_MAX_LEN), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(TENANT_LEN), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("finetune_jobs.id"), unique=True)
    dataset_id: Mapped[str] = mapped_column(String(ID_MAX_LEN))
    dataset_sha256: Mapped[str] = mapped_column(String(64))
    base_model: Mapped[str] = mapped_column(String(512))
    uri: Mapped[str] = mapped_column(Text)
    eval_metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeploymentRow(Base):
    __tablename__ = "deployments"
    __table_args__ = (Index("ix_deployment_status", "status"),)

    id: Mapped[str] = mapped_column(String(ID_MAX_LEN), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(TENANT_LEN), index=True)
    adapter_ids: Mapped[list[Any]]
    base_model: Mapped[str] = mapped_column(String(512))
    backend: Mapped[str] = mapped_column(String(16))
    endpoint_name: Mapped[str | None] = mapped_column(String(63))
    endpoint_url: Mapped[str | None] = mapped_column(Text)
    instance_type: Mapped[str] = mapped_column(String(64))
    instance_count: Mapped[int] = mapped_column(Integer, default=1)
    hourly_price_usd: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    ttl_seconds: Mapped[int | None] = mapped_column(Integer)
    max_lifetime_seconds: Mapped[int | None] = mapped_column(Integer)
    backend_state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    in_service_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]
    deleted_reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class EventRow(Base):
    """Transitions and notable happenings of jobs and deployments (subject_id names which)."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_subject", "subject_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(TENANT_LEN))
    subject_id: Mapped[str] = mapped_column(String(ID_MAX_LEN))
    kind: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class MetricRow(Base):
    __tablename__ = "job_metrics"
    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_metric_step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(TENANT_LEN))
    job_id: Mapped[str] = mapped_column(ForeignKey("finetune_jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    values: Mapped[dict[str, Any]]
    at: Mapped[datetime] = mapped_column(default=utcnow)


class DropObjectRow(Base):
    """Ledger of S3 drop-and-train objects: each (bucket, key, etag) is processed once.

    A worker claims a new object by INSERT (the unique constraint decides between racing workers)
    and holds a lease while it works; a lapsed lease or a due ``pending`` row is re-claimed with a
    conditional UPDATE. ``dataset_id`` is allocated with the claim and ``options`` snapshots the
    sidecar, so a retry reuses both (and the job's idempotency key derives from ``id``).
    """

    __tablename__ = "drop_objects"
    __table_args__ = (
        UniqueConstraint("bucket", "key", "etag", name="uq_drop_object"),
        Index("ix_drop_objects_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(TENANT_LEN))
    bucket: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(1024))
    etag: Mapped[str] = mapped_column(String(128))
    version_id: Mapped[str | None] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16))
    dataset_id: Mapped[str | None] = mapped_column(String(ID_MAX_LEN))
    job_id: Mapped[str | None] = mapped_column(String(ID_MAX_LEN))
    error: Mapped[str | None] = mapped_column(Text)
    options: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None]


class TenantRow(Base):
    """A tenant and its quota overrides (NULL: the settings' default applies)."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(TENANT_LEN), primary_key=True)
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer)
    max_endpoints: Mapped[int | None] = mapped_column(Integer)
    allowed_instance_types: Mapped[list[Any] | None]
    # Bumped by every quota-checked admission: the UPDATE serialises them per tenant.
    admissions: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKeyRow(Base):
    """An API key: only the SHA-256 of the secret is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(ID_MAX_LEN), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16))
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
