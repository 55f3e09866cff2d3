"""No symbolic links (issue 12, item 6): the local store, the drop scanner, adapter uploads, archives
and the local backend never follow a link, so a link can't read another tenant's data or the host's.

Before the fix: a link inside ``{tenant}/adapters/{id}/`` to ``/etc/passwd`` was served in the
adapter download, and a link at ``drop/default/x.jsonl`` to another tenant's ``train.jsonl``
became a dataset of ``default``.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from api.backends.local import LocalBackend
from api.context import AppContext
from api.db import models
from api.domain.errors import BackendError, UnsafePath
from api.settings import Settings
from api.storage.base import upload_dir
from api.storage.local import LocalStore
from tests.api.support import authorize
from tests.drops.support import (
    SMOL,
    TENANT,
    Clock,
    RecordingBackend,
    World,
    add_tenant,
    datasets,
    drop,
    jsonl,
    ledger,
    rows,
    status_of,
)
from tests.support.rows import add_finished_adapter

SECRET = b"root:x:0:0:the host's secret\n"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "passwd"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


# -- the local store ---------------------------------------------------------------------------
def test_a_link_at_the_key_is_an_error_naming_the_key(store: LocalStore, secret: Path) -> None:
    store.put_bytes("t/adapters/adp_1/adapter_config.json", b"{}")
    (store.root / "t/adapters/adp_1/evil.bin").symlink_to(secret)
    key = "t/adapters/adp_1/evil.bin"

    for read in (store.get_bytes, store.open_read, store.exists, store.stat):
        with pytest.raises(UnsafePath, match=r"t/adapters/adp_1/evil\.bin"):
            read(key)
    with pytest.raises(UnsafePath):
        store.download_file(key, store.root.parent / "out.bin")
    assert not (store.root.parent / "out.bin").exists()

    assert [i.key for i in store.list("t/")] == ["t/adapters/adp_1/adapter_config.json"]
    assert store.unsafe_keys("t/") == [key]


def test_a_linked_folder_on_the_way_is_an_error_and_is_not_listed(store: LocalStore, tmp_path: Path) -> None:
    other = LocalStore(tmp_path / "other-store")
    other.put_bytes("victim/datasets/ds_v/train.jsonl", b'{"secret": 1}\n')
    (store.root / "t").mkdir()
    (store.root / "t" / "datasets").symlink_to(other.root / "victim" / "datasets")

    with pytest.raises(UnsafePath, match="goes through 't/datasets'"):
        store.get_bytes("t/datasets/ds_v/train.jsonl")
    with pytest.raises(UnsafePath):
        store.exists("t/datasets/ds_v/train.jsonl")
    assert list(store.list("t/")) == []
    assert list(store.list("t/datasets/")) == []  # the prefix itself goes through the link
    assert store.unsafe_keys("t/") == ["t/datasets"]
    # Writing through the link is refused too; nothing lands in the other store.
    with pytest.raises(UnsafePath):
        store.put_bytes("t/datasets/ds_v/train.jsonl", b"overwritten")
    assert other.get_bytes("victim/datasets/ds_v/train.jsonl") == b'{"secret": 1}\n'


def test_writes_and_deletes_replace_or_remove_the_link_never_its_target(
    store: LocalStore, secret: Path
) -> None:
    store.put_bytes("t/x/keep.txt", b"k")
    (store.root / "t/x/a.txt").symlink_to(secret)
    (store.root / "t/x/b.txt").symlink_to(secret)

    store.put_bytes("t/x/a.txt", b"new")  # the link is replaced by a plain file
    assert store.get_bytes("t/x/a.txt") == b"new"
    assert not (store.root / "t/x/a.txt").is_symlink()
    assert store.delete_prefix("t/x/") == 2  # keep.txt and a.txt; the link b.txt goes too
    assert not (store.root / "t").exists()
    assert secret.read_bytes() == SECRET


def test_fifos_and_devices_are_not_objects(store: LocalStore) -> None:
    store.put_bytes("t/x/ok.txt", b"ok")
    os.mkfifo(store.root / "t/x/pipe.jsonl")
    with pytest.raises(UnsafePath, match="not a plain file"):
        store.get_bytes("t/x/pipe.jsonl")  # and never blocks
    assert [i.key for i in store.list("t/")] == ["t/x/ok.txt"]


def test_upload_dir_skips_links(store: LocalStore, secret: Path, tmp_path: Path) -> None:
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "adapter_config.json").write_text("{}")
    (src / "sub" / "w.bin").write_bytes(b"w")
    (src / "passwd").symlink_to(secret)
    (src / "etc").symlink_to(secret.parent, target_is_directory=True)

    infos = upload_dir(store, src, "t/adapters/adp_1")

    assert sorted(i.key for i in infos) == [
        "t/adapters/adp_1/adapter_config.json",
        "t/adapters/adp_1/sub/w.bin",
    ]
    assert store.unsafe_keys("t/") == []


def test_local_backend_fetch_model_refuses_links(tmp_path: Path, secret: Path) -> None:
    root = tmp_path / "jobs" / "ft_x"
    model = root / "model"
    model.mkdir(parents=True)
    (model / "adapter_config.json").write_text("{}")
    (model / "adapter_model.safetensors").write_bytes(b"\0" * 8)
    backend = LocalBackend(LocalStore(tmp_path / "store"), tmp_path / "jobs")

    backend.fetch_model("ft_x", {"root": str(root)}, tmp_path / "ok")
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]

    (model / "passwd").symlink_to(secret)
    with pytest.raises(BackendError, match="symbolic links"):
        backend.fetch_model("ft_x", {"root": str(root)}, tmp_path / "bad")
    assert not (tmp_path / "bad" / "passwd").exists()


# -- the adapter download (served archive) -----------------------------------------------------
@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(home=tmp_path / "home", database_url=db_url, log_json=False, background_tasks=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        authorize(c)
        yield c


def _register_adapter(client: TestClient, adapter_id: str) -> LocalStore:
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    store: LocalStore = ctx.store
    prefix = f"default/adapters/{adapter_id}"
    store.put_bytes(f"{prefix}/adapter_config.json", b'{"peft_type": "LORA"}')
    store.put_bytes(f"{prefix}/adapter_model.safetensors", b"\0" * 16)
    uri = store.uri(prefix)
    add_finished_adapter(ctx.db, adapter_id, dataset_id="ds_sym1", job_id="ft_sym1", base_model=SMOL, uri=uri)
    return store


def test_adapter_download_never_contains_a_linked_file(client: TestClient, secret: Path) -> None:
    store = _register_adapter(client, "adp_sym1")
    (store.root / "default/adapters/adp_sym1/passwd").symlink_to(secret)
    (store.root / "default/adapters/adp_sym1/etc").symlink_to(secret.parent, target_is_directory=True)

    resp = client.get("/v0/adapters/adp_sym1/download")

    assert resp.status_code == 200, resp.text
    assert SECRET not in resp.content
    with tarfile.open(fileobj=io.BytesIO(resp.content), mode="r:gz") as tar:
        members = tar.getmembers()
    assert sorted(m.name for m in members) == ["adapter_config.json", "adapter_model.safetensors"]
    assert all(m.isfile() for m in members)


# -- the drop scanner --------------------------------------------------------------------------
@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[World]:
    """The drop tests' world (local store, recording backend) on SQLite and PostgreSQL."""
    settings = Settings(
        home=tmp_path / "home",
        database_url=db_url,
        log_json=False,
        background_tasks=False,
        drop_settle_seconds=0,
    )
    backend = RecordingBackend()
    ctx = AppContext.build(settings, backend=backend)
    w = World(settings, ctx, backend, Clock())
    ctx.drops = w.worker()
    add_tenant(ctx)
    yield w
    ctx.close()


