"""Helpers for the drop tests: a recording compute backend, a settable clock, a local drop world."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from api.backends.base import TrainingSpec, TrainingStatus
from api.context import AppContext
from api.db.models import DatasetRow, DropObjectRow, FineTuneJobRow, TenantRow
from api.domain.enums import JobStatus
from api.services.drops import DropService
from api.settings import Settings
from api.storage.base import ObjectStore

TENANT = "acme"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"


class RecordingBackend:
    """A ComputeBackend that launches nothing: it records every spec and reports jobs as running.

    ``fail_next`` makes the next ``start_training`` raise (a transient backend error).
    """

    name = "recording"

    def __init__(self) -> None:
        self.started: list[TrainingSpec] = []
        self.fail_next: Exception | None = None

    def start_training(self, spec: TrainingSpec) -> dict[str, Any]:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.started.append(spec)
        return {"job_name": spec.job_name}

    def describe_training(self, job_name: str, state: dict[str, Any]) -> TrainingStatus:
        return TrainingStatus(JobStatus.RUNNING, secondary_status="Training")

    def stop_training(self, job_name: str, state: dict[str, Any]) -> None:
        return None

    def read_metrics(self, job_name: str, state: dict[str, Any], after_step: int) -> list[dict[str, float]]:
        return []

    def read_logs(self, job_name: str, state: dict[str, Any], tail: int) -> list[str]:
        return []

    def fetch_model(self, job_name: str, state: dict[str, Any], dest: Path) -> None:
        raise FileNotFoundError(f"{job_name} has no model (recording backend)")


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def rows(n: int = 120, *, label: bool = False) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        row: dict[str, Any] = {"input": f"question number {i}?", "target": f"answer {i}"}
        if label:
            row["label"] = "even" if i % 2 == 0 else "odd"
        out.append(row)
    return out


def jsonl(items: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in items).encode()


def bad_jsonl() -> bytes:
    """120 good rows with an invalid JSON line at 5 and a row missing its target at 9."""
    lines = [json.dumps(r) for r in rows()]
    lines[4] = "{not json"
    lines[8] = json.dumps({"input": "no target here"})
    return ("\n".join(lines) + "\n").encode()


def add_tenant(ctx: AppContext, tenant_id: str = TENANT, **quotas: Any) -> None:
    with ctx.db.session() as session:
        session.add(TenantRow(id=tenant_id, admissions=0, **quotas))


def set_job_quota(world: World, limit: int | None) -> None:
    """The tenant's max_concurrent_jobs override (None: the default)."""
    with world.ctx.db.session() as session:
        tenant = session.get(TenantRow, TENANT)
        assert tenant is not None
        tenant.max_concurrent_jobs = limit


def drop(
    store: ObjectStore,
    name: str,
    data: bytes,
    *,
    tenant: str = TENANT,
    sidecar: dict[str, Any] | bytes | None = None,
) -> str:
    """Put the sidecar (first, as users should) and the data; returns the drop's store key."""
    stem = f"drop/{tenant}/{name}"
    if sidecar is not None:
        raw = sidecar if isinstance(sidecar, bytes) else json.dumps(sidecar).encode()
        store.put_bytes(f"{stem}.fastuner.json", raw)
    store.put_bytes(f"{stem}.jsonl", data)
    return f"{stem}.jsonl"


def status_of(store: ObjectStore, key: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(store.get_bytes(key[: -len(".jsonl")] + ".status.json"))
    return data


def jobs(ctx: AppContext) -> list[FineTuneJobRow]:
    with ctx.db.session() as session:
        return list(session.scalars(select(FineTuneJobRow).order_by(FineTuneJobRow.created_at)))


def datasets(ctx: AppContext) -> list[DatasetRow]:
    with ctx.db.session() as session:
        return list(session.scalars(select(DatasetRow)))


def ledger(ctx: AppContext) -> list[DropObjectRow]:
    with ctx.db.session() as session:
        return list(session.scalars(select(DropObjectRow).order_by(DropObjectRow.id)))


@dataclass
class World:
    """One control plane (local store, recording backend) and the drop service of one worker."""

    settings: Settings
    ctx: AppContext
    backend: RecordingBackend
    clock: Clock

    @property
    def store(self) -> ObjectStore:
        return self.ctx.store

    def worker(self) -> DropService:
        """Another worker's drop service on the same database and store (same clock)."""
        c = self.ctx
        return DropService(c.db, c.store, c.datasets, c.finetune, self.settings, clock=self.clock)
