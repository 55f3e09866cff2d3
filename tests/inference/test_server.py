"""The HTTP contract of the inference server, through FastAPI's TestClient."""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.inference.support import PROMPT, ClientFactory, Reference, Store

N = 6  # new tokens per request: enough to tell models apart, cheap on CPU


def invoke(client: TestClient, inputs: Any, adapter: str | None = None, **params: Any) -> Any:
    params.setdefault("max_new_tokens", N)
    return client.post("/invocations", json={"inputs": inputs, "adapter": adapter, "parameters": params})


def text_of(response: Any) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["outputs"][0]["generated_text"])


def test_ping_is_503_while_loading_then_200(store: Store, tmp_path: Path) -> None:
    from loraserve.app import create_app
    from loraserve.config import ServerConfig
    from loraserve.engine import Engine

    engine = Engine(ServerConfig(base_model=str(store.base), cache_dir=tmp_path))
    gate = threading.Event()
    real_load = engine.load

    def slow_load() -> None:
        gate.wait(30)
        real_load()

    engine.load = slow_load  # type: ignore[method-assign]
    with TestClient(create_app(engine=engine)) as client:
        r = client.get("/ping")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = invoke(client, PROMPT)
        assert r.status_code == 503 and r.json()["code"] == "model_loading"
        gate.set()
        deadline = time.monotonic() + 30
        while client.get("/ping").status_code != 200:
            assert time.monotonic() < deadline, "base model never became ready"
            time.sleep(0.02)
        assert client.get("/ping").json()["status"] == "ready"
        assert invoke(client, PROMPT).status_code == 200


def test_ping_and_adapters_never_wait_for_the_model_lock(make_client: ClientFactory) -> None:
    with make_client() as client:
        engine = client.app.state.engine  # type: ignore[attr-defined]
        with engine._lock:  # as if a long generation were running
            assert client.get("/ping").status_code == 200
            assert client.get("/adapters").json()["loaded"] == []


def test_failed_base_model_keeps_ping_503(tmp_path: Path) -> None:
    from loraserve.app import create_app
    from loraserve.config import ServerConfig

    stopped = threading.Event()
    app = create_app(
        ServerConfig(base_model=str(tmp_path / "nothing-here"), cache_dir=tmp_path),
        on_load_failure=stopped.set,
    )
    with TestClient(app) as client:
        app.state.loader.join(30)
        assert stopped.is_set()
        r = client.get("/ping")
        assert r.status_code == 503 and r.json()["status"] == "failed" and r.json()["error"]
        assert invoke(client, PROMPT).json()["code"] == "model_loading"


@pytest.mark.parametrize("prefix_kind", ["file_uri", "plain_dir"])
def test_base_and_adapters_match_direct_peft(
    make_client: ClientFactory, store: Store, reference: Reference, prefix_kind: str
) -> None:
    prefix = store.file_uri if prefix_kind == "file_uri" else str(store.prefix)
    with make_client(prefix=prefix) as client:
        got = {a: text_of(invoke(client, PROMPT, a)) for a in (None, "adp_a", "adp_b")}
        for adapter, text in got.items():
            assert text == reference.text(adapter, PROMPT, N), adapter
        assert len(set(got.values())) == 3, f"base, A and B should differ: {got}"
        body = invoke(client, PROMPT, "adp_a").json()
        assert body["adapter"] == "adp_a" and body["latency_ms"] > 0
        assert invoke(client, PROMPT).json()["adapter"] is None
        assert client.get("/adapters").json()["loaded"] == ["adp_b", "adp_a"]


def test_interleaved_requests_stay_correct(make_client: ClientFactory, reference: Reference) -> None:
    order = ["adp_a", "adp_b", None, "adp_b", "adp_a", None, "adp_a"]
    with make_client() as client:
        for adapter in order:
            assert text_of(invoke(client, PROMPT, adapter)) == reference.text(adapter, PROMPT, N), adapter


