"""Adapter cache byte budgets (memory and disk) and broken adapters (never a crash)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.inference.support import PROMPT, ClientFactory, Reference, Store, mocked_bucket

N = 6
BUCKET = "fastuner-cache-test"


def invoke(client: Any, adapter: str | None, **kw: Any) -> Any:
    body = {"inputs": PROMPT, "adapter": adapter, "parameters": {"max_new_tokens": N}, **kw}
    return client.post("/invocations", json=body)


def test_memory_budget_evicts_least_recently_used(make_client: ClientFactory, reference: Reference) -> None:
    with make_client() as client:  # measure one adapter's weights
        invoke(client, "adp_a")
        size_a = client.get("/adapters").json()["bytes"]["adp_a"]
    assert size_a > 0
    with make_client(adapter_memory_bytes=size_a) as client:
        engine = client.app.state.engine  # type: ignore[attr-defined]
        for adapter in ("adp_a", "adp_b", "adp_a"):
            r = invoke(client, adapter)
            assert r.json()["outputs"][0]["generated_text"] == reference.text(adapter, PROMPT, N)
            assert client.get("/adapters").json()["loaded"] == [adapter]
        assert engine.evictions == 2
        # Both adapters in one batch are both kept (pinned), over budget, and both answer correctly.
        from loraserve.schemas import GenerationParameters

        p = GenerationParameters(max_new_tokens=N)
        engine.scheduler.pause()
        tickets = [engine.submit([PROMPT], a, p) for a in ("adp_a", "adp_b")]
        engine.scheduler.resume()
        texts = [t.wait(60)[0].generated_text for t in tickets]
        assert texts == [reference.text(a, PROMPT, N) for a in ("adp_a", "adp_b")]
        assert sorted(client.get("/adapters").json()["loaded"]) == ["adp_a", "adp_b"]


@pytest.fixture
def s3(store: Store) -> Iterator[Any]:
    with mocked_bucket(BUCKET, store.prefix, "adapters/") as client:
        yield client


def test_disk_budget_evicts_lru_folders_but_never_pinned_ones(s3: Any, store: Store, tmp_path: Path) -> None:
    from loraserve.store import S3Source, folder_bytes

    budget = folder_bytes(store.prefix / "adp_b")  # room for one adapter (adp_b is the larger)
    assert folder_bytes(store.prefix / "adp_a") <= budget
    cache = tmp_path / "c"
    source = S3Source(f"s3://{BUCKET}/adapters", cache, client=s3, budget_bytes=budget)
    source.fetch("adp_a")
    source.fetch("adp_b")
    assert sorted(source.cached()) == ["adp_b"] and source.evictions == 1
    # A pinned adapter (its request is queued or running) stays, even over the budget.
    source.fetch("adp_a", pin=True)
    source.fetch("adp_b")
    assert sorted(source.cached()) == ["adp_a", "adp_b"]
    source.unpin("adp_a")
    source.fetch("adp_b")  # now adp_a is the least recently used and unpinned
    assert sorted(source.cached()) == ["adp_b"]


def test_disk_budget_through_the_server(
    s3: Any, make_client: ClientFactory, reference: Reference, store: Store
) -> None:
    from loraserve.store import folder_bytes

    budget = folder_bytes(store.prefix / "adp_b")
    with make_client(prefix=f"s3://{BUCKET}/adapters", adapter_disk_bytes=budget) as client:
        for adapter in ("adp_a", "adp_b", "adp_a", None):
            r = invoke(client, adapter)
            assert r.status_code == 200, r.text
            assert r.json()["outputs"][0]["generated_text"] == reference.text(adapter, PROMPT, N)
        info = client.get("/adapters").json()
        assert info["disk_evictions"] >= 2 and info["disk_budget_bytes"] == budget


@pytest.fixture
def broken_prefix(store: Store, tmp_path: Path) -> Path:
    prefix = tmp_path / "broken"
    for name in ("adp_a",):
        shutil.copytree(store.prefix / name, prefix / name)
    shutil.copytree(store.prefix / "adp_a", prefix / "adp_trunc")
    weights = prefix / "adp_trunc" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    shutil.copytree(store.prefix / "adp_a", prefix / "adp_noweights")
    (prefix / "adp_noweights" / "adapter_model.safetensors").unlink()
    shutil.copytree(store.prefix / "adp_a", prefix / "adp_garbage")
    (prefix / "adp_garbage" / "adapter_model.safetensors").write_bytes(b"\x00" * 7)
    return prefix


@pytest.mark.parametrize("stream", [False, True])
def test_corrupt_or_missing_adapters_are_4xx_and_serving_goes_on(
    make_client: ClientFactory, reference: Reference, broken_prefix: Path, stream: bool
) -> None:
    with make_client(prefix=str(broken_prefix)) as client:
        for adapter in ("adp_trunc", "adp_noweights", "adp_garbage"):
            r = invoke(client, adapter, stream=stream)
            assert r.status_code == 422, r.text
            assert r.json()["code"] == "adapter_invalid" and adapter in r.json()["message"]
        r = invoke(client, "adp_gone", stream=stream)
        assert r.status_code == 404 and r.json()["code"] == "adapter_not_found"
        assert client.get("/adapters").json()["loaded"] == []
        for adapter in ("adp_a", None):
            r = invoke(client, adapter)
            assert r.json()["outputs"][0]["generated_text"] == reference.text(adapter, PROMPT, N)


def test_corrupt_s3_download_is_dropped_from_the_cache(
    s3: Any, make_client: ClientFactory, tmp_path: Path
) -> None:
    s3.put_object(Bucket=BUCKET, Key="adapters/adp_x/adapter_config.json", Body=b"{not json")
    with make_client(prefix=f"s3://{BUCKET}/adapters") as client:
        r = invoke(client, "adp_x")
        assert r.status_code == 422 and r.json()["code"] == "adapter_invalid"
        assert not (tmp_path / "cache" / "adp_x").exists()  # fetched again next time


def test_budget_settings_from_env(tmp_path: Path) -> None:
    from loraserve.config import ServerConfig, parse_bytes

    assert parse_bytes("512MiB") == 512 << 20 and parse_bytes("2GB") == 2 * 10**9 and parse_bytes("77") == 77
    with pytest.raises(ValueError):
        parse_bytes("lots")
    env = {
        "FASTUNER_BASE_MODEL": str(tmp_path),
        "FASTUNER_ADAPTER_MEMORY_BYTES": "1GiB",
        "FASTUNER_ADAPTER_DISK_BYTES": "10GiB",
        "FASTUNER_MAX_BATCH_SIZE": "4",
        "FASTUNER_MAX_QUEUE": "9",
        "FASTUNER_DEADLINE_S": "30",
        "FASTUNER_MIN_TOKENS_PER_S": "0",
    }
    c = ServerConfig.from_env(env)
    assert (c.adapter_memory_bytes, c.adapter_disk_bytes) == (1 << 30, 10 << 30)
    assert (c.max_batch_size, c.max_queue, c.deadline_s, c.min_tokens_per_s) == (4, 9, 30.0, 0.0)
    d = ServerConfig.from_env({"FASTUNER_BASE_MODEL": str(tmp_path)})
    assert d.deadline_s < 60 and d.max_batch_size > 1
    with pytest.raises(ValueError, match="FASTUNER_ADAPTER_DISK_BYTES"):
        ServerConfig.from_env({**env, "FASTUNER_ADAPTER_DISK_BYTES": "big"})
