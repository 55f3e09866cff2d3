"""Continuous batching: a bounded queue of sequences and one worker thread that decodes them.

Each input of a request is one sequence (``Seq``); a request is a ``Ticket`` (tickets.py). ``submit``
puts the sequences into the queue (``QueueFull`` → 429 with ``Retry-After`` when it would overflow).
The worker decodes the running rows one token per step (``batch.Batch``, a KV cache per row). At
every step boundary it admits queued sequences, oldest first, up to ``max_batch_size`` rows and
``max_adapters`` distinct adapters (so it never evicts an adapter a row uses): it loads their
adapters, prefills them as a batch of their own and merges that into the running batch, so a new
request starts at the next step instead of after the longest running one. After every step each row
is checked:

- end-of-sequence token or a stop string → ``stop``; ``max_new_tokens`` or the context → ``length``;
- the request's deadline passed → ``deadline`` (it keeps the tokens it has);
- the request was cancelled (client gone) → the row is dropped at once, freeing its place.

A sequence still queued at its deadline fails the request with 504 ``deadline_exceeded`` (nothing was
produced). Models whose KV cache rows cannot be merged (sliding-window or static caches) batch
without joining: queued rows wait until the running ones are done. Events go to the ticket's
``notify`` callback, called on the worker thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loraserve.errors import Cancelled, DeadlineExceeded, QueueFull, ServeError
from loraserve.generation import FinishReason, Generation, cut_at_stop
from loraserve.logs import log_event
from loraserve.sampling import pick_tokens
from loraserve.tickets import Seq, Ticket, TokenEvent

if TYPE_CHECKING:
    from loraserve.batch import Batch
    from loraserve.engine import Engine


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


@dataclass(eq=False)
class _Running:
    """The rows being decoded: their sequences, their batch, and each row's next token to feed."""

    seqs: list[Seq] = field(default_factory=list)
    batch: Batch | None = None
    pending: list[int] = field(default_factory=list)
    joining: list[Seq] = field(default_factory=list)  # being admitted (failed with the rows on error)

    def adapters(self) -> set[str]:
        return {s.ticket.adapter for s in self.seqs if s.ticket.adapter is not None}

    def add(self, batch: Batch, seqs: list[Seq], tokens: list[int]) -> None:
        if self.batch is None:
            self.batch = batch
        else:
            self.batch.merge(batch)
        self.seqs.extend(seqs)
        self.pending.extend(tokens)

    def keep(self, keep: list[int], tokens: list[int]) -> None:
        """After a step: keep the rows ``keep``, whose next tokens to feed are in ``tokens``."""
        if not keep:
            self.batch, self.seqs, self.pending = None, [], []
            return
        assert self.batch is not None
        self.batch.select(keep)
        self.seqs = [self.seqs[i] for i in keep]
        self.pending = [tokens[i] for i in keep]


