"""The reconciler turns an unreachable SCU target in the metric records into ONE job event per episode.

Backend-neutral: a fake backend hands the reconciler records exactly as the local backend
(metrics.jsonl) and the SageMaker backend (parsed ``[scu]`` log lines) do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from api.backends.base import TrainingStatus
from api.db import models
from api.db.repositories import events
from api.db.repositories import jobs as repo
from api.db.session import Database
from api.domain.enums import JobStatus
from api.services.finetune.reconciler import Reconciler
from api.settings import Settings
from tests.support.rows import add_dataset

TENANT = "default"
JOB = "ft_scu0001"


def rec(step: int, unreachable: int | None = 0, *, lam: float = 1.0) -> dict[str, float]:
    out = {
        "step": float(step),
        "epoch": step / 100,
        "loss_bpt": 3.35,
        "data_bpt": 3.33,
        "param_bpt": 0.0123,
        "s": 0.05,
        "s_hat": 0.05,
        "target_s": 0.03,
        "band": 0.1,
        "lambda": lam,
        "lr": 2e-4,
        "tokens_per_s": 800.0,
        "eta_s": 40.0,
    }
    if unreachable is not None:
        out["unreachable"] = float(unreachable)
    return out


class FakeBackend:
    """Running; its log holds ``records`` (``read_metrics`` gives those after a step, like both backends)."""

    name = "fake"

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []

    def describe_training(self, job_name: str, state: dict[str, Any]) -> TrainingStatus:
        return TrainingStatus(status=JobStatus.RUNNING, secondary_status="Training")

    def read_metrics(self, job_name: str, state: dict[str, Any], after_step: int) -> list[dict[str, float]]:
        return [r for r in self.records if r["step"] > after_step]


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.migrate()
    add_dataset(database, "ds_scu0001", tenant_id=TENANT, manifest_uri="file:///x")
    with database.session() as s:
        s.add(
            models.FineTuneJobRow(
                id=JOB,
                tenant_id=TENANT,
                dataset_id="ds_scu0001",
                base_model="m",
                method="lora",
                hyperparameters={"target_s": 0.03},
                backend="fake",
                backend_job_name="bj",
                backend_state={"k": 1},
                instance_type="local",
                status="running",
            )
        )
    yield database
    database.dispose()


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def reconciler(
    db: Database, backend: FakeBackend, settings_factory: Callable[..., Settings], tmp_path: Path
) -> Reconciler:
    return Reconciler(db, store=None, backend=backend, settings=settings_factory())  # type: ignore[arg-type]


def warnings(db: Database) -> list[tuple[str, dict[str, Any]]]:
    with db.session() as s:
        return [(e.message, e.data) for e in events.after(s, TENANT, JOB) if e.kind == "warning"]


def reconcile(reconciler: Reconciler) -> int:
    report = reconciler.run_once()
    assert report.errors == []
    return report.metrics_ingested


def test_one_event_per_episode_and_none_on_reingest(
    db: Database, backend: FakeBackend, reconciler: Reconciler
) -> None:
    backend.records = [rec(10), rec(20), rec(30, 1, lam=10.0), rec(40, 1, lam=10.0)]
    assert reconcile(reconciler) == 4
    [(message, data)] = warnings(db)
    assert message == (
        "SCU target S*=0.03 unreachable since step 30: λ pinned at its maximum 10 (S stays above the "
        "target even at the strongest allowed regularisation); raise lambda_max or target_s"
    )
    assert data["step"] == 30 and data["unreachable"] == 1 and data["lambda"] == 10.0
    assert data["target_s"] == 0.03 and data["band"] == 0.1 and data["s_hat"] == 0.05

    # Nothing new, the same records read again from the start, or a reconciler's own re-read: no event.
    assert reconcile(reconciler) == 0
    assert reconciler._ingest(TENANT, JOB, backend.records) == 0
    assert len(warnings(db)) == 1

    # Still unreachable in the next batch: the same episode, judged against the stored row.
    backend.records += [rec(50, 1, lam=10.0)]
    assert reconcile(reconciler) == 1
    assert len(warnings(db)) == 1

    # It recovers, then hits the other bound, recovers and hits the first again, within one batch.
    backend.records += [rec(60), rec(70, -1, lam=1e-4), rec(80), rec(90, 1, lam=10.0), rec(100, 1, lam=10.0)]
    assert reconcile(reconciler) == 5
    events = warnings(db)
    assert [d["step"] for _, d in events] == [30, 70, 90]
    assert events[1][0] == (
        "SCU target S*=0.03 unreachable since step 70: λ pinned at its minimum 0.0001 (S stays below the "
        "target even with almost no regularisation); lower target_s or lambda_min"
    )
    assert events[1][1]["unreachable"] == -1

    # Recovery across batches, then unreachable again in the next: a new episode.
    backend.records += [rec(110)]
    reconcile(reconciler)
    backend.records += [rec(120, 1, lam=10.0)]
    reconcile(reconciler)
    assert [d["step"] for _, d in warnings(db)] == [30, 70, 90, 120]


def test_a_direct_flip_between_bounds_is_a_new_episode(
    db: Database, backend: FakeBackend, reconciler: Reconciler
) -> None:
    backend.records = [rec(10, 1, lam=10.0), rec(20, -1, lam=1e-4), rec(30, -1, lam=1e-4)]
    reconcile(reconciler)
    assert [d["unreachable"] for _, d in warnings(db)] == [1, -1]


def test_records_without_the_key_are_reachable(
    db: Database, backend: FakeBackend, reconciler: Reconciler
) -> None:
    backend.records = [rec(10, None), rec(20, None)]
    assert reconcile(reconciler) == 2
    assert warnings(db) == []
    backend.records += [rec(30, 1, lam=10.0)]
    reconcile(reconciler)
    assert [d["step"] for _, d in warnings(db)] == [30]


def test_a_racing_reconciler_adds_no_second_event(
    db: Database, backend: FakeBackend, reconciler: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.records = [rec(10), rec(20, 1, lam=10.0)]
    reconcile(reconciler)
    assert len(warnings(db)) == 1
    # A second reconciler read "no rows yet" before the first one committed: its insert of the same
    # steps fails on the unique (job, step), and its event goes with the rolled-back transaction.
    monkeypatch.setattr(repo, "latest_metric", lambda session, job_id: None)
    assert reconciler._ingest(TENANT, JOB, backend.records) == 0
    monkeypatch.undo()
    assert len(warnings(db)) == 1
