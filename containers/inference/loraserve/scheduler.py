"""Dynamic batching: a bounded queue of sequences and one worker thread that decodes them in batches.

Each input of a request is one sequence (``Seq``); a request is a ``Ticket``. ``submit`` puts the
sequences into the queue (``QueueFull`` → 429 with ``Retry-After`` when it would overflow). The worker
takes up to ``max_batch_size`` queued sequences, oldest first, whatever their adapters (at most
``max_adapters`` distinct ones, so a batch never evicts its own adapters), loads those adapters, and
decodes the batch token by token (``engine.Batch``). After every step each row is checked:

- end-of-sequence token or a stop string → ``stop``; ``max_new_tokens`` or the context → ``length``;
- the request's deadline passed → ``deadline`` (it keeps the tokens it has);
- the request was cancelled (client gone) → the row is dropped at once, freeing its place.

A sequence still queued at its deadline fails the request with 504 ``deadline_exceeded`` (nothing was
produced). New requests wait for the running batch to finish (no joining mid-batch): simple and exact.
Events (token deltas for streams, per-input results, an error) go to the ticket's ``notify`` callback,
called on the worker thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from loraserve.errors import Cancelled, DeadlineExceeded, QueueFull, ServeError
from loraserve.generation import FinishReason, Generation, cut_at_stop
from loraserve.logs import log_event
from loraserve.sampling import Sampler, pick_tokens
from loraserve.schemas import GenerationParameters

if TYPE_CHECKING:
    from loraserve.engine import Engine


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


def _held_back(text: str, stops: Sequence[str]) -> str:
    """The part of ``text`` safe to stream: without a trailing partial stop string, an incomplete
    UTF-8 character, or trailing whitespace (a later token may still change how it decodes)."""
    cut = len(text)
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                cut = min(cut, len(text) - k)
                break
    safe = text[:cut]
    return safe.rstrip("\ufffd").rstrip()


class Scheduler:
    def __init__(self, engine: Engine, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.clock = clock
        self._queue: deque[Seq] = deque()
        self._cv = threading.Condition()
        self._paused = False
        self._thread: threading.Thread | None = None
        self.running = 0  # rows in the batch being decoded
        self.batches = 0
        self.largest_batch = 0
        self.tokens_generated = 0

    # ------------------------------------------------------------------ API
    @property
    def max_batch_size(self) -> int:
        return self.engine.config.max_batch_size

    def queued(self) -> int:
        with self._cv:
            return len(self._queue)

    def start(self) -> None:
        with self._cv:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="loraserve-scheduler", daemon=True)
                self._thread.start()

    def pause(self) -> None:
        """Stop taking new batches (tests, maintenance); the running batch finishes."""
        with self._cv:
            self._paused = True

    def resume(self) -> None:
        with self._cv:
            self._paused = False
            self._cv.notify_all()

    def submit(self, ticket: Ticket, seqs: Sequence[Seq]) -> None:
        limit = self.engine.config.max_queue
        with self._cv:
            if len(self._queue) + len(seqs) > limit:
                retry = max(1, round(len(self._queue) / self.max_batch_size))
                raise QueueFull(
                    f"the server is busy: {len(self._queue)} of {limit} queue places are taken; "
                    f"retry in {retry} s",
                    retry_after_s=retry,
                )
            self._queue.extend(seqs)
            self._cv.notify_all()
        self.start()

    def cancel(self, ticket: Ticket) -> None:
        """The client went away: drop its queued sequences now and its running rows at the next step."""
        if ticket.fail(Cancelled("the client went away")):
            log_event("invocation_cancelled", adapter=ticket.adapter, produced=ticket.produced)
        with self._cv:
            kept = [s for s in self._queue if s.ticket is not ticket]
            if len(kept) != len(self._queue):
                self._queue = deque(kept)
                self._cv.notify_all()

    # --------------------------------------------------------------- worker
    def _work(self) -> None:
        while True:
            batch = self._take()
            self.running = len(batch)
            try:
                self._decode(batch)
            except Exception as exc:  # keep serving; fail only this batch's requests
                log_event("batch_failed", logging.ERROR, exc_info=True, rows=len(batch))
                error = ServeError(f"{type(exc).__name__}: {exc}")
                for seq in batch:
                    seq.ticket.fail(error)
            finally:
                self.running = 0

    def _expire(self, seq: Seq) -> None:
        """A sequence whose deadline passed before it was decoded."""
        ticket = seq.ticket
        if ticket.produced or any(r is not None for r in ticket.results):
            ticket.done(seq.index, Generation("", len(seq.ids), 0, "deadline"))
        else:
            ticket.fail(DeadlineExceeded("the deadline passed before generation could start"))

    def _take(self) -> list[Seq]:
        """Wait for work; then take up to max_batch_size sequences (oldest first) for one batch."""
        limit_adapters = self.engine.config.max_adapters
        with self._cv:
            while True:
                while self._paused or not self._queue:
                    self._cv.wait()
                now = self.clock()
                chosen: list[Seq] = []
                adapters: set[str] = set()
                rest: deque[Seq] = deque()
                for seq in self._queue:
                    if seq.ticket.finished:
                        continue
                    if now >= seq.ticket.deadline:
                        self._expire(seq)
                        continue
                    adapter = seq.ticket.adapter
                    fits = adapter is None or adapter in adapters or len(adapters) < limit_adapters
                    if len(chosen) < self.max_batch_size and fits:
                        chosen.append(seq)
                        if adapter is not None:
                            adapters.add(adapter)
                    else:
                        rest.append(seq)
                self._queue = rest
                if chosen:
                    return chosen

    def _decode(self, batch: list[Seq]) -> None:
        engine = self.engine
        with engine.lock:
            paths = {s.ticket.adapter: s.path for s in batch if s.ticket.adapter is not None}
            failed = engine.adapters.activate({a: p for a, p in paths.items() if p is not None})
            for seq in batch:
                if seq.ticket.adapter in failed:
                    seq.ticket.fail(failed[seq.ticket.adapter])
            now = self.clock()
            active = []
            for seq in batch:
                if seq.ticket.finished:
                    continue
                if now >= seq.ticket.deadline:
                    self._expire(seq)
                    continue
                active.append(seq)
            if not active:
                return
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(active))
            step = engine.batch([(s.ids, s.ticket.adapter) for s in active])
            logits = step.prefill()
            while True:
                tokens = pick_tokens(logits, [s.sampler for s in active])
                keep: list[int] = []
                for i, seq in enumerate(active):
                    if seq.ticket.finished:  # cancelled, or failed elsewhere: drop the row
                        continue
                    seq.tokens.append(tokens[i])
                    seq.ticket.produced += 1
                    self.tokens_generated += 1
                    reason = self._advance(seq)
                    if reason is None and self.clock() >= seq.ticket.deadline:
                        reason = "deadline"
                    if reason is None:
                        keep.append(i)
                    else:
                        self._finish(seq, reason)
                if not keep:
                    return
                active = [active[i] for i in keep]
                self.running = len(active)
                logits = step.step([tokens[i] for i in keep], keep)

    def _advance(self, seq: Seq) -> FinishReason | None:
        """After a new token: whether the sequence is finished; streams the text that is safe to send."""
        if seq.tokens[-1] in self.engine.eos_ids:
            return "stop"
        if seq.decodes_text:
            text = self.engine.decode(seq.tokens)
            if cut_at_stop(text, seq.params.stop)[1]:
                return "stop"
            if len(seq.tokens) < seq.max_new and seq.ticket.stream:
                safe = _held_back(text, seq.params.stop)
                if len(safe) > len(seq.emitted) and safe.startswith(seq.emitted):
                    seq.ticket.emit(TokenEvent(seq.index, safe[len(seq.emitted) :]))
                    seq.emitted = safe
        if len(seq.tokens) >= seq.max_new:
            return "length"
        return None

    def _finish(self, seq: Seq, reason: FinishReason) -> None:
        text, _ = cut_at_stop(self.engine.decode(seq.tokens), seq.params.stop)
        if seq.ticket.stream:
            if text.startswith(seq.emitted):
                if len(text) > len(seq.emitted):
                    seq.ticket.emit(TokenEvent(seq.index, text[len(seq.emitted) :]))
            else:  # cannot happen with the hold-back above; never send a wrong final text silently
                log_event("stream_text_diverged", logging.WARNING, emitted=seq.emitted, final=text)
        seq.ticket.done(seq.index, Generation(text, len(seq.ids), len(seq.tokens), reason))
