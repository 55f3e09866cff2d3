"""The janitor's rules against an in-memory endpoint backend (fast; the SageMaker path is in moto tests)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from api.backends.endpoints import EndpointSpec, EndpointStatus, ManagedEndpoint
from api.db import models
from api.db.session import Database
from api.domain.enums import DeploymentStatus
from api.services.janitor import Janitor
from api.settings import Settings
from tests.support.threads import race

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


class FakeEndpoints:
    """Endpoints that exist as dict entries; deletes can be made to fail."""

    name = "fake"

    def __init__(self) -> None:
        self.live: dict[str, ManagedEndpoint] = {}
        self.deleted: list[str] = []
        self.fail_deletes = 0
        self.lock = threading.Lock()

    def add(self, name: str, *, tags: dict[str, str] | None = None, created_at: datetime = T0) -> None:
        self.live[name] = ManagedEndpoint(name=name, created_at=created_at, tags=tags or {})

    def create_endpoint(self, spec: EndpointSpec) -> dict[str, Any]:
        self.add(spec.endpoint_name, tags=spec.tags)
        return {"name": spec.endpoint_name}

    def describe_endpoint(self, endpoint_name: str, state: dict[str, Any]) -> EndpointStatus:
        return EndpointStatus(
            DeploymentStatus.IN_SERVICE if endpoint_name in self.live else DeploymentStatus.DELETED
        )

    def delete_endpoint(self, endpoint_name: str, state: dict[str, Any]) -> None:
        with self.lock:
            if self.fail_deletes:
                self.fail_deletes -= 1
                raise RuntimeError("injected: ThrottlingException")
            self.deleted.append(endpoint_name)
            self.live.pop(endpoint_name, None)

    def invoke(self, endpoint_name: str, state: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        return {"outputs": []}

    def list_managed(self) -> list[ManagedEndpoint]:
        return [e for e in self.live.values() if e.tags.get("fastuner:managed") == "true"]


@pytest.fixture
def db(db_url: str) -> Database:
    database = Database(db_url)
    database.migrate()
    return database


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, orphan_grace_seconds=600)


def _deployment(db: Database, backend: FakeEndpoints, dep_id: str, **kw: Any) -> None:
    values: dict[str, Any] = {
        "id": dep_id,
        "tenant_id": "t",
        "adapter_ids": ["adp_x"],
        "base_model": "m",
        "backend": "fake",
        "endpoint_name": f"fastuner-{dep_id}",
        "instance_type": "ml.g5.xlarge",
        "hourly_price_usd": 1.408,
        "status": "in_service",
        "ttl_seconds": 600,
        "created_at": T0,
        "in_service_at": T0,
        "backend_state": {"x": 1},
    }
    values.update(kw)
    with db.session() as s:
        s.add(models.DeploymentRow(**values))
    backend.add(values["endpoint_name"], tags={"fastuner:managed": "true", "fastuner:tenant": "t"})


def _status(db: Database, dep_id: str) -> models.DeploymentRow:
    with db.session() as s:
        row = s.get(models.DeploymentRow, dep_id)
        assert row is not None
        return row


def test_idle_ttl_counts_from_in_service_and_last_use(db: Database, settings: Settings) -> None:
    backend = FakeEndpoints()
    # created long ago but in service only 5 minutes: not idle yet
    _deployment(
        db, backend, "dep_late", created_at=T0 - timedelta(hours=5), in_service_at=T0 + timedelta(minutes=5)
    )
    _deployment(db, backend, "dep_used", last_used_at=T0 + timedelta(minutes=9))  # used recently
    _deployment(db, backend, "dep_idle")  # in service at T0, never used
    _deployment(db, backend, "dep_creating", status="creating", in_service_at=None)
    janitor = Janitor(db, backend, settings, clock=lambda: T0 + timedelta(minutes=11))
    report = janitor.run_once()
    assert [a.deployment_id for a in report.actions] == ["dep_idle"]
    assert report.actions[0].done and "idle 660 s > ttl 600 s" in report.actions[0].reason
    assert report.hourly_savings_usd == pytest.approx(1.408)
    row = _status(db, "dep_idle")
    assert row.status == "deleted" and row.deleted_reason and row.deleted_at is not None
    assert backend.deleted == ["fastuner-dep_idle"]
    for alive in ("dep_late", "dep_used", "dep_creating"):
        assert _status(db, alive).status in ("in_service", "creating")
    with db.session() as s:
        kinds = [e.message for e in s.query(models.EventRow).filter_by(subject_id="dep_idle")]
    assert kinds == ["in_service → deleting", "deleting → deleted"]


def test_max_lifetime_even_when_busy(db: Database, settings: Settings) -> None:
    backend = FakeEndpoints()
    now = T0 + timedelta(hours=9)
    _deployment(
        db, backend, "dep_old", max_lifetime_seconds=8 * 3600, last_used_at=now - timedelta(seconds=5)
    )
    report = Janitor(db, backend, settings, clock=lambda: now).run_once()
    assert report.actions[0].reason.startswith("max lifetime exceeded")
    assert _status(db, "dep_old").status == "deleted"


def test_dry_run_reports_and_touches_nothing(db: Database, settings: Settings) -> None:
    backend = FakeEndpoints()
    _deployment(db, backend, "dep_idle")
    backend.add("fastuner-orphan", tags={"fastuner:managed": "true"}, created_at=T0 - timedelta(hours=1))
    report = Janitor(db, backend, settings, clock=lambda: T0 + timedelta(hours=1)).run_once(dry_run=True)
    assert report.dry_run and {a.endpoint_name for a in report.actions} == {
        "fastuner-dep_idle",
        "fastuner-orphan",
    }
    assert not any(a.done for a in report.actions) and report.hourly_savings_usd == pytest.approx(1.408)
    assert backend.deleted == [] and _status(db, "dep_idle").status == "in_service"


def test_orphans_tagged_only_after_grace(db: Database, settings: Settings) -> None:
    backend = FakeEndpoints()
    now = T0 + timedelta(hours=1)
    _deployment(db, backend, "dep_live", ttl_seconds=None)
    backend.add("fastuner-orphan-old", tags={"fastuner:managed": "true"}, created_at=now - timedelta(hours=1))
    backend.add(
        "fastuner-orphan-new", tags={"fastuner:managed": "true"}, created_at=now - timedelta(seconds=30)
    )
    backend.add("someone-elses-endpoint", tags={}, created_at=now - timedelta(days=30))
    backend.add("not-managed", tags={"fastuner:managed": "false"}, created_at=now - timedelta(days=30))
    report = Janitor(db, backend, settings, clock=lambda: now).run_once()
    assert [a.endpoint_name for a in report.actions] == ["fastuner-orphan-old"]
    assert backend.deleted == ["fastuner-orphan-old"]
    assert {"someone-elses-endpoint", "not-managed", "fastuner-orphan-new", "fastuner-dep_live"} <= set(
        backend.live
    )


def test_failed_delete_is_retried_next_pass(db: Database, settings: Settings) -> None:
    backend = FakeEndpoints()
    backend.fail_deletes = 1
    _deployment(db, backend, "dep_idle")
    janitor = Janitor(db, backend, settings, clock=lambda: T0 + timedelta(hours=1))
    first = janitor.run_once()
    assert first.actions[0].error and not first.actions[0].done
    assert _status(db, "dep_idle").status == "deleting"  # not failed forever
    second = janitor.run_once()
    assert second.actions[0].done and _status(db, "dep_idle").status == "deleted"
    assert backend.deleted == ["fastuner-dep_idle"]
    third = janitor.run_once()
    assert third.actions == []


def test_concurrent_janitors_delete_once(db: Database, settings: Settings) -> None:
    backend = FakeEndpoints()
    for i in range(4):
        _deployment(db, backend, f"dep_{i}")
    janitors = [Janitor(db, backend, settings, clock=lambda: T0 + timedelta(hours=1)) for _ in range(3)]
    reports = race([j.run_once for j in janitors])
    done = sorted(a.deployment_id for r in reports for a in r.actions if a.done)
    assert done == [f"dep_{i}" for i in range(4)]  # each claimed by exactly one janitor
    assert sorted(backend.deleted) == sorted(f"fastuner-dep_{i}" for i in range(4))
    assert all(_status(db, f"dep_{i}").status == "deleted" for i in range(4))


def test_a_use_racing_the_janitor_wins(db: Database, settings: Settings) -> None:
    from api.db.repositories import deployments as repo
    from api.services.teardown import teardown

    backend = FakeEndpoints()
    _deployment(db, backend, "dep_idle")
    row = _status(db, "dep_idle")  # what the janitor judged expired
    with db.session() as s:
        repo.touch(s, "dep_idle", T0 + timedelta(hours=1))  # an inference lands first
    assert teardown(db, backend, row, "idle", expected_version=row.version) is None
    assert _status(db, "dep_idle").status == "in_service" and backend.deleted == []


def test_a_janitor_that_reads_a_claimed_row_leaves_it_alone(db: Database, settings: Settings) -> None:
    """The CI flake: janitor B lists the row after janitor A claimed it (``deleting``, new version)
    and judged it with that version; B must not delete the endpoint a second time."""
    from api.services.teardown import teardown

    backend = FakeEndpoints()
    _deployment(db, backend, "dep_idle")
    a_saw = _status(db, "dep_idle")
    deleting_inside_a: list[models.DeploymentRow] = []
    real_delete = backend.delete_endpoint

    def slow_delete(name: str, state: dict[str, Any]) -> None:
        b_saw = _status(db, "dep_idle")  # B's listing, taken while A deletes
        deleting_inside_a.append(b_saw)
        assert teardown(db, backend, b_saw, "idle", expected_version=b_saw.version) is None
        real_delete(name, state)

    backend.delete_endpoint = slow_delete  # type: ignore[method-assign]
    assert teardown(db, backend, a_saw, "idle", expected_version=a_saw.version) is not None
    assert deleting_inside_a[0].status == "deleting"
    assert backend.deleted == ["fastuner-dep_idle"] and _status(db, "dep_idle").status == "deleted"


def test_a_claim_left_by_a_dead_teardown_is_retried_after_its_lease(db: Database, settings: Settings) -> None:
    from api.services.teardown import DELETE_LEASE

    backend = FakeEndpoints()
    _deployment(db, backend, "dep_fresh", status="deleting")  # a teardown claimed it just now
    _deployment(db, backend, "dep_stale", status="deleting")
    with db.session() as s:
        row = s.get(models.DeploymentRow, "dep_stale")
        assert row is not None
        row.updated_at = datetime.now(UTC) - DELETE_LEASE - timedelta(seconds=1)  # its teardown died
    report = Janitor(db, backend, settings, clock=lambda: T0 + timedelta(hours=1)).run_once()
    assert {a.deployment_id: a.done for a in report.actions} == {"dep_fresh": False, "dep_stale": True}
    assert backend.deleted == ["fastuner-dep_stale"] and _status(db, "dep_fresh").status == "deleting"
