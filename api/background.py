"""Periodic work inside the API process: the job reconciler (and, later, the janitor)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool

from api.logging import get_logger

log = get_logger("background")


async def every(interval_s: float, name: str, work: Callable[[], object]) -> None:
    """Run ``work`` in a worker thread every ``interval_s`` seconds until cancelled."""
    while True:
        try:
            await run_in_threadpool(work)
        except Exception:
            log.exception("background task %s failed", name)
        await asyncio.sleep(interval_s)


class Background:
    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, interval_s: float, name: str, work: Callable[[], object]) -> None:
        self.tasks.append(asyncio.create_task(every(interval_s, name, work), name=name))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()