def test_concurrent_requests_for_different_adapters(make_client: ClientFactory, reference: Reference) -> None:
    order = ["adp_a", "adp_b", None] * 4
    expected = {a: reference.text(a, PROMPT, N) for a in set(order)}
    with make_client(max_adapters=1) as client, ThreadPoolExecutor(max_workers=6) as pool:
        texts = list(pool.map(lambda a: text_of(invoke(client, PROMPT, a)), order))
    assert texts == [expected[a] for a in order]


def test_lru_of_one_evicts_and_still_answers_correctly(
    make_client: ClientFactory, reference: Reference
) -> None:
    with make_client(max_adapters=1) as client:
        for adapter in ["adp_a", "adp_b", "adp_a", None, "adp_b"]:
            assert text_of(invoke(client, PROMPT, adapter)) == reference.text(adapter, PROMPT, N)
            if adapter is not None:
                assert client.get("/adapters").json()["loaded"] == [adapter]
        info = client.get("/adapters").json()
        assert info["max_adapters"] == 1 and info["evictions"] == 3


def test_lru_keeps_most_recently_used(make_client: ClientFactory) -> None:
    with make_client(max_adapters=2) as client:
        for adapter in ["adp_a", "adp_b", "adp_a", "adp_noconfig"]:
            invoke(client, PROMPT, adapter, max_new_tokens=1)
        assert client.get("/adapters").json()["loaded"] == ["adp_b", "adp_a"]


def test_missing_adapter_is_404_and_server_keeps_serving(
    make_client: ClientFactory, reference: Reference
) -> None:
    with make_client() as client:
        r = invoke(client, PROMPT, "adp_missing")
        assert r.status_code == 404
        assert r.json()["code"] == "adapter_not_found" and "adp_missing" in r.json()["message"]
        assert text_of(invoke(client, PROMPT, "adp_a")) == reference.text("adp_a", PROMPT, N)


def test_no_prefix_configured_is_404_for_adapters(make_client: ClientFactory, reference: Reference) -> None:
    with make_client(prefix=None) as client:
        r = invoke(client, PROMPT, "adp_a")
        assert r.status_code == 404 and r.json()["code"] == "adapter_not_found"
        assert text_of(invoke(client, PROMPT)) == reference.text(None, PROMPT, N)


@pytest.mark.parametrize("first", [True, False], ids=["first-adapter", "after-another"])
def test_broken_adapter_is_422_and_base_stays_clean(
    make_client: ClientFactory, reference: Reference, first: bool
) -> None:
    with make_client() as client:
        if not first:
            assert text_of(invoke(client, PROMPT, "adp_a")) == reference.text("adp_a", PROMPT, N)
        r = invoke(client, PROMPT, "adp_bad")
        assert r.status_code == 422, r.text
        assert r.json()["code"] == "adapter_invalid" and "adp_bad" in r.json()["message"]
        r = invoke(client, PROMPT, "adp_noconfig")
        assert r.status_code == 422 and r.json()["code"] == "adapter_invalid"
        assert "adp_bad" not in client.get("/adapters").json()["loaded"]
        # Neither the base model nor the other adapters were touched by the failed load.
        for adapter in (None, "adp_b", "adp_a", None):
            assert text_of(invoke(client, PROMPT, adapter)) == reference.text(adapter, PROMPT, N)


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"inputs": PROMPT, "parameters": {"max_new_tokens": 0}}, "max_new_tokens"),
        ({"inputs": PROMPT, "parameters": {"max_new_tokens": 4096}}, "max_new_tokens"),
        ({"inputs": PROMPT, "parameters": {"max_new_tokens": "many"}}, "max_new_tokens"),
        ({"inputs": PROMPT, "parameters": {"temperature": -0.5}}, "temperature"),
        ({"inputs": PROMPT, "parameters": {"top_p": 0}}, "top_p"),
        ({"inputs": PROMPT, "parameters": {"top_p": 1.5}}, "top_p"),
        ({"inputs": PROMPT, "parameters": {"stop": [""]}}, "stop"),
        ({"inputs": PROMPT, "parameters": {"seed": -1}}, "seed"),
        ({"inputs": PROMPT, "parameters": {"max_tokens": 5}}, "max_tokens"),
        ({"inputs": PROMPT, "extra": 1}, "extra"),
        ({"parameters": {}}, "inputs"),
        ({"inputs": []}, "inputs"),
        ({"inputs": 5}, "inputs"),
        ({"inputs": [1, 2]}, "inputs"),
        ({"inputs": [{"role": "user"}]}, "content"),
        ({"inputs": [[]]}, "empty conversation"),
        ({"inputs": PROMPT, "adapter": "../../etc"}, "adapter"),
        ({"inputs": PROMPT, "adapter": "adp.a"}, "adapter"),
        ({"inputs": ""}, "empty"),
        ({"inputs": [PROMPT, "brown fox " * 400]}, "context"),
    ],
)
def test_bad_requests_are_4xx_with_code_and_message(
    make_client: ClientFactory, payload: dict[str, Any], needle: str
) -> None:
    with make_client() as client:
        r = client.post("/invocations", json=payload)
        assert 400 <= r.status_code < 500, r.text
        body = r.json()
        assert set(body) == {"code", "message"}
        assert needle in body["message"], body


