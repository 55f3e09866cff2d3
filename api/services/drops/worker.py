"""The ``fastuner worker`` loop: one source (SQS or the scanner) plus the ledger's retry sweep."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from api.domain.drops import DropSource
from api.logging import get_logger
from api.services.drops.handler import Outcome
from api.services.drops.service import DropService
from api.services.drops.sources import QueueSource

log = get_logger("drops")
Source = DropSource
MAX_DRAIN_POLLS = 100


@dataclass
class Summary:
    messages: int = 0
    outcomes: list[Outcome] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return dict(Counter(o.action for o in self.outcomes))

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "counts": self.counts(),
            "outcomes": [asdict(o) for o in self.outcomes],
        }


class DropWorker:
    def __init__(
        self,
        drops: DropService,
        *,
        source: Source,
        interval: float,
        queue_wait: int = 20,
        queue: QueueSource | None = None,
    ) -> None:
        self.drops = drops
        self.interval = interval
        self.queue_wait = queue_wait
        self.queue = queue or (drops.queue() if source == "sqs" else None)

    def run_once(self) -> Summary:
        """What is there now: drain the queue (or scan once), then the due retries."""
        summary = Summary()
        if self.queue is not None:
            seen: set[str] = set()
            for _ in range(MAX_DRAIN_POLLS):
                polled = self.queue.poll(min(self.queue_wait, 1))
                summary.messages += len(polled.message_ids)
                summary.outcomes += polled.outcomes
                if not polled.message_ids - seen:  # empty, or only messages left on the queue earlier
                    break
                seen |= polled.message_ids
        else:
            summary.outcomes += self.drops.scanner.scan_once()
        summary.outcomes += self.drops.sweep_once()
        return summary

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set (SIGTERM / Ctrl-C): the current poll or drop is finished first."""
        next_sweep = 0.0
        while not stop.is_set():
            try:
                if self.queue is not None:
                    self.queue.poll(self.queue_wait)
                    if time.monotonic() >= next_sweep:
                        self.drops.sweep_once()
                        next_sweep = time.monotonic() + self.interval
                else:
                    self.drops.scan_once()
                    stop.wait(self.interval)
            except Exception:  # the queue or database is unreachable: try again in a while
                log.exception("drop worker pass failed")
                stop.wait(min(self.interval, 30.0))
