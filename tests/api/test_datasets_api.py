"""Dataset REST round trips on SQLite/PostgreSQL and local/S3 stores, and all-or-nothing writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import func, select

from api.db import models
from api.storage.base import ObjectInfo, ObjectStore
from api.storage.local import LocalStore
from api.storage.s3 import S3Store
from tests.api.support import MakeClient, rows, upload, write_jsonl


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "objects")
        return
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="ft-data")
        yield S3Store("ft-data", region="us-east-1")


def _keys(store: ObjectStore) -> list[str]:
    return sorted(i.key for i in store.list(""))


def _dataset_rows(client: Any) -> int:
    ctx = client.app.state.ctx
    with ctx.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(models.DatasetRow)) or 0)


def test_round_trip_on_every_database(
    make_client: MakeClient, db_url: str, good_file: Path, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "objects")
    client = make_client(database_url=db_url, store=store)
    resp = upload(client, good_file, name="questions", seed=3, split="0.8,0.1,0.1")
    assert resp.status_code == 201, resp.text
    ds = resp.json()
    assert ds["id"].startswith("ds_") and ds["name"] == "questions" and ds["format"] == "input_target"
    assert ds["row_counts"] == {"train": 96, "validation": 12, "test": 12}
    assert client.get(f"/v0/datasets/{ds['id']}").json() == ds
    assert [d["id"] for d in client.get("/v0/datasets").json()["items"]] == [ds["id"]]
    manifest = client.get(f"/v0/datasets/{ds['id']}/manifest").json()
    assert manifest["seed"] == 3 and manifest["content_sha256"] == ds["content_sha256"]
    assert {k: v["rows"] for k, v in manifest["splits"].items()} == ds["row_counts"]
    preview = client.get(
        f"/v0/datasets/{ds['id']}/preview", params={"split": "validation", "limit": 2}
    ).json()
    assert len(preview["rows"]) == 2
    assert preview["rows"][0]["messages"][-1]["role"] == "assistant"
    prefix = f"default/datasets/{ds['id']}/"
    assert _keys(store) == [
        prefix + f for f in ("manifest.json", "test.jsonl", "train.jsonl", "validation.jsonl")
    ]
    assert client.delete(f"/v0/datasets/{ds['id']}").status_code == 204
    assert client.get(f"/v0/datasets/{ds['id']}").status_code == 404
    assert _keys(store) == []


def test_round_trip_on_every_store(make_client: MakeClient, store: ObjectStore, good_file: Path) -> None:
    client = make_client(store=store)
    ds = upload(client, good_file).json()
    manifest_uri = ds["manifest_uri"]
    assert store.key_from_uri(manifest_uri) == f"default/datasets/{ds['id']}/manifest.json"
    manifest = json.loads(store.get_bytes(store.key_from_uri(manifest_uri)))
    train = store.get_bytes(store.key_from_uri(manifest["splits"]["train"]["uri"])).decode().splitlines()
    assert len(train) == ds["row_counts"]["train"] == manifest["splits"]["train"]["rows"]


def test_listing_paginates(make_client: MakeClient, good_file: Path) -> None:
    client = make_client()
    ids = [upload(client, good_file, name=f"d{i}").json()["id"] for i in range(3)]
    page = client.get("/v0/datasets", params={"limit": 2}).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = client.get("/v0/datasets", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert rest["next_cursor"] is None
    assert sorted(d["id"] for d in page["items"] + rest["items"]) == sorted(ids)


def test_invalid_dataset_is_422_with_report_and_stores_nothing(
    make_client: MakeClient, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "objects")
    client = make_client(store=store)
    bad = rows(120)
    bad[5] = {"input": "only input"}
    path = write_jsonl(tmp_path / "bad.jsonl", bad)
    with path.open("a") as fh:
        fh.write("{not json\n")
    resp = upload(client, path)
    assert resp.status_code == 422
    body = resp.json()
    assert body["code"] == "validation_failed" and body["request_id"]
    codes = {g["code"]: g for g in body["details"]["errors"]}
    assert codes["missing_field"]["lines"] == [6]
    assert codes["invalid_json"]["lines"] == [121]
    assert _keys(store) == [] and _dataset_rows(client) == 0


def test_validate_is_a_dry_run(make_client: MakeClient, good_file: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    client = make_client(store=store)
    resp = upload(client, good_file, url="/v0/datasets/validate", split="0.5,0.5")
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert report["ok"] and report["split_counts"] == {"train": 60, "validation": 60, "test": 0}
    assert _keys(store) == [] and _dataset_rows(client) == 0


def test_bad_options_are_400(make_client: MakeClient, good_file: Path) -> None:
    client = make_client()
    for fields, needle in (
        ({"split": "0.9,0.9,0.1"}, "sum to 1"),
        ({"split": "a,b"}, "numbers"),
        ({"task_type": "poetry"}, "task_type"),
        ({"colour": "red"}, "unknown form field"),
    ):
        resp = upload(client, good_file, **fields)
        assert resp.status_code == 400, (fields, resp.text)
        assert needle in resp.json()["message"]
    assert client.post("/v0/datasets", data={"name": "x"}).status_code == 400


class FailingStore:
    """Delegates to a real store but fails the n-th write, like a network error mid-upload."""

    def __init__(self, inner: ObjectStore, fail_on_write: int) -> None:
        self.inner = inner
        self.writes = 0
        self.fail_on_write = fail_on_write

    def _tick(self) -> None:
        self.writes += 1
        if self.writes == self.fail_on_write:
            raise OSError("injected: connection reset")

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        self._tick()
        return self.inner.put_file(key, path)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        self._tick()
        return self.inner.put_bytes(key, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("fail_on_write", [1, 2, 4])
def test_store_failure_mid_write_leaves_nothing(
    make_client: MakeClient, store: ObjectStore, good_file: Path, fail_on_write: int
) -> None:
    failing = FailingStore(store, fail_on_write)
    client = make_client(store=failing)  # type: ignore[arg-type]
    resp = upload(client, good_file)
    assert resp.status_code == 502
    assert resp.json()["code"] == "storage_error" and "injected" in resp.json()["message"]
    assert _keys(store) == [] and _dataset_rows(client) == 0


def test_database_failure_after_upload_removes_objects(
    make_client: MakeClient, good_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "objects")
    client = make_client(store=store)
    ctx = client.app.state.ctx  # type: ignore[attr-defined]

    def broken_session() -> Any:
        raise RuntimeError("injected: database went away")

    monkeypatch.setattr(ctx.db, "session", broken_session)
    resp = upload(client, good_file)
    assert resp.status_code == 500 and resp.json()["code"] == "internal_error"
    monkeypatch.undo()
    assert _keys(store) == [] and _dataset_rows(client) == 0


def test_delete_refused_while_a_job_uses_the_dataset(make_client: MakeClient, good_file: Path) -> None:
    client = make_client()
    ds = upload(client, good_file).json()
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.db.session() as s:
        s.add(
            models.FineTuneJobRow(
                id="ft_running1",
                tenant_id="default",
                dataset_id=ds["id"],
                base_model="m",
                method="lora",
                hyperparameters={},
                backend="local",
                instance_type="local",
                status="running",
            )
        )
    resp = client.delete(f"/v0/datasets/{ds['id']}")
    assert resp.status_code == 409 and "ft_running1" in resp.json()["message"]
    with ctx.db.session() as s:
        s.get(models.FineTuneJobRow, "ft_running1").status = "completed"  # type: ignore[union-attr]
    assert client.delete(f"/v0/datasets/{ds['id']}").status_code == 204
    assert client.get(f"/v0/datasets/{ds['id']}").status_code == 404
    with ctx.db.session() as s:  # kept for the job's lineage, hidden from users
        assert s.get(models.DatasetRow, ds["id"]).status == "deleted"  # type: ignore[union-attr]
