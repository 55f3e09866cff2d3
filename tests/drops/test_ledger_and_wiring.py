"""The ledger's schema (migration 0004), the idempotent dataset create, and the API's scanner loop."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import inspect

from api.app import create_app
from api.db.session import Database, alembic_config
from api.domain.datasets import DatasetOptions
from tests.drops.conftest import MakeWorld
from tests.drops.support import (
    SMOL,
    TENANT,
    RecordingBackend,
    World,
    datasets,
    drop,
    jobs,
    jsonl,
    rows,
    status_of,
)


def test_migration_0004_adds_the_lease_columns_and_goes_back(db_url: str) -> None:
    db = Database(db_url)
    db.migrate()
    columns = {c["name"] for c in inspect(db.engine).get_columns("drop_objects")}
    assert {
        "version_id",
        "options",
        "attempts",
        "lease_owner",
        "lease_expires_at",
        "next_attempt_at",
        "updated_at",
        "finished_at",
    } <= columns
    cfg = alembic_config(db_url)
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
    assert "lease_owner" not in {c["name"] for c in inspect(db.engine).get_columns("drop_objects")}
    db.migrate()
    assert "lease_owner" in {c["name"] for c in inspect(db.engine).get_columns("drop_objects")}
    db.dispose()


def test_dataset_create_with_an_allocated_id_is_idempotent(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "d.jsonl"
    source.write_bytes(jsonl(rows()))
    service = world.ctx.datasets
    first = service.create(TENANT, source, DatasetOptions(name="d"), dataset_id="ds_fixed")
    assert service.create(TENANT, source, DatasetOptions(name="d"), dataset_id="ds_fixed") == first

    # A create that raced another past the existence check: its insert fails, and it must not
    # delete the winner's objects (the same bytes: it has just written them too).
    calls = {"n": 0}
    real_find = service._find

    def find_after_the_check(tenant_id: str, dataset_id: str) -> object:
        calls["n"] += 1
        return None if calls["n"] == 1 else real_find(tenant_id, dataset_id)

    monkeypatch.setattr(service, "_find", find_after_the_check)
    again = service.create(TENANT, source, DatasetOptions(name="d"), dataset_id="ds_fixed")
    assert again.id == first.id and len(datasets(world.ctx)) == 1
    assert calls["n"] == 2 and service.preview(TENANT, "ds_fixed", limit=1)  # objects still there
    assert service.manifest(TENANT, "ds_fixed").dataset_id == "ds_fixed"
    with pytest.raises(ValueError):
        service.create(TENANT, source, DatasetOptions(name="d"), dataset_id="ft_notadataset")


def test_api_process_runs_the_scanner_when_asked(make_world: MakeWorld) -> None:
    world = make_world()  # the database, tenant and store the app below shares
    settings = world.settings.model_copy(update={"drop_scan": True, "drop_scan_interval_seconds": 0.05})
    key = drop(world.store, "bg", jsonl(rows()), sidecar={"job": {"base_model": SMOL}})
    app = create_app(settings, store=world.store, backend=RecordingBackend())

    with TestClient(app):
        deadline = time.monotonic() + 20
        while not world.store.exists(key[: -len(".jsonl")] + ".status.json") or (
            status_of(world.store, key)["state"] != "started"
        ):
            assert time.monotonic() < deadline, "the scanner loop never handled the drop"
            time.sleep(0.05)

    assert len(jobs(world.ctx)) == 1
