"""When a request is sent again, and after how long: one tenacity policy for every SDK call.

- A connection that could not be opened (nothing was sent) is retried for any request.
- A connection dropped after the request may have gone out is retried only for a request that is
  safe to repeat: a read, or a POST carrying an ``Idempotency-Key`` (the server dedups it).
- 429 (``rate_limited``) and 503 were refused before any work, so they are retried whatever the
  method, after the server's ``Retry-After`` (capped); a 429 ``quota_exceeded`` is a tenant quota,
  not throttling, and is reported at once.
- A streamed upload is never sent again (its file has been read).
- Without ``Retry-After`` the wait is exponential backoff with jitter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from tenacity import RetryCallState, Retrying, stop_after_attempt, wait_random_exponential

log = logging.getLogger("fastuner_sdk")

RETRIES = 3  # sends after the first one, for any retryable outcome
RETRY_DELAY_S = 0.2  # the first backoff's ceiling; doubles each time ("full jitter": uniform below it)
MAX_BACKOFF_S = 8.0
MAX_RETRY_AFTER_S = 30.0
RETRY_STATUSES = frozenset({429, 503})
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
DROPPED = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class Policy:
    idempotent: bool  # safe to send again after it may have reached the server
    replayable: bool = True  # its body can be sent again (not a streamed upload)

    @classmethod
    def for_request(
        cls, method: str, headers: httpx.Headers | dict[str, str], *, streamed_body: bool
    ) -> Policy:
        idempotent = method.upper() in ("GET", "HEAD", "OPTIONS") or "Idempotency-Key" in headers
        return cls(idempotent=idempotent, replayable=not streamed_body)


def retry_after(resp: httpx.Response) -> float | None:
    """The server's ``Retry-After`` in seconds (delta or HTTP date, capped); None when absent or odd."""
    value = resp.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError, IndexError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def backoff(attempt: int) -> float:
    """Exponential backoff with jitter before send number ``attempt + 1`` (``attempt`` >= 1)."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    return float(wait_random_exponential(multiplier=RETRY_DELAY_S, max=MAX_BACKOFF_S)(state))


def should_retry(policy: Policy, state: RetryCallState) -> bool:
    if not policy.replayable or state.outcome is None:
        return False
    if state.outcome.failed:
        exc = state.outcome.exception()
        return isinstance(exc, NOT_SENT) or (policy.idempotent and isinstance(exc, DROPPED))
    resp: httpx.Response = state.outcome.result()
    return resp.status_code in RETRY_STATUSES and not _is_quota(resp)


def _is_quota(resp: httpx.Response) -> bool:
    if resp.status_code != 429:
        return False
    try:
        resp.read()
        body = resp.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("code") == "quota_exceeded"


def _wait(state: RetryCallState) -> float:
    if state.outcome is not None and not state.outcome.failed:
        delay = retry_after(state.outcome.result())
        if delay is not None:
            return delay
    return backoff(state.attempt_number)


def _before_sleep(state: RetryCallState) -> None:
    outcome = state.outcome
    if outcome is None:
        return
    if outcome.failed:
        why = repr(outcome.exception())
    else:
        resp: httpx.Response = outcome.result()
        resp.close()
        why = f"HTTP {resp.status_code}"
    log.debug("retrying (%s) in %.2fs, attempt %d", why, state.upcoming_sleep, state.attempt_number + 1)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)  # looked up at call time, so tests can replace time.sleep


def _give_back_last(state: RetryCallState) -> httpx.Response:
    assert state.outcome is not None
    resp: httpx.Response = state.outcome.result()  # raises the last error when it was one
    return resp


def send(policy: Policy, attempt: Callable[[], httpx.Response]) -> httpx.Response:
    """Call ``attempt`` until it answers something not worth retrying, or the retries run out
    (then the last answer is returned, or the last error raised)."""
    retrying = Retrying(
        retry=lambda state: should_retry(policy, state),
        stop=stop_after_attempt(RETRIES + 1),
        wait=_wait,
        sleep=_sleep,
        before_sleep=_before_sleep,
        retry_error_callback=_give_back_last,
    )
    resp: httpx.Response = retrying(attempt)
    return resp
