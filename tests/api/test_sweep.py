"""The sweep (issue 12, item 2): scratch of dead processes, partial writes and objects with no row go;
live data never does. On SQLite and PostgreSQL, local store and S3 (moto)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from api.context import AppContext
from api.db import models
from api.services import scratch
from api.services.sweep import Sweeper
from api.settings import Settings
from api.storage.base import ObjectStore
from api.storage.local import LocalStore
from api.storage.s3 import S3Store
from tests.support.rows import add_dataset

GRACE = 600.0
LATER = GRACE + 60  # seconds: a clock this far ahead sees everything written now as expired


def _old(path: Path) -> None:
    """Make ``path`` and everything below it look ``LATER`` seconds old."""
    t = time.time() - LATER
    for p in [path, *path.rglob("*")]:
        os.utime(p, (t, t), follow_symlinks=False)


def _dead_owner_scratch(work: Path) -> Path:
    """A scratch folder with an upload in it, owned by a process that has exited."""
    code = (
        "import sys; from pathlib import Path; from api.services import scratch;"
        "p = scratch.owner_dir(Path(sys.argv[1])); (p / 'upload-x.jsonl').write_bytes(b'x' * 4096);"
        "d = p / 'ds_abc-1'; d.mkdir(); (d / 'train.jsonl').write_bytes(b'y' * 4096); print(p)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(work)], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def test_scratch_of_a_dead_owner_goes_at_once_a_live_owners_stays(tmp_path: Path) -> None:
    work = tmp_path / "work"
    dead = _dead_owner_scratch(work)
    with scratch.directory(work, "ds_live-") as live:
        (live / "train.jsonl").write_bytes(b"z" * 100)
        _old(live.parent)  # age does not matter while the owner lives

        swept = scratch.sweep(work, GRACE)

        assert swept.removed == [str(dead)] and swept.bytes == 8192
        assert (live / "train.jsonl").is_file()
        assert scratch.sweep(work, 0).removed == []
    assert not live.exists()


def test_older_scratch_names_go_after_the_grace_backend_folders_never(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "ds_abc123-xyz").mkdir(parents=True)
    (work / "ds_abc123-xyz" / "train.jsonl").write_bytes(b"a" * 10)
    (work / "upload-1234.jsonl").write_bytes(b"b" * 10)
    (work / "ft_abc123-qq").mkdir()
    for keep in ("jobs/ft_abc123", "endpoints/dep_1"):
        (work / keep).mkdir(parents=True)
        (work / keep / "model.bin").write_bytes(b"c" * 10)

    assert scratch.sweep(work, GRACE).removed == []  # young: maybe a live writer
    _old(work)
    swept = scratch.sweep(work, GRACE)

    assert sorted(Path(p).name for p in swept.removed) == [
        "ds_abc123-xyz",
        "ft_abc123-qq",
        "upload-1234.jsonl",
    ]
    assert (work / "jobs/ft_abc123/model.bin").is_file() and (work / "endpoints/dep_1/model.bin").is_file()


@pytest.fixture(params=["local", "s3"])
def ctx(request: pytest.FixtureRequest, db_url: str, tmp_path: Path) -> Iterator[AppContext]:
    settings = Settings(
        home=tmp_path / "home",
        database_url=db_url,
        log_json=False,
        background_tasks=False,
        sweep_grace_seconds=GRACE,
    )
    if request.param == "local":
        c = AppContext.build(settings)
        yield c
        c.close()
        return
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="sweep-test")
        c = AppContext.build(settings, store=S3Store("sweep-test", prefix="p", region="us-east-1"))
        yield c
        c.close()


def _dataset_row(ctx: AppContext, dataset_id: str, status: str = "ready") -> None:
    add_dataset(ctx.db, dataset_id, tenant_id="acme", status=status)


def _put(store: ObjectStore, prefix: str) -> None:
    store.put_bytes(f"{prefix}/train.jsonl", b"t" * 1000)
    store.put_bytes(f"{prefix}/manifest.json", b"{}")


def _keys(store: ObjectStore) -> list[str]:
    return sorted(i.key for i in store.list(""))


def test_objects_with_no_row_go_after_the_grace_live_data_stays(ctx: AppContext) -> None:
    store = ctx.store
    with ctx.db.session() as s:
        s.add(models.TenantRow(id="acme", admissions=0))
    _dataset_row(ctx, "ds_live")
    _dataset_row(ctx, "ds_going", status="deleting")  # a delete in progress owns its objects
    for prefix in (
        "acme/datasets/ds_live",
        "acme/datasets/ds_going",
        "acme/datasets/ds_orphan",
        "acme/adapters/adp_orphan",
        "acme/datasets/ds_writing",
    ):
        _put(store, prefix)
    store.put_bytes("acme/jobs/ft_1/output/model.tar.gz", b"m")  # not an owned kind: never judged
    store.put_bytes("drop/acme/x.jsonl", b"{}")

    now = Sweeper(ctx.db, store, ctx.settings).run_once()
    assert now.prefixes_removed == [] and now.errors == []  # nothing is older than the grace yet

    with scratch.claim("acme/datasets/ds_writing"):  # a create of this process, still running
        report = Sweeper(ctx.db, store, ctx.settings, clock=lambda: time.time() + LATER).run_once()

    assert report.errors == []
    assert sorted(report.prefixes_removed) == ["acme/adapters/adp_orphan", "acme/datasets/ds_orphan"]
    assert report.object_bytes == 2 * 1002
    assert _keys(store) == [
        "acme/datasets/ds_going/manifest.json",
        "acme/datasets/ds_going/train.jsonl",
        "acme/datasets/ds_live/manifest.json",
        "acme/datasets/ds_live/train.jsonl",
        "acme/datasets/ds_writing/manifest.json",
        "acme/datasets/ds_writing/train.jsonl",
        "acme/jobs/ft_1/output/model.tar.gz",
        "drop/acme/x.jsonl",
    ]


def test_a_row_written_meanwhile_keeps_its_objects(ctx: AppContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """The row is looked up again right before the delete (a create finishing during the pass)."""
    store = ctx.store
    _dataset_row(ctx, "ds_other")
    _put(store, "acme/datasets/ds_late")
    sweeper = Sweeper(ctx.db, store, ctx.settings, clock=lambda: time.time() + LATER)
    real = sweeper._existing

    def existing_then_row(table: type[models.DatasetRow], ids: object) -> set[str]:
        found = real(table, ids)  # type: ignore[arg-type]
        if table is models.DatasetRow:
            _dataset_row(ctx, "ds_late")
        return found

    monkeypatch.setattr(sweeper, "_existing", existing_then_row)
    assert sweeper.run_once().prefixes_removed == []
    assert store.exists("acme/datasets/ds_late/train.jsonl")


def test_partial_writes_go_after_the_grace(ctx: AppContext) -> None:
    store = ctx.store
    if isinstance(store, LocalStore):
        folder = store.root / "acme" / "datasets" / "ds_x"
        folder.mkdir(parents=True)
        (folder / ".tmp-abc").write_bytes(b"p" * 500)
        assert Sweeper(ctx.db, store, ctx.settings).run_once().partials_removed == 0
        _old(folder)
        report = Sweeper(ctx.db, store, ctx.settings).run_once()
        assert (report.partials_removed, report.partial_bytes) == (1, 500)
        assert not (store.root / "acme").exists()
        return
    assert isinstance(store, S3Store)
    upload = store.client.create_multipart_upload(Bucket=store.bucket, Key="p/acme/datasets/ds_x/train.jsonl")
    store.client.upload_part(
        Bucket=store.bucket,
        Key="p/acme/datasets/ds_x/train.jsonl",
        UploadId=upload["UploadId"],
        PartNumber=1,
        Body=b"p" * 500,
    )
    # (moto reports every upload as initiated in 2010, so only the expired case can be shown here)
    report = Sweeper(ctx.db, store, ctx.settings, clock=lambda: time.time() + LATER).run_once()
    assert (report.partials_removed, report.partial_bytes) == (1, 500)
    assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []
