"""A request (``Ticket``) and its inputs (``Seq``) as the scheduler decodes them, and the events a
request's ``notify`` callback receives (token deltas for streams, per-input results, an error)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loraserve.errors import ServeError
from loraserve.generation import Generation
from loraserve.sampling import Sampler
from loraserve.schemas import GenerationParameters


@dataclass(frozen=True)
class TokenEvent:
    index: int
    text: str  # a decoded delta; the deltas of one input concatenate to its final generated_text


@dataclass(frozen=True)
class DoneEvent:
    index: int
    generation: Generation


@dataclass(frozen=True)
class ErrorEvent:
    error: ServeError


Event = TokenEvent | DoneEvent | ErrorEvent


class Ticket:
    """One request: its sequences' results, a deadline (``Scheduler.clock`` time), a cancel flag."""

    def __init__(
        self,
        adapter: str | None,
        n: int,
        *,
        deadline: float,
        stream: bool = False,
        notify: Callable[[Event], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.adapter = adapter
        self.deadline = deadline
        self.stream = stream
        self.results: list[Generation | None] = [None] * n
        self.error: ServeError | None = None
        self.produced = 0  # tokens generated so far, all inputs
        self._notify = notify
        self._on_close = on_close
        self._closed = threading.Event()
        self._guard = threading.Lock()

    @property
    def finished(self) -> bool:
        return self._closed.is_set()

    def _close(self) -> None:
        self._closed.set()
        if self._on_close is not None:
            self._on_close()

    def emit(self, event: Event) -> None:
        if self._notify is not None:
            self._notify(event)

    def done(self, index: int, generation: Generation) -> None:
        with self._guard:
            if self.finished:
                return
            self.results[index] = generation
            complete = all(r is not None for r in self.results)
            if complete:
                self._close()
        self.emit(DoneEvent(index, generation))

    def fail(self, error: ServeError) -> bool:
        """End the request with ``error`` unless it already ended; returns whether it did."""
        with self._guard:
            if self.finished:
                return False
            self.error = error
            self._close()
        self.emit(ErrorEvent(error))
        return True

    def wait(self, timeout: float | None = None) -> list[Generation]:
        """Block until the request ends; its results, or its error raised."""
        if not self._closed.wait(timeout):
            raise TimeoutError("the request did not finish in time")
        if self.error is not None:
            raise self.error
        return [r for r in self.results if r is not None]


@dataclass(eq=False)
class Seq:
    """One input of a request, and its decoding state."""

    ticket: Ticket
    index: int
    ids: list[int]
    params: GenerationParameters
    path: Path | None
    max_new: int
    sampler: Sampler
    tokens: list[int] = field(default_factory=list)
    emitted: str = ""  # text already sent as token events

    @property
    def decodes_text(self) -> bool:
        """Whether the text is needed every step (streaming, stop strings) or only at the end."""
        return self.ticket.stream or bool(self.params.stop)