def test_a_symlinked_drop_is_rejected_not_read(world: World) -> None:
    store = world.store
    assert isinstance(store, LocalStore)
    # Another tenant's split, and a link to it dropped into the default tenant's drop folder.
    store.put_bytes("victim/datasets/ds_victim/train.jsonl", jsonl(rows()))
    (store.root / "drop" / TENANT).mkdir(parents=True)
    link_key = f"drop/{TENANT}/x.jsonl"
    (store.root / link_key).symlink_to(store.root / "victim/datasets/ds_victim/train.jsonl")
    store.put_bytes(f"drop/{TENANT}/x.fastuner.json", json.dumps({"job": {"base_model": SMOL}}).encode())
    ok = drop(store, "fine", jsonl(rows()), sidecar={"job": {"base_model": SMOL, "max_steps": 40}})

    outcomes = {o.key: o for o in world.ctx.drops.scan_once()}

    assert outcomes[link_key].action == "rejected"
    assert "symbolic link" in outcomes[link_key].message
    status = status_of(store, link_key)
    assert status["state"] == "rejected" and "symbolic link" in status["message"]
    assert outcomes[ok].action == "started"  # a plain drop beside it is unaffected
    (fine,) = datasets(world.ctx)
    assert fine.name == "fine"
    assert {r.key: r.status for r in ledger(world.ctx)}[link_key] == "rejected"
    assert world.ctx.drops.scan_once() == []  # rejected once, not on every scan
    assert (store.root / link_key).is_symlink()  # left for the user to remove; never followed


def test_a_symlinked_sidecar_is_rejected(world: World, secret: Path) -> None:
    store = world.store
    assert isinstance(store, LocalStore)
    key = drop(store, "x", jsonl(rows()))
    (store.root / f"drop/{TENANT}/x.fastuner.json").symlink_to(secret)

    (outcome,) = world.ctx.drops.scan_once()

    assert outcome.action == "rejected"
    status = status_of(store, key)
    assert "symbolic link" in status["errors"][0]
    with world.ctx.db.session() as s:
        assert list(s.scalars(select(models.DatasetRow))) == []
