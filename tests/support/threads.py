"""Racing threads: calls released at the same moment."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def race(calls: Sequence[Callable[[], T]], timeout: float = 60) -> list[T]:
    """Run each call in its own thread, all released together by a barrier; their results, in the
    order of ``calls``. A call that raised (or is still running after ``timeout``) fails the test."""
    barrier = threading.Barrier(len(calls))
    results: list[T | BaseException] = [TimeoutError("still running")] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    return results  # type: ignore[return-value]
