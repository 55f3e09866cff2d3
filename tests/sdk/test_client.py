"""The SDK's behaviour over a mock transport: retries, typed errors, paging, the event stream."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import fastuner_sdk
from api.domain.finetune import MetricPoint
from fastuner_sdk import _retry
from fastuner_sdk._sse import iter_sse
from fastuner_sdk.client import FastunerClient, StatusUpdate
from tests.support.api_json import dataset_json

Handler = Callable[[httpx.Request], httpx.Response]
TENANT = {
    "tenant_id": "acme",
    "quotas": {"max_concurrent_jobs": 8, "max_endpoints": 4, "allowed_instance_types": None},
    "usage": {"active_jobs": 0, "active_endpoints": 0},
}


def make(handler: Handler) -> FastunerClient:
    return FastunerClient(httpx.Client(transport=httpx.MockTransport(handler), base_url="http://api"))


@pytest.fixture(autouse=True)
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    calls: list[float] = []
    monkeypatch.setattr(_retry.time, "sleep", calls.append)
    return calls


def error(status: int, code: str, **headers: str) -> httpx.Response:
    body = {"code": code, "message": f"{code}!", "request_id": "req-9", "details": {"x": 1}}
    return httpx.Response(status, json=body, headers=headers)


# -- typed errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "bad_request", fastuner_sdk.BadRequestError),
        (401, "unauthorized", fastuner_sdk.AuthenticationError),
        (404, "not_found", fastuner_sdk.NotFoundError),
        (409, "conflict", fastuner_sdk.ConflictError),
        (422, "validation_failed", fastuner_sdk.UnprocessableError),
        (429, "quota_exceeded", fastuner_sdk.QuotaExceededError),
        (502, "backend_error", fastuner_sdk.ServerError),
        (418, "teapot", fastuner_sdk.ApiError),
    ],
)
def test_errors_are_typed_and_carry_code_and_request_id(status: int, code: str, cls: type[Exception]) -> None:
    with pytest.raises(cls) as err:
        make(lambda r: error(status, code)).tenant()
    exc = err.value
    assert isinstance(exc, fastuner_sdk.ApiError)
    expected = (status, code, f"{code}!", "req-9", {"x": 1})
    assert (exc.status, exc.code, exc.message, exc.request_id, exc.details) == expected


def test_a_non_json_error_still_has_the_request_id_from_the_header() -> None:
    with pytest.raises(fastuner_sdk.ServerError) as err:
        make(lambda r: httpx.Response(500, text="boom", headers={"x-request-id": "rid"})).tenant()
    assert err.value.code == "http_error" and err.value.message == "boom" and err.value.request_id == "rid"


# -- retries ------------------------------------------------------------------------------------
def test_503_and_429_honour_retry_after_then_succeed(slept: list[float]) -> None:
    answers = iter(
        [
            error(503, "unavailable", **{"Retry-After": "2"}),
            error(429, "rate_limited", **{"Retry-After": "1"}),
        ]
    )
    client = make(lambda r: next(answers, httpx.Response(200, json=TENANT)))
    assert client.tenant().tenant_id == "acme"
    assert slept == [2.0, 1.0]


def test_without_retry_after_the_backoff_is_jittered_and_grows(slept: list[float]) -> None:
    with pytest.raises(fastuner_sdk.ServiceUnavailableError):
        make(lambda r: error(503, "unavailable")).tenant()
    assert len(slept) == _retry.RETRIES
    ceilings = [_retry.RETRY_DELAY_S * 2**i for i in range(_retry.RETRIES)]
    assert all(0 <= s <= c for s, c in zip(slept, ceilings, strict=True))


def test_retry_after_as_an_http_date() -> None:
    resp = httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert _retry.retry_after(resp) == 0.0  # in the past: go now


def test_a_quota_429_is_not_retried() -> None:
    seen: list[httpx.Request] = []
    with pytest.raises(fastuner_sdk.QuotaExceededError):
        make(lambda r: seen.append(r) or error(429, "quota_exceeded", **{"Retry-After": "0"})).tenant()
    assert len(seen) == 1


def test_a_post_without_key_is_retried_when_the_connection_never_opened() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"checked": 0})

    assert make(handler).reconcile() == {"checked": 0}
    assert len(seen) == 2


def test_a_streamed_upload_is_never_sent_twice(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"input": "a", "target": "b"}\n')
    seen: list[httpx.Request] = []
    with pytest.raises(fastuner_sdk.RateLimitError):
        make(lambda r: seen.append(r) or error(429, "rate_limited", **{"Retry-After": "0"})).validate_dataset(
            path
        )
    assert len(seen) == 1


# -- paging -------------------------------------------------------------------------------------
def dataset(i: int) -> dict[str, Any]:
    return dataset_json(f"ds_{i:08d}", name=f"d{i}")


def test_iterators_follow_next_cursor_lazily() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        page = int(request.url.params.get("cursor") or 0)
        assert request.url.params["limit"] == "2"
        nxt = str(page + 1) if page < 2 else None
        return httpx.Response(
            200, json={"items": [dataset(2 * page), dataset(2 * page + 1)], "next_cursor": nxt}
        )

    it = make(handler).iter_datasets(page_size=2)
    assert next(it).id == "ds_00000000" and len(seen) == 1  # one page at a time
    assert [d.id for d in it] == [f"ds_{i:08d}" for i in range(1, 6)]
    assert len(seen) == 3 and "cursor" not in seen[0].url.params


# -- the event stream ---------------------------------------------------------------------------
def test_sse_parser_skips_pings_and_drops_a_cut_off_event() -> None:
    lines = [": ping", "event: metric", "id: 3", 'data: {"a":', "data: 1}", "", "event: status", "data: x"]
    events = list(iter_sse(lines))
    assert len(events) == 1 and events[0].event == "metric" and events[0].id == "3"
    assert events[0].data == '{"a":\n1}'


def sse(*events: tuple[str, dict[str, Any]]) -> str:
    return (
        "".join(f"event: {name}\r\ndata: {json.dumps(data)}\r\n\r\n" for name, data in events)
        + ": ping\r\n\r\n"
    )


def point(step: int) -> dict[str, Any]:
    return {"step": step, "values": {"loss_bpt": 1.0 / step}}


def test_follow_job_streams_and_resumes_from_the_last_step_when_the_stream_drops() -> None:
    seen: list[httpx.Request] = []

    class Dropping(httpx.SyncByteStream):
        def __iter__(self) -> Any:
            yield sse(("status", {"status": "running", "adapter_id": None}), ("metric", point(1))).encode()
            yield sse(("metric", point(2))).encode()
            raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert request.url.params["follow"] == "true"
        if len(seen) == 1:
            return httpx.Response(200, stream=Dropping(), headers={"content-type": "text/event-stream"})
        body = sse(
            ("status", {"status": "running"}),
            ("metric", point(3)),
            ("status", {"status": "completed", "adapter_id": "adp_1"}),
        )
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    updates = list(make(handler).follow_job("ft_1"))
    assert [u.step for u in updates if isinstance(u, MetricPoint)] == [1, 2, 3]
    statuses = [u for u in updates if isinstance(u, StatusUpdate)]
    assert [s.status for s in statuses] == ["running", "running", "completed"]
    assert statuses[-1].terminal and statuses[-1].adapter_id == "adp_1"
    assert [r.url.params["after"] for r in seen] == ["0", "2"]


def test_follow_job_gives_up_after_repeated_drops() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise httpx.ReadError("reset")

    with pytest.raises(httpx.ReadError):
        list(make(handler).follow_job("ft_1"))
    assert len(seen) == (_retry.RETRIES + 1) ** 2  # each reopen is itself a retried GET


def test_follow_job_reports_an_unknown_job() -> None:
    with pytest.raises(fastuner_sdk.NotFoundError):
        list(make(lambda r: error(404, "not_found")).follow_job("ft_nope"))


# -- connect ------------------------------------------------------------------------------------
def test_connect_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTUNER_API_URL", "http://from-env")
    monkeypatch.setenv("FASTUNER_API_KEY", "k-env")
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200, json=TENANT))
    with fastuner_sdk.connect(transport=transport) as client:
        client.tenant()
    with fastuner_sdk.connect("http://explicit", "k-arg", transport=transport) as client:
        client.tenant()
    assert [str(r.url) for r in seen] == ["http://from-env/v0/tenant", "http://explicit/v0/tenant"]
    assert [r.headers["Authorization"] for r in seen] == ["Bearer k-env", "Bearer k-arg"]


def test_connect_never_starts_a_server_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASTUNER_API_URL", raising=False)
    with pytest.raises(fastuner_sdk.ConfigurationError, match="embedded=True"), fastuner_sdk.connect():
        pass
    with pytest.raises(fastuner_sdk.ConfigurationError), fastuner_sdk.connect("http://x", embedded=True):
        pass


def test_connect_embedded_serves_the_api_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTUNER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FASTUNER_API_URL", "http://ignored-when-embedded")
    from api.settings import get_settings

    get_settings.cache_clear()
    try:
        with fastuner_sdk.connect(embedded=True) as client:
            assert str(client.http.base_url).startswith("http://127.0.0.1:")
            assert client.health()["status"] == "ok"
            assert client.tenant().tenant_id  # the local key was picked up
    finally:
        get_settings.cache_clear()
