"""Dynamic batching, the bounded queue, deadlines, cancellation and SSE streaming of ``loraserve``.

Deterministic: batches are formed while the scheduler is paused, deadlines use an injected clock,
waits poll for a condition (never sleep-then-assert).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.inference.support import PROMPT, ClientFactory, Reference

N = 8
PROMPTS = [PROMPT, "Once upon a time in a land far", "hi", "fox jumps over the lazy dog again and"]


def params(**kw: Any) -> Any:
    from loraserve.schemas import GenerationParameters

    kw.setdefault("max_new_tokens", N)
    return GenerationParameters(**kw)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)


def sse_events(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            events.append(json.loads(block[len("data: ") :]))
    return events


# ----------------------------------------------------------------------------------- batching


def test_mixed_adapter_batch_equals_each_alone(make_engine: Callable[..., Any], reference: Reference) -> None:
    engine = make_engine(max_batch_size=16)
    jobs = [(adapter, prompt) for prompt in PROMPTS for adapter in (None, "adp_a", "adp_b")]
    engine.scheduler.pause()
    tickets = [engine.submit([prompt], adapter, params()) for adapter, prompt in jobs]
    # Sampled rows in the same batch: each with its own seed, the same as when served alone.
    sampled = params(temperature=1.0, top_p=0.9, top_k=50, seed=7)
    tickets.append(engine.submit([PROMPT], "adp_a", sampled))
    engine.scheduler.resume()
    results = [t.wait(60) for t in tickets]
    assert engine.scheduler.batches == 1 and engine.scheduler.largest_batch == len(jobs) + 1
    for (adapter, prompt), result in zip(jobs, results[:-1], strict=True):
        text, new_ids = reference.generate(adapter, prompt, N)
        assert result[0].generated_text == text, (adapter, prompt)
        assert result[0].completion_tokens == len(new_ids)
    alone = engine.generate([PROMPT], "adp_a", sampled)
    assert results[-1] == alone
    assert engine.scheduler.batches == 2


def test_batches_after_a_mixed_batch_switch_the_lora_layers_correctly(
    make_engine: Callable[..., Any], reference: Reference
) -> None:
    """The engine switches the LoRA layers (off, one adapter, mixed) only when a batch needs another
    state: base, single-adapter and mixed batches in any order each match plain PEFT."""
    engine = make_engine(max_batch_size=16)
    mixed = [(None, PROMPTS[0]), ("adp_a", PROMPTS[1]), ("adp_b", PROMPTS[3])]
    order: list[list[tuple[str | None, str]]] = [
        [("adp_a", PROMPT)],
        mixed,
        [(None, PROMPT)],
        [("adp_b", PROMPT)],
        mixed,
        [("adp_a", PROMPT)],
    ]
    for jobs in order:
        engine.scheduler.pause()
        tickets = [engine.submit([prompt], adapter, params()) for adapter, prompt in jobs]
        engine.scheduler.resume()
        for (adapter, prompt), ticket in zip(jobs, tickets, strict=True):
            assert ticket.wait(60)[0].generated_text == reference.text(adapter, prompt, N), (adapter, jobs)
    assert engine.scheduler.batches == len(order)


def test_several_inputs_of_one_request_are_one_batch(
    make_engine: Callable[..., Any], reference: Reference
) -> None:
    engine = make_engine(max_batch_size=4)
    out = engine.generate(PROMPTS, "adp_b", params())
    assert [o.generated_text for o in out] == [reference.text("adp_b", p, N) for p in PROMPTS]
    assert engine.scheduler.batches == 1


def test_batches_are_capped_and_serial_mode_still_matches(
    make_engine: Callable[..., Any], reference: Reference
) -> None:
    engine = make_engine(max_batch_size=1)
    engine.scheduler.pause()
    tickets = [engine.submit([p], a, params()) for p in PROMPTS[:2] for a in ("adp_a", "adp_b")]
    engine.scheduler.resume()
    texts = [t.wait(60)[0].generated_text for t in tickets]
    assert texts == [reference.text(a, p, N) for p in PROMPTS[:2] for a in ("adp_a", "adp_b")]
    assert engine.scheduler.batches == 4 and engine.scheduler.largest_batch == 1


# ---------------------------------------------------------------------------------- deadlines


def test_deadline_ends_the_request_with_what_it_has(
    make_engine: Callable[..., Any], reference: Reference
) -> None:
    engine = make_engine(min_tokens_per_s=0)
    sched = engine.scheduler
    # The clock jumps an hour ahead once three tokens have been generated.
    sched.clock = lambda: time.monotonic() + (3600.0 if sched.tokens_generated >= 3 else 0.0)
    out = engine.generate([PROMPT], "adp_a", params(max_new_tokens=200))[0]
    assert out.finish_reason == "deadline" and out.completion_tokens == 3
    assert reference.text("adp_a", PROMPT, 200).startswith(out.generated_text)


def test_deadline_before_any_token_is_504(make_engine: Callable[..., Any]) -> None:
    from loraserve.errors import DeadlineExceeded

    engine = make_engine()
    offset = [0.0]
    engine.scheduler.clock = lambda: time.monotonic() + offset[0]
    engine.scheduler.pause()
    ticket = engine.submit([PROMPT], None, params(), deadline_s=5)
    offset[0] = 10.0  # still queued when its deadline passes
    engine.scheduler.resume()
    with pytest.raises(DeadlineExceeded) as err:
        ticket.wait(30)
    assert err.value.status == 504 and err.value.code == "deadline_exceeded"


def test_deadline_over_http(make_client: ClientFactory) -> None:
    with make_client(min_tokens_per_s=0) as client:
        engine = client.app.state.engine  # type: ignore[attr-defined]
        sched = engine.scheduler
        start = sched.tokens_generated
        sched.clock = lambda: time.monotonic() + (3600.0 if sched.tokens_generated >= start + 2 else 0.0)
        body = {"inputs": PROMPT, "deadline_s": 5, "parameters": {"max_new_tokens": 100}}
        r = client.post("/invocations", json=body)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["finish_reason"] == "deadline" and out["completion_tokens"] == 2
        # Nothing produced (the deadline passes while the request is queued): 504.
        offset = [0.0]
        sched.clock = lambda: time.monotonic() + offset[0]
        sched.pause()
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.post, "/invocations", json=body)
            wait_for(lambda: sched.queued() == 1)
            offset[0] = 10.0
            sched.resume()
            r = pending.result(60)
        assert r.status_code == 504 and r.json()["code"] == "deadline_exceeded"


def test_token_budget_is_checked_against_the_deadline(make_client: ClientFactory) -> None:
    with make_client(deadline_s=10, min_tokens_per_s=20) as client:
        r = client.post("/invocations", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 201}})
        assert r.status_code == 400 and r.json()["code"] == "token_budget_exceeds_deadline"
        assert "at most 200" in r.json()["message"]
        r = client.post(
            "/invocations", json={"inputs": PROMPT, "deadline_s": 1, "parameters": {"max_new_tokens": 21}}
        )
        assert r.status_code == 400 and r.json()["code"] == "token_budget_exceeds_deadline"
        r = client.post("/invocations", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 2}})
        assert r.status_code == 200


# ------------------------------------------------------------------------ queue, cancellation


def test_full_queue_is_429_with_retry_after_and_recovers(
    make_client: ClientFactory, reference: Reference
) -> None:
    with make_client(max_queue=2, max_batch_size=1) as client:
        engine = client.app.state.engine  # type: ignore[attr-defined]
        engine.scheduler.pause()
        held = [engine.submit([PROMPT], "adp_a", params()) for _ in range(2)]
        r = client.post("/invocations", json={"inputs": PROMPT, "parameters": {"max_new_tokens": N}})
        assert r.status_code == 429 and r.json()["code"] == "queue_full"
        assert int(r.headers["retry-after"]) >= 1
        engine.scheduler.resume()
        assert all(t.wait(60)[0].generated_text == reference.text("adp_a", PROMPT, N) for t in held)
        r = client.post("/invocations", json={"inputs": PROMPT, "parameters": {"max_new_tokens": N}})
        assert r.status_code == 200 and r.json()["outputs"][0]["generated_text"] == reference.text(
            None, PROMPT, N
        )
        # A request with more inputs than the queue can ever hold is a 400, not a retry loop.
        r = client.post("/invocations", json={"inputs": [PROMPT] * 3})
        assert r.status_code == 400 and r.json()["code"] == "too_many_inputs"


def test_cancelling_a_queued_request_frees_its_places(make_engine: Callable[..., Any]) -> None:
    from loraserve.errors import Cancelled, QueueFull

    engine = make_engine(max_queue=2)
    engine.scheduler.pause()
    ticket = engine.submit([PROMPT, "hi"], None, params())
    with pytest.raises(QueueFull):
        engine.submit([PROMPT], None, params())
    engine.scheduler.cancel(ticket)
    assert engine.scheduler.queued() == 0
    with pytest.raises(Cancelled):
        ticket.wait(1)
    other = engine.submit([PROMPT], None, params())
    engine.scheduler.resume()
    assert other.wait(60)[0].completion_tokens >= 1


@contextmanager
def real_server(engine: Any) -> Iterator[str]:
    """uvicorn in a thread on a free port (a real socket, so a client can really go away)."""
    import uvicorn
    from loraserve.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine=engine), log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


def test_client_disconnect_frees_its_slot(make_engine: Callable[..., Any], reference: Reference) -> None:
    engine = make_engine(max_batch_size=1, max_queue=1, min_tokens_per_s=0)
    sched = engine.scheduler
    long = {"inputs": PROMPT, "stream": True, "parameters": {"max_new_tokens": 400}}
    with real_server(engine) as url, httpx.Client(base_url=url, timeout=30) as http:
        with http.stream("POST", "/invocations", json=long) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            first = next(r.iter_lines())
            assert json.loads(first.removeprefix("data: "))["type"] == "token"
        # The client is gone: its row is dropped, the worker is idle again.
        wait_for(lambda: sched.running == 0 and sched.queued() == 0)
        body = {"inputs": PROMPT, "adapter": "adp_b", "parameters": {"max_new_tokens": N}}
        r2 = http.post("/invocations", json=body)
        assert r2.status_code == 200 and r2.json()["outputs"][0]["generated_text"] == reference.text(
            "adp_b", PROMPT, N
        )
        assert sched.tokens_generated < 400  # the long request never ran to its end


# ------------------------------------------------------------------------------------ streaming


@pytest.mark.parametrize(
    ("adapter", "extra"),
    [(None, {}), ("adp_a", {}), ("adp_b", {"stop": [" the", "e"]}), ("adp_a", {"max_new_tokens": 3})],
)
def test_stream_yields_the_same_text_as_the_plain_call(
    make_client: ClientFactory, adapter: str | None, extra: dict[str, Any]
) -> None:
    body = {"inputs": PROMPT, "adapter": adapter, "parameters": {"max_new_tokens": 12, **extra}}
    with make_client() as client:
        plain = client.post("/invocations", json=body)
        assert plain.status_code == 200
        r = client.post("/invocations", json={**body, "stream": True})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.text)
    *tokens, done = events
    assert all(e["type"] == "token" and e["text"] for e in tokens)
    assert done["type"] == "done" and done["adapter_id"] == adapter and done["latency_ms"] > 0
    assert done["output"] == plain.json()["outputs"][0]
    assert "".join(e["text"] for e in tokens) == done["output"]["generated_text"]


def test_stream_errors_before_generation_are_plain_http(make_client: ClientFactory) -> None:
    with make_client() as client:
        r = client.post("/invocations", json={"inputs": [PROMPT, "hi"], "stream": True})
        assert r.status_code == 400 and r.json()["code"] == "bad_request"
        r = client.post("/invocations", json={"inputs": PROMPT, "adapter": "adp_missing", "stream": True})
        assert r.status_code == 404 and r.json()["code"] == "adapter_not_found"
        r = client.post("/invocations", json={"inputs": PROMPT, "adapter": "adp_bad", "stream": True})
        assert r.status_code == 422 and r.json()["code"] == "adapter_invalid"


def test_stream_deadline_is_in_the_done_event(make_client: ClientFactory) -> None:
    with make_client(min_tokens_per_s=0) as client:
        sched = client.app.state.engine.scheduler  # type: ignore[attr-defined]
        sched.clock = lambda: time.monotonic() + (3600.0 if sched.tokens_generated >= 4 else 0.0)
        body = {"inputs": PROMPT, "stream": True, "parameters": {"max_new_tokens": 100}}
        done = sse_events(client.post("/invocations", json=body).text)[-1]
    assert done["type"] == "done" and done["output"]["finish_reason"] == "deadline"
    assert done["output"]["completion_tokens"] == 4
