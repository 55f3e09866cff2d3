"""Issue 12: per-tenant rate limits (the `limits` library): the request after the limit is 429 in
the error shape with ``Retry-After``; another tenant, health checks and unauthenticated requests
are unaffected; a tenant can have its own rate."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.ratelimit import TenantRateLimiter
from api.settings import Settings


@pytest.fixture
def make(
    settings_factory: Callable[..., Settings],
) -> Iterator[Callable[..., tuple[TestClient, dict[str, str]]]]:
    opened: list[TestClient] = []

    def build(**overrides: object) -> tuple[TestClient, dict[str, str]]:
        app = create_app(settings_factory(background_tasks=False, **overrides))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        app_state = client.app.state  # type: ignore[attr-defined]
        keys = {"default": app_state.local_api_key, "acme": app_state.ctx.auth.create_key("acme").secret}
        return client, keys

    yield build
    for c in opened:
        c.__exit__(None, None, None)


def _get(client: TestClient, key: str, path: str = "/v0/tenant") -> int:
    return client.get(path, headers={"Authorization": f"Bearer {key}"}).status_code


def test_the_request_after_the_limit_is_429_with_retry_after(
    make: Callable[..., tuple[TestClient, dict[str, str]]],
) -> None:
    client, keys = make(rate_limit="5/minute")
    assert [_get(client, keys["default"]) for _ in range(5)] == [200] * 5
    resp = client.get(
        "/v0/datasets", headers={"Authorization": f"Bearer {keys['default']}", "X-Request-ID": "rl-1"}
    )
    assert resp.status_code == 429
    retry_after = int(resp.headers["retry-after"])
    assert 1 <= retry_after <= 60
    body = resp.json()
    assert body["code"] == "rate_limited" and body["request_id"] == "rl-1"
    assert "5/minute" in body["message"] and body["details"] == {
        "limit": "5/minute",
        "retry_after_seconds": retry_after,
    }
    # another tenant has its own budget; health and requests without a key are not counted
    assert [_get(client, keys["acme"]) for _ in range(5)] == [200] * 5
    assert _get(client, keys["acme"]) == 429
    assert all(client.get("/v0/healthz").status_code == 200 for _ in range(10))
    assert client.get("/v0/tenant").status_code == 401


def test_a_rejected_body_is_not_read_and_the_connection_closes(
    make: Callable[..., tuple[TestClient, dict[str, str]]],
) -> None:
    client, keys = make(rate_limit="1/minute")
    auth = {"Authorization": f"Bearer {keys['default']}"}
    assert client.get("/v0/tenant", headers=auth).status_code == 200
    resp = client.post("/v0/finetune", json={"dataset_id": "ds_x", "base_model": "x"}, headers=auth)
    assert resp.status_code == 429 and resp.headers["connection"] == "close"


def test_a_tenant_can_have_its_own_rate(make: Callable[..., tuple[TestClient, dict[str, str]]]) -> None:
    client, keys = make(rate_limit="3/minute", rate_limits={"acme": "1/minute", "default": ""})
    assert [_get(client, keys["acme"]) for _ in range(2)] == [200, 429]
    assert [_get(client, keys["default"]) for _ in range(10)] == [200] * 10  # "" = unlimited


def test_the_window_moves(make: Callable[..., tuple[TestClient, dict[str, str]]]) -> None:
    # A 5 s window: three requests fit in it even on a loaded machine (1 s did not, under load).
    client, keys = make(rate_limit="2 per 5 seconds")
    assert [_get(client, keys["default"]) for _ in range(3)] == [200, 200, 429]
    time.sleep(5.1)
    assert _get(client, keys["default"]) == 200


def test_bad_rates_fail_at_start_up(settings_factory: Callable[..., Settings]) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        settings_factory(rate_limit="lots")
    with pytest.raises(ValueError, match="rate limit"):
        settings_factory(rate_limits={"acme": "1/fortnight"})


def test_limits_combine_and_the_retry_is_when_a_slot_frees() -> None:
    limiter = TenantRateLimiter("2/second;3/minute")
    assert limiter.hit("t") is None and limiter.hit("t") is None
    denied = limiter.hit("t")
    assert denied is not None and denied.rate == "2/second" and denied.retry_after == 1
    time.sleep(1.05)
    assert limiter.hit("t") is None
    denied = limiter.hit("t")
    assert denied is not None and denied.rate == "3/minute" and 55 <= denied.retry_after <= 60
    assert limiter.hit("other") is None
