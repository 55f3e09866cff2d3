"""Adapter sources: S3 prefixes (moto), file:// URIs and plain directories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.inference.support import PROMPT, TENANT, ClientFactory, Reference, Store, mocked_bucket

BUCKET = "fastuner-test-artifacts"


@pytest.fixture
def s3(store: Store) -> Iterator[Any]:
    """A mocked bucket holding ``<tenant>/adapters/<adp>/...`` exactly like the local store."""
    with mocked_bucket(BUCKET, store.root) as client:
        # A stray object in a nested folder must not be downloaded (only the PEFT folder's top level).
        client.put_object(Bucket=BUCKET, Key=f"{TENANT}/adapters/adp_a/checkpoint-1/junk.bin", Body=b"x")
        yield client


def test_s3_prefix_downloads_once_and_serves(
    s3: Any, make_client: ClientFactory, reference: Reference, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"  # make_client's cache dir
    with make_client(prefix=f"s3://{BUCKET}/{TENANT}/adapters") as client:
        for adapter in ("adp_a", "adp_b", "adp_a", None):
            r = client.post(
                "/invocations",
                json={"inputs": PROMPT, "adapter": adapter, "parameters": {"max_new_tokens": 6}},
            )
            assert r.status_code == 200, r.text
            assert r.json()["outputs"][0]["generated_text"] == reference.text(adapter, PROMPT, 6)
        assert sorted(p.name for p in cache.iterdir()) == ["adp_a", "adp_b"]
        assert (cache / "adp_a" / "adapter_config.json").is_file()
        assert not (cache / "adp_a" / "checkpoint-1").exists()
        # Missing adapter under an S3 prefix: 404, nothing cached, still serving.
        r = client.post("/invocations", json={"inputs": PROMPT, "adapter": "adp_nope"})
        assert r.status_code == 404 and r.json()["code"] == "adapter_not_found"
        assert not (cache / "adp_nope").exists()
        # Objects but no adapter_config.json: broken, not missing.
        r = client.post("/invocations", json={"inputs": PROMPT, "adapter": "adp_noconfig"})
        assert r.status_code == 422 and r.json()["code"] == "adapter_invalid"


def test_s3_cache_is_reused_without_listing(s3: Any, tmp_path: Path) -> None:
    from loraserve.store import S3Source

    cache = tmp_path / "c"
    first = S3Source(f"s3://{BUCKET}/{TENANT}/adapters/", cache)
    path = first.fetch("adp_b")
    assert path == cache / "adp_b" and (path / "adapter_model.safetensors").is_file()

    class NoCalls:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"S3 was called ({name}) although the adapter is cached")

    assert S3Source(f"s3://{BUCKET}/{TENANT}/adapters", cache, client=NoCalls()).fetch("adp_b") == path
    assert not [p for p in cache.iterdir() if p.name.startswith(".")], "temp dirs left behind"


def test_s3_missing_bucket_is_not_found(s3: Any, tmp_path: Path) -> None:
    from loraserve.errors import AdapterNotFound
    from loraserve.store import S3Source

    with pytest.raises(AdapterNotFound):
        S3Source("s3://no-such-bucket/x", tmp_path).fetch("adp_a")


def test_s3_access_errors_are_502_not_404(tmp_path: Path) -> None:
    from botocore.exceptions import ClientError
    from loraserve.errors import AdapterFetchFailed
    from loraserve.store import S3Source

    class Denied:
        def get_paginator(self, name: str) -> Any:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "ListObjectsV2")

    with pytest.raises(AdapterFetchFailed) as info:
        S3Source("s3://b/p", tmp_path, client=Denied()).fetch("adp_a")
    assert info.value.status == 502


def test_s3_base_model(s3: Any, store: Store, tmp_path: Path) -> None:
    from loraserve.store import resolve_base_model

    for path in store.base.iterdir():
        s3.upload_file(str(path), BUCKET, f"models/tiny/{path.name}")
    local = Path(resolve_base_model(f"s3://{BUCKET}/models/tiny", tmp_path, client=s3))
    assert (local / "config.json").is_file() and (local / "tokenizer.json").is_file()
    with pytest.raises(FileNotFoundError):
        resolve_base_model(f"s3://{BUCKET}/models/none", tmp_path / "x", client=s3)


def test_local_sources(store: Store, tmp_path: Path) -> None:
    from loraserve.errors import AdapterNotFound, BadRequest
    from loraserve.store import LocalSource, NoSource, make_source

    by_uri = make_source(store.file_uri, tmp_path)
    by_dir = make_source(str(store.prefix), tmp_path)
    assert isinstance(by_uri, LocalSource) and isinstance(by_dir, LocalSource)
    assert by_uri.fetch("adp_a") == by_dir.fetch("adp_a") == store.prefix / "adp_a"
    with pytest.raises(AdapterNotFound):
        by_dir.fetch("adp_zzz")
    with pytest.raises(BadRequest):
        by_dir.fetch("../adapters")
    assert isinstance(make_source(None, tmp_path), NoSource)
    with pytest.raises(ValueError, match="unsupported"):
        make_source("gs://bucket/x", tmp_path)
