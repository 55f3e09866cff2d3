"""Continuous batching: a request that arrives while others decode joins them at the next step.

Deterministic: the arrivals are submitted from inside the worker's own step (a wrapper around the
scheduler's ``pick_tokens``), so "while the first request is decoding" is exact, not a race. Every
output is compared with plain PEFT (greedy) or with the same request served alone (sampled).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.inference.support import PROMPT, Reference

LONG = "Once upon a time in a land far away there lived a fox who"  # longer than the running rows
SHORT = "hi"


def params(n: int, **kw: Any) -> Any:
    from loraserve.schemas import GenerationParameters

    return GenerationParameters(max_new_tokens=n, **kw)


def arrive_at(monkeypatch: pytest.MonkeyPatch, arrivals: dict[int, Callable[[], Any]]) -> list[Any]:
    """Run ``arrivals[k]`` (a submit) just before the worker picks tokens for the k-th time (1-based);
    returns the tickets they made, in order."""
    from loraserve import scheduler
    from loraserve.sampling import pick_tokens as real

    calls = 0
    tickets: list[Any] = []

    def pick(logits: Any, samplers: Any) -> list[int]:
        nonlocal calls
        calls += 1
        if calls in arrivals:
            tickets.append(arrivals[calls]())
        return real(logits, samplers)

    monkeypatch.setattr(scheduler, "pick_tokens", pick)
    return tickets


def test_requests_join_a_running_batch_and_each_equals_plain_peft(
    make_engine: Callable[..., Any], reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(max_batch_size=8)
    n = 12
    assert len(reference.generate("adp_a", PROMPT, n)[1]) == n  # the first row runs through the joins
    sampled = params(n, temperature=1.0, top_p=0.9, seed=5)
    late = arrive_at(
        monkeypatch,
        {
            3: lambda: engine.submit(
                [LONG], "adp_b", params(n)
            ),  # a longer prompt: the running rows get padded
            5: lambda: engine.submit([SHORT], None, params(n)),  # a shorter one: its own rows get padded
            6: lambda: engine.submit([PROMPT], "adp_b", sampled),
        },
    )
    first = engine.submit([PROMPT], "adp_a", params(n))
    out = first.wait(60)[0]
    results = [t.wait(60)[0] for t in late]
    assert engine.scheduler.batches == 4  # four admissions (prefills) ...
    assert engine.scheduler.largest_batch == 4  # ... all decoding together at one point
    assert (out.generated_text, out.completion_tokens) == (reference.text("adp_a", PROMPT, n), n)
    for result, (adapter, prompt) in zip(results[:2], [("adp_b", LONG), (None, SHORT)], strict=True):
        text, ids = reference.generate(adapter, prompt, n)
        assert (result.generated_text, result.completion_tokens) == (text, len(ids)), (adapter, prompt)
    monkeypatch.undo()
    assert engine.generate([PROMPT], "adp_b", sampled)[0] == results[2]  # sampled: the same alone


def test_joining_respects_max_batch_size_and_max_adapters(
    make_engine: Callable[..., Any], reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(max_batch_size=2, max_adapters=1)
    n = 8
    routed: list[set[str | None]] = []
    route = engine.adapters.route

    def spy(rows: Any) -> Any:
        routed.append(set(rows))
        return route(rows)

    monkeypatch.setattr(engine.adapters, "route", spy)
    jobs = [("adp_b", PROMPT), ("adp_a", SHORT), ("adp_a", LONG)]
    late = arrive_at(monkeypatch, {2: lambda: [engine.submit([p], a, params(n)) for a, p in jobs]})
    first = engine.submit([PROMPT], "adp_a", params(n))
    assert first.wait(60)[0].generated_text == reference.text("adp_a", PROMPT, n)
    for (adapter, prompt), ticket in zip(jobs, late[0], strict=True):
        assert ticket.wait(60)[0].generated_text == reference.text(adapter, prompt, n), (adapter, prompt)
    assert engine.scheduler.largest_batch == 2
    assert all(len(rows) == 1 for rows in routed)  # adp_b never shared a step with adp_a (one adapter)
    assert max(len(r) for r in routed) == 1 and {"adp_a"} in routed and {"adp_b"} in routed


def test_a_model_whose_cache_cannot_merge_lets_the_running_rows_finish_first(
    make_engine: Callable[..., Any], reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loraserve.batch import Batch

    monkeypatch.setattr(Batch, "mergeable", property(lambda self: False))
    engine = make_engine(max_batch_size=8)
    n = 8
    late = arrive_at(monkeypatch, {2: lambda: engine.submit([LONG], "adp_b", params(n))})
    first = engine.submit([PROMPT], "adp_a", params(n))
    assert first.wait(60)[0].generated_text == reference.text("adp_a", PROMPT, n)
    assert late[0].wait(60)[0].generated_text == reference.text("adp_b", LONG, n)
    assert engine.scheduler.batches == 2 and engine.scheduler.largest_batch == 1


def test_the_tiny_model_cache_is_mergeable(make_engine: Callable[..., Any]) -> None:
    engine = make_engine()
    with engine.lock:
        batch = engine.batch([([1, 2, 3], None)])
        assert not batch.mergeable  # nothing to merge before the prefill
        batch.prefill()
        assert batch.mergeable


def test_an_adapter_joining_never_evicts_one_a_running_row_uses(
    make_engine: Callable[..., Any], reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(max_batch_size=4, adapter_memory_bytes=1)  # every adapter is over the budget
    n = 8
    late = arrive_at(monkeypatch, {2: lambda: engine.submit([LONG], "adp_b", params(n))})
    first = engine.submit([PROMPT], "adp_a", params(n))
    assert first.wait(60)[0].generated_text == reference.text("adp_a", PROMPT, n)
    assert late[0].wait(60)[0].generated_text == reference.text("adp_b", LONG, n)
    assert engine.scheduler.largest_batch == 2


def test_preloading_never_evicts_an_adapter_a_running_row_uses(
    make_engine: Callable[..., Any], reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start-up preloading runs while requests are served (the engine is ready before it ends)."""
    engine = make_engine(max_batch_size=4, max_adapters=1)
    n = 8
    arrive_at(monkeypatch, {3: lambda: engine.preload(["adp_b"])})
    first = engine.submit([PROMPT], "adp_a", params(n))
    assert first.wait(60)[0].generated_text == reference.text("adp_a", PROMPT, n)
    assert set(engine.loaded_adapters()) == {"adp_a", "adp_b"}  # over max_adapters until adp_a is free
    deadline = time.monotonic() + 30
    while engine.adapters.in_use:  # the worker clears it right after the last row leaves
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert engine.generate([PROMPT], "adp_b", params(n))[0].generated_text == reference.text(
        "adp_b", PROMPT, n
    )
    assert engine.loaded_adapters() == ["adp_b"]


