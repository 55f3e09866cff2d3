"""The SDK retries what is safe to repeat when a connection drops, and nothing else.

(The SDK lives in ``fastuner_sdk``; ``cli.client`` re-exports it, as these imports show.)"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from api.domain.finetune import FineTuneRequest
from cli.client import ApiError, FastunerClient
from fastuner_sdk import _retry as sdk

TENANT = {
    "tenant_id": "acme",
    "quotas": {"max_concurrent_jobs": 8, "max_endpoints": 4, "allowed_instance_types": None},
    "usage": {"active_jobs": 0, "active_endpoints": 0},
}


def _client(failures: int, answer: httpx.Response, seen: list[httpx.Request]) -> FastunerClient:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) <= failures:
            raise httpx.ReadError("connection closed by peer", request=request)
        return answer

    return FastunerClient(httpx.Client(transport=httpx.MockTransport(handler), base_url="http://api"))


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdk, "RETRY_DELAY_S", 0.0)


def test_reads_are_retried() -> None:
    seen: list[httpx.Request] = []
    info = _client(2, httpx.Response(200, json=TENANT), seen).tenant()
    assert info.tenant_id == "acme" and len(seen) == 3


def test_retries_are_bounded() -> None:
    seen: list[httpx.Request] = []
    with pytest.raises(httpx.ReadError):
        _client(10, httpx.Response(200, json=TENANT), seen).tenant()
    assert len(seen) == sdk.RETRIES + 1


def test_a_start_carries_one_idempotency_key_across_retries() -> None:
    seen: list[httpx.Request] = []
    answer = httpx.Response(404, json={"code": "not_found", "message": "dataset ds_x not found"})
    client = _client(1, answer, seen)
    with pytest.raises(ApiError):
        client.start_finetune(FineTuneRequest(dataset_id="ds_x", base_model="m"))
    keys = [r.headers.get("Idempotency-Key") for r in seen]
    assert len(keys) == 2 and keys[0] and keys[0] == keys[1]
    seen.clear()
    with pytest.raises(ApiError):
        client.start_finetune(FineTuneRequest(dataset_id="ds_x", base_model="m"))
    assert seen[0].headers["Idempotency-Key"] != keys[0]  # a new start is a new job


@pytest.mark.parametrize("call", ["upload_like_post", "delete"])
def test_unsafe_requests_are_not_repeated(call: str) -> None:
    seen: list[httpx.Request] = []
    client = _client(1, httpx.Response(204), seen)
    kwargs: dict[str, Any] = {"json": {}} if call == "upload_like_post" else {}
    with pytest.raises(httpx.ReadError):
        client._request("POST" if call == "upload_like_post" else "DELETE", "/v0/x", **kwargs)
    assert len(seen) == 1


def _throttled(limit: int, answer: httpx.Response, seen: list[httpx.Request]) -> FastunerClient:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) <= limit:
            body = {"code": "rate_limited", "message": "slow down", "request_id": "r"}
            return httpx.Response(429, json=body, headers={"Retry-After": "0"})
        return answer

    return FastunerClient(httpx.Client(transport=httpx.MockTransport(handler), base_url="http://api"))


def test_a_429_is_retried_after_retry_after_then_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(sdk.time, "sleep", slept.append)
    seen: list[httpx.Request] = []
    assert _throttled(2, httpx.Response(200, json=TENANT), seen).tenant().tenant_id == "acme"
    assert len(seen) == 3 and slept == [0.0, 0.0]
    seen.clear()
    with pytest.raises(ApiError) as err:
        _throttled(99, httpx.Response(200, json=TENANT), seen).tenant()
    assert err.value.status == 429 and len(seen) == sdk.RETRIES + 1


def test_retry_after_is_capped_and_tolerates_junk() -> None:
    assert sdk.retry_after(httpx.Response(429, headers={"Retry-After": "9999"})) == sdk.MAX_RETRY_AFTER_S
    assert sdk.retry_after(httpx.Response(429, headers={"Retry-After": "soon"})) is None  # -> backoff
