"""Per-tenant request rate limits with the `limits` library (moving window: at most N requests in
any window of the limit's length, so a burst is capped as well as the sustained rate).

Every authenticated request counts against its tenant (all of the tenant's keys share the budget);
requests without a tenant (health, the OpenAPI docs) are not limited. Over the limit: 429 in the
API's error shape with ``Retry-After`` (whole seconds until a request would be admitted again).
The rate is ``settings.rate_limit`` unless ``settings.rate_limits`` names the tenant.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from api.logging import get_logger
from api.middleware import TENANT_STATE, has_body, send_error

log = get_logger("ratelimit")


@dataclass(frozen=True)
class Denied:
    limit: RateLimitItem
    retry_after: int  # seconds

    @property
    def rate(self) -> str:
        """The limit as configured, e.g. ``20/second``."""
        granularity = self.limit.GRANULARITY.name
        per = f"{self.limit.multiples} {granularity}s" if self.limit.multiples > 1 else granularity
        return f"{self.limit.amount}/{per}"


class TenantRateLimiter:
    def __init__(
        self, default: str, per_tenant: Mapping[str, str] | None = None, storage_uri: str = "memory://"
    ) -> None:
        storage = storage_from_string(storage_uri)
        if not isinstance(storage, Storage):
            raise ValueError(f"rate limit storage {storage_uri!r} is asynchronous; use its synchronous form")
        self.storage = storage
        self.strategy = MovingWindowRateLimiter(self.storage)
        self.default = _parse(default)
        self.per_tenant = {tenant: _parse(rate) for tenant, rate in (per_tenant or {}).items()}
        self.in_memory = isinstance(self.storage, MemoryStorage)

    def limits_for(self, tenant: str) -> list[RateLimitItem]:
        return self.per_tenant.get(tenant, self.default)

    def hit(self, tenant: str) -> Denied | None:
        """Count one request of ``tenant``; the limit it broke (and when to retry), else None."""
        for item in self.limits_for(tenant):
            if not self.strategy.hit(item, "tenant", tenant):
                reset_at = self.strategy.get_window_stats(item, "tenant", tenant).reset_time
                return Denied(item, max(1, math.ceil(reset_at - time.time())))
        return None


class RateLimitMiddleware:
    """429 with ``Retry-After`` for a tenant over its rate (after :class:`AuthMiddleware`)."""

    def __init__(self, app: ASGIApp, limiter: TenantRateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tenant = scope.get("state", {}).get(TENANT_STATE) if scope["type"] == "http" else None
        if not tenant:
            await self.app(scope, receive, send)
            return
        # The in-memory storage answers at once; a network one (redis://) would block the loop.
        if self.limiter.in_memory:
            denied = self.limiter.hit(tenant)
        else:
            denied = await run_in_threadpool(self.limiter.hit, tenant)
        if denied is None:
            await self.app(scope, receive, send)
            return
        log.info("rate limited", extra={"tenant_id": tenant, "limit": denied.rate})
        await send_error(
            scope,
            send,
            429,
            "rate_limited",
            f"rate limit of {denied.rate} reached for tenant {tenant}; retry in {denied.retry_after} s",
            details={"limit": denied.rate, "retry_after_seconds": denied.retry_after},
            headers=[(b"retry-after", str(denied.retry_after).encode())],
            close=has_body(scope),
        )


def _parse(rate: str) -> list[RateLimitItem]:
    return parse_many(rate) if rate.strip() else []