def test_the_cache_of_a_batch_that_never_empties_stays_as_long_as_its_longest_row(
    make_engine: Callable[..., Any], reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loraserve.batch import Batch

    engine = make_engine(max_batch_size=4)
    widths: list[tuple[int, int]] = []  # (cache width, longest row) before each step
    feed = Batch.feed

    def spy(self: Batch, tokens: Any) -> Any:
        widths.append((int(self.mask.shape[1]), int(self.mask.sum(dim=1).max())))
        return feed(self, tokens)

    monkeypatch.setattr(Batch, "feed", spy)
    late = arrive_at(monkeypatch, {2: lambda: engine.submit([SHORT], "adp_b", params(16))})
    first = engine.submit([LONG], "adp_a", params(3))  # the long prompt leaves after 3 tokens
    assert first.wait(60)[0].generated_text == reference.text("adp_a", LONG, 3)
    assert late[0].wait(60)[0].generated_text == reference.text("adp_b", SHORT, 16)
    assert widths[1][0] > widths[1][1] - 1 and widths[-1][0] == widths[-1][1]  # padded, then trimmed
    assert all(width == longest for width, longest in widths[3:])


def test_select_trims_the_padding_every_row_has(make_engine: Callable[..., Any]) -> None:
    import torch

    engine = make_engine()
    with engine.lock:
        both = engine.batch([([1, 2], None), ([3, 4, 5, 6, 7, 8, 9, 10], None)])
        both.prefill()
        both.select([0])
        assert both.mask.tolist() == [[1, 1]] and both.cache.get_seq_length() == 2
        alone = engine.batch([([1, 2], None)])
        alone.prefill()
        assert torch.allclose(both.feed([7]), alone.feed([7]), atol=1e-5)


def test_a_failing_step_fails_the_rows_decoding_and_serving_goes_on(
    make_engine: Callable[..., Any], reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loraserve.batch import Batch
    from loraserve.errors import ServeError

    engine = make_engine(max_batch_size=4)
    n = 8
    feed = Batch.feed
    calls = 0

    def broken(self: Batch, tokens: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("device lost")
        return feed(self, tokens)

    monkeypatch.setattr(Batch, "feed", broken)
    late = arrive_at(monkeypatch, {2: lambda: engine.submit([SHORT], "adp_b", params(n))})
    first = engine.submit([PROMPT], "adp_a", params(n))
    with pytest.raises(ServeError, match="device lost"):
        first.wait(60)
    with pytest.raises(ServeError, match="device lost"):  # it had joined the failing batch
        late[0].wait(60)
    assert engine.generate([PROMPT], "adp_a", params(n))[0].generated_text == reference.text(
        "adp_a", PROMPT, n
    )


def test_a_queued_request_past_its_deadline_ends_while_the_batch_is_full(
    make_engine: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from loraserve.errors import DeadlineExceeded

    engine = make_engine(max_batch_size=1, min_tokens_per_s=0)
    offset = [0.0]
    engine.scheduler.clock = lambda: time.monotonic() + offset[0]
    seen: dict[str, bool] = {}

    def queue_and_expire() -> Any:
        ticket = engine.submit([SHORT], None, params(4), deadline_s=5)
        offset[0] = 10.0  # its deadline passes while the only place is taken
        return ticket

    late = arrive_at(
        monkeypatch,
        {2: queue_and_expire, 3: lambda: seen.setdefault("ended at the next step", late[0].finished)},
    )
    first = engine.submit([PROMPT], "adp_a", params(12))
    assert first.wait(60)[0].completion_tokens == 12  # the running request is untouched
    assert seen == {"ended at the next step": True}
    with pytest.raises(DeadlineExceeded):
        late[0].wait(1)