class Scheduler:
    def __init__(self, engine: Engine, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.clock = clock
        self._queue: deque[Seq] = deque()
        self._cv = threading.Condition()
        self._paused = False
        self._thread: threading.Thread | None = None
        self.running = 0  # rows being decoded now
        self.batches = 0  # admissions: prefills of queued rows (joining the running ones or not)
        self.largest_batch = 0  # the most rows decoded together
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
            self._wait_for_work()
            running = _Running()
            try:
                self._serve(running)
            except Exception as exc:  # keep serving; fail only the requests decoding now
                rows = [*running.seqs, *running.joining]
                log_event("batch_failed", logging.ERROR, exc_info=True, rows=len(rows))
                error = ServeError(f"{type(exc).__name__}: {exc}")
                for seq in rows:
                    seq.ticket.fail(error)
            finally:
                self.running = 0
                self.engine.adapters.in_use = frozenset()

    def _wait_for_work(self) -> None:
        with self._cv:
            while self._paused or not self._queue:
                self._cv.wait()

    def _serve(self, running: _Running) -> None:
        """Decode until no row is left; queued sequences join at every step boundary. The model lock
        is taken per step, so start-up preloading is never locked out by a busy server."""
        while True:
            with self.engine.lock:
                self._join(running)
                if not running.seqs:
                    return
                self._step(running)

    def _expire(self, seq: Seq) -> None:
        """A sequence whose deadline passed before it was decoded."""
        ticket = seq.ticket
        if ticket.produced or any(r is not None for r in ticket.results):
            ticket.done(seq.index, Generation("", len(seq.ids), 0, "deadline"))
        else:
            ticket.fail(DeadlineExceeded("the deadline passed before generation could start"))

    def _take(self, room: int, in_use: set[str]) -> list[Seq]:
        """Up to ``room`` queued sequences (oldest first) whose adapters fit with ``in_use`` within
        ``max_adapters``; drops cancelled ones and expires those past their deadline."""
        limit_adapters = self.engine.config.max_adapters
        with self._cv:
            if self._paused or not self._queue:
                return []
            now = self.clock()
            chosen: list[Seq] = []
            adapters = set(in_use)
            rest: deque[Seq] = deque()
            for seq in self._queue:
                if seq.ticket.finished:
                    continue
                if now >= seq.ticket.deadline:
                    self._expire(seq)
                    continue
                adapter = seq.ticket.adapter
                fits = adapter is None or adapter in adapters or len(adapters) < limit_adapters
                if len(chosen) < room and fits:
                    chosen.append(seq)
                    if adapter is not None:
                        adapters.add(adapter)
                else:
                    rest.append(seq)
            self._queue = rest
            return chosen

    def _join(self, running: _Running) -> None:
        """Prefill queued sequences and add them to the running rows (all of them when none run)."""
        room = self.max_batch_size - len(running.seqs)
        if room <= 0 or (running.batch is not None and not running.batch.mergeable):
            # Full, or a model whose cache rows cannot join: the running rows finish first; queued
            # sequences past their deadline still end now (504), not when a place frees up.
            self._take(0, set())
            return
        newcomers = self._take(room, running.adapters())
        if not newcomers:
            return
        running.joining = newcomers
        active = self._ready(newcomers)
        if active:
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(running.seqs) + len(active))
            batch = self.engine.batch([(s.ids, s.ticket.adapter) for s in active])
            tokens = pick_tokens(batch.prefill(), [s.sampler for s in active])
            keep = self._after_tokens(active, tokens)
            if keep:
                batch.select(keep)
                running.add(batch, [active[i] for i in keep], [tokens[i] for i in keep])
        running.joining = []
        self._rows_changed(running)

    def _ready(self, newcomers: list[Seq]) -> list[Seq]:
        """Load the newcomers' adapters (evicting none in use); the ones still to decode."""
        paths = {s.ticket.adapter: s.path for s in newcomers if s.ticket.adapter is not None}
        failed = self.engine.adapters.activate({a: p for a, p in paths.items() if p is not None})
        for seq in newcomers:
            if seq.ticket.adapter in failed:
                seq.ticket.fail(failed[seq.ticket.adapter])
        now = self.clock()
        active = []
        for seq in newcomers:
            if seq.ticket.finished:
                continue
            if now >= seq.ticket.deadline:
                self._expire(seq)
                continue
            active.append(seq)
        return active

    def _step(self, running: _Running) -> None:
        """One token for every running row."""
        assert running.batch is not None
        logits = running.batch.feed(running.pending)
        tokens = pick_tokens(logits, [s.sampler for s in running.seqs])
        before = len(running.seqs)
        running.keep(self._after_tokens(running.seqs, tokens), tokens)
        if len(running.seqs) != before:
            self._rows_changed(running)

    def _rows_changed(self, running: _Running) -> None:
        """Rows joined or left: the adapters in use (never evicted) and the count of running rows."""
        self.engine.adapters.in_use = frozenset(running.adapters())
        self.running = len(running.seqs)

    def _after_tokens(self, seqs: list[Seq], tokens: list[int]) -> list[int]:
        """Give each row its new token; finish the rows that are done; the indices of the others."""
        keep: list[int] = []
        for i, seq in enumerate(seqs):
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
        return keep

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
