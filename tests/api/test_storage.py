"""The same ObjectStore contract against the local directory and S3 (moto)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from api.storage.base import ObjectStore, download_prefix, upload_dir
from api.storage.local import LocalStore
from api.storage.s3 import S3Store


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
        return
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="fastuner-test")
        yield S3Store("fastuner-test", prefix="pfx", region="us-east-1")


def test_put_get_exists_delete(store: ObjectStore, tmp_path: Path) -> None:
    info = store.put_bytes("t/a/b.txt", b"hello")
    assert info.size == 5
    assert store.exists("t/a/b.txt")
    assert store.get_bytes("t/a/b.txt") == b"hello"
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 3000)
    assert store.put_file("t/a/c.bin", src).size == 3000
    with store.open_read("t/a/c.bin") as fh:
        assert fh.read() == b"x" * 3000
    dest = tmp_path / "out" / "c.bin"
    store.download_file("t/a/c.bin", dest)
    assert dest.read_bytes() == b"x" * 3000
    store.delete("t/a/b.txt")
    store.delete("t/a/b.txt")  # missing is fine
    assert not store.exists("t/a/b.txt")


def test_missing_objects_raise_file_not_found(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.get_bytes("t/none.txt")
    with pytest.raises(FileNotFoundError):
        store.download_file("t/none.txt", tmp_path / "x")
    assert not store.exists("t/none.txt")


def test_list_and_delete_prefix_stay_inside_the_prefix(store: ObjectStore) -> None:
    for key in ("t/ds/a.jsonl", "t/ds/sub/b.jsonl", "t/ds2/c.jsonl", "t/other.json"):
        store.put_bytes(key, b"1")
    assert sorted(i.key for i in store.list("t/ds/")) == ["t/ds/a.jsonl", "t/ds/sub/b.jsonl"]
    assert store.delete_prefix("t/ds/") == 2
    assert sorted(i.key for i in store.list("t/")) == ["t/ds2/c.jsonl", "t/other.json"]


def test_uri_round_trip(store: ObjectStore) -> None:
    uri = store.uri("t/x/y.json")
    assert uri in ("s3://fastuner-test/pfx/t/x/y.json", "store://t/x/y.json")  # never a server path
    assert store.key_from_uri(uri) == "t/x/y.json"
    with pytest.raises(ValueError):
        store.key_from_uri("s3://elsewhere/t/x/y.json")


@pytest.mark.parametrize("bad", ["", "/abs", "a/../b", "a//b", "./a", "a\\b"])
def test_rejects_escaping_keys(store: ObjectStore, bad: str) -> None:
    with pytest.raises(ValueError):
        store.put_bytes(bad, b"x")


def test_upload_and_download_dir(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "adapter"
    (src / "nested").mkdir(parents=True)
    (src / "adapter_config.json").write_text("{}")
    (src / "nested" / "w.bin").write_bytes(b"\0" * 10)
    upload_dir(store, src, "t/adapters/adp_1")
    out = tmp_path / "back"
    got = download_prefix(store, "t/adapters/adp_1", out)
    assert sorted(p.relative_to(out).as_posix() for p in got) == ["adapter_config.json", "nested/w.bin"]
    assert (out / "nested" / "w.bin").read_bytes() == b"\0" * 10


def test_local_writes_are_atomic(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")

    def boom(_fh: object) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        store._atomic_write("t/k.txt", boom)
    assert not store.exists("t/k.txt")
    assert list(store.list("t/")) == []
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "s").rglob("*"))