def test_malformed_bodies_are_400(make_client: ClientFactory) -> None:
    with make_client() as client:
        r = client.post("/invocations", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["code"] == "invalid_json"
        r = client.post("/invocations", json=[PROMPT])
        assert r.status_code == 400 and r.json()["code"] == "invalid_request"
        r = client.post("/invocations", content="\u00ff".encode("latin-1"))
        assert r.status_code == 400
        # Still serving.
        assert invoke(client, PROMPT).status_code == 200


def test_unknown_routes_use_the_error_shape(make_client: ClientFactory) -> None:
    with make_client() as client:
        r = client.get("/nope")
        assert r.status_code == 404 and r.json() == {"code": "not_found", "message": "Not Found"}
        r = client.get("/invocations")
        assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"


def test_too_many_inputs_is_400(make_client: ClientFactory) -> None:
    with make_client(max_batch_inputs=2) as client:
        r = invoke(client, ["a", "b", "c"])
        assert r.status_code == 400 and r.json()["code"] == "too_many_inputs"


def test_chat_inputs_use_the_chat_template(
    make_client: ClientFactory, reference: Reference, store: Store
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    rendered = reference.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered.endswith("<|assistant|>\n")
    with make_client() as client:
        r = invoke(client, messages, "adp_a")
        out = r.json()["outputs"]
        assert len(out) == 1
        assert out[0]["prompt_tokens"] == len(reference.ids(messages))
        assert out[0]["generated_text"] == reference.text("adp_a", messages, N)
        # A list of conversations is a batch; conversations and plain strings may be mixed.
        r = invoke(client, [messages, [{"role": "user", "content": "hi"}], PROMPT])
        outs = r.json()["outputs"]
        assert [o["generated_text"] for o in outs] == [
            reference.text(None, messages, N),
            reference.text(None, [{"role": "user", "content": "hi"}], N),
            reference.text(None, PROMPT, N),
        ]


def test_token_counts_and_finish_reason(make_client: ClientFactory, reference: Reference) -> None:
    prompts = [PROMPT, "Fine-tuning adapts a pretrained language model"]
    with make_client() as client:
        outs = invoke(client, prompts, "adp_b", max_new_tokens=5).json()["outputs"]
    assert len(outs) == 2
    for prompt, out in zip(prompts, outs, strict=True):
        text, new_ids = reference.generate("adp_b", prompt, 5)
        assert out["prompt_tokens"] == len(reference.ids(prompt))
        assert out["completion_tokens"] == len(new_ids)
        assert out["generated_text"] == text
        ended = bool(new_ids) and new_ids[-1] == reference.tokenizer.eos_token_id
        assert out["finish_reason"] == ("stop" if ended else "length")


def test_stop_strings_cut_the_text(make_client: ClientFactory, reference: Reference) -> None:
    full, new_ids = reference.generate(None, PROMPT, 12)
    # A stop string taken from the middle of the greedy continuation.
    stop = next(full[i : i + 2] for i in range(1, len(full) - 1) if full.find(full[i : i + 2]) == i)
    expected = full[: full.find(stop)]
    with make_client() as client:
        out = invoke(client, PROMPT, max_new_tokens=12, stop=[stop, "\u2603never"]).json()["outputs"][0]
        assert out["generated_text"] == expected
        assert out["finish_reason"] == "stop"
        assert out["completion_tokens"] < len(new_ids) or full.endswith(stop)
        # A single string is accepted too.
        out2 = invoke(client, PROMPT, max_new_tokens=12, stop=stop).json()["outputs"][0]
        assert out2 == out


def test_sampling_with_a_seed_is_reproducible(make_client: ClientFactory) -> None:
    with make_client() as client:
        params = {"temperature": 1.0, "top_p": 0.9, "seed": 1234, "max_new_tokens": 8}
        a = invoke(client, PROMPT, "adp_a", **params).json()["outputs"]
        b = invoke(client, PROMPT, "adp_a", **params).json()["outputs"]
        assert a == b
        assert a[0]["completion_tokens"] >= 1


def test_preload_adapters(store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from loraserve.app import load_engine
    from loraserve.config import ServerConfig
    from loraserve.engine import Engine

    config = ServerConfig(
        base_model=str(store.base),
        adapter_prefix=store.file_uri,
        cache_dir=tmp_path,
        preload_adapters=("adp_a", "adp_missing", "adp_b"),
    )
    engine = Engine(config)
    with caplog.at_level(logging.INFO, logger="loraserve"):
        load_engine(engine)
    assert engine.ready
    assert engine.loaded_adapters() == ["adp_a", "adp_b"]
    failed = [r for r in caplog.records if r.getMessage() == "adapter_preload_failed"]
    assert failed and failed[0].fields["adapter"] == "adp_missing"  # type: ignore[attr-defined]


def test_one_json_log_line_per_request(make_client: ClientFactory, caplog: pytest.LogCaptureFixture) -> None:
    from loraserve.logs import JsonFormatter

    with make_client() as client, caplog.at_level(logging.INFO, logger="loraserve"):
        invoke(client, [PROMPT, "hi"], "adp_a", max_new_tokens=3)
        invoke(client, PROMPT, "adp_missing")
    records = [r for r in caplog.records if r.getMessage() in {"invocation", "invocation_failed"}]
    assert len(records) == 2
    lines = [JsonFormatter().format(r) for r in records]
    assert all("\n" not in line for line in lines)
    ok, failed = (json.loads(line) for line in lines)
    assert ok["event"] == "invocation" and ok["adapter"] == "adp_a" and ok["inputs"] == 2
    assert ok["completion_tokens"] >= 2 and ok["prompt_tokens"] > 0 and ok["latency_ms"] > 0
    assert failed["code"] == "adapter_not_found" and failed["status"] == 404


def test_generation_is_capped_at_the_context(make_client: ClientFactory, reference: Reference) -> None:
    prompt = "fox"
    while len(reference.ids(prompt)) < 506:
        prompt += " fox"
    n_prompt = len(reference.ids(prompt))
    assert n_prompt < 512  # the tiny model's max_position_embeddings
    with make_client() as client:
        out = invoke(client, prompt, max_new_tokens=64).json()["outputs"][0]
    assert out["prompt_tokens"] == n_prompt
    assert 1 <= out["completion_tokens"] <= 512 - n_prompt
