"""The model step: one base causal LM, its LoRA adapters (adapters.py), batched decoding (batch.py).

Threads: the scheduler's worker thread (scheduler.py) is the only one that runs the model; it loads
adapters and decodes a batch under ``Engine.lock`` (start-up preloading takes the lock too). Adapter
downloads and tokenisation run on the request's thread before the request is queued (``submit``), so
their errors are plain HTTP errors. HTTP lives in app.py and routes/.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from loraserve.adapters import AdapterCache
from loraserve.base_model import load_base_model, pick_device, pick_dtype
from loraserve.batch import Batch, Row
from loraserve.config import ServerConfig
from loraserve.errors import BadRequest, NotReady, ServeError
from loraserve.generation import Generation
from loraserve.logs import log_event
from loraserve.prompts import render
from loraserve.sampling import Sampler
from loraserve.scheduler import Scheduler
from loraserve.schemas import GenerationParameters, Prompt
from loraserve.store import AdapterSource, make_source
from loraserve.tickets import Event, Seq, Ticket

State = Literal["loading", "ready", "failed"]


class Engine:
    """Loads the base model once; holds the adapters; runs batches for the scheduler."""

    def __init__(self, config: ServerConfig, source: AdapterSource | None = None) -> None:
        self.config = config
        self.source = (
            source
            if source is not None
            else make_source(config.adapter_prefix, config.cache_dir, budget_bytes=config.adapter_disk_bytes)
        )
        self.state: State = "loading"
        self.error: str | None = None
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(config.dtype, self.device)
        self.adapters = AdapterCache(config, self.source, self.device)
        self._lock = threading.RLock()  # the model: adapters and batches
        self._tok_lock = threading.Lock()  # fast tokenizers are not safe to share across threads
        self._tokenizer: Any = None
        self._context_limit: int | None = None
        self.eos_ids: set[int] = set()
        self.pad_id = 0
        self.cache_kwarg = "past_key_values"  # transformers >= 5.2x names it ``cache``
        self.load_started = False
        self.scheduler = Scheduler(self)

    # ---------------------------------------------------------------- loading
    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def load(self) -> None:
        """Load the tokenizer and base model; sets ``state`` to ready or failed (and re-raises)."""
        self.load_started = True
        started = time.perf_counter()
        try:
            base = load_base_model(self.config, self.device, self.dtype)
            self.eos_ids, self.pad_id, self.cache_kwarg = base.eos_ids, base.pad_id, base.cache_kwarg
            self._context_limit = base.context_limit
            with self._lock:
                self._tokenizer = base.tokenizer
                self.adapters.base = base.model
                self.state = "ready"
            log_event(
                "base_model_loaded",
                base_model=self.config.base_model,
                device=str(self.device),
                dtype=str(self.dtype).removeprefix("torch."),
                load_ms=round((time.perf_counter() - started) * 1000, 1),
            )
        except Exception as exc:
            self.state = "failed"
            self.error = f"{type(exc).__name__}: {exc}"
            raise

    def preload(self, adapter_ids: Sequence[str] | None = None) -> None:
        """Fetch and load adapters ahead of traffic; failures are logged, not raised."""
        ids = list(self.config.preload_adapters if adapter_ids is None else adapter_ids)
        for adapter_id in ids[-self.config.max_adapters :]:
            try:
                path = self.source.fetch(adapter_id)
                with self._lock:
                    self.adapters.ensure(adapter_id, path)
            except ServeError as exc:
                log_event("adapter_preload_failed", logging.WARNING, adapter=adapter_id, **exc.log_fields())

    # --------------------------------------------------------------- adapters
    @property
    def evictions(self) -> int:
        return self.adapters.evictions

    def loaded_adapters(self) -> list[str]:
        """Loaded adapter ids, least recently used first (a snapshot; never waits for the lock)."""
        return self.adapters.loaded()

    def adapter_bytes(self) -> dict[str, int]:
        """Bytes of LoRA weights per loaded adapter (a snapshot)."""
        return self.adapters.sizes()

    # ------------------------------------------------------------- generation
    def decode(self, ids: Sequence[int]) -> str:
        with self._tok_lock:
            text: str = self._tokenizer.decode(list(ids), skip_special_tokens=True)
        return text

    def batch(self, rows: Sequence[Row]) -> Batch:
        """A decoding batch of ``rows`` (under the lock)."""
        return Batch(
            rows,
            route=self.adapters.route,
            pad_id=self.pad_id,
            device=self.device,
            cache_kwarg=self.cache_kwarg,
        )

    def deadline_for(self, requested_s: float | None) -> float:
        """Seconds a request may take: its own ``deadline_s`` capped at the server's setting."""
        return min(requested_s, self.config.deadline_s) if requested_s else self.config.deadline_s

    def _admit(self, prompts: int, params: GenerationParameters, deadline_s: float | None) -> float:
        """Refuse a request the server cannot take (loading, too many inputs, a token budget the
        deadline cannot hold); returns its deadline in seconds."""
        if not self.ready:
            loading = self.state == "loading"
            raise NotReady("the base model is still loading" if loading else f"model failed: {self.error}")
        limits = {"at most": self.config.max_batch_inputs, "the queue holds": self.config.max_queue}
        for what, limit in limits.items():
            if prompts > limit:
                raise BadRequest(f"{prompts} inputs in one request; {what} {limit}", code="too_many_inputs")
        budget_s = self.deadline_for(deadline_s)
        floor = self.config.min_tokens_per_s
        if floor > 0 and params.max_new_tokens > budget_s * floor:
            raise BadRequest(
                f"max_new_tokens={params.max_new_tokens} cannot be generated within the {budget_s:g} s "
                f"deadline at the server's floor of {floor:g} tokens/s: at most {int(budget_s * floor)}",
                code="token_budget_exceeds_deadline",
            )
        return budget_s

    def _encode(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        with self._tok_lock:
            return [render(self._tokenizer, p, i, self._context_limit) for i, p in enumerate(prompts)]

    def _seqs(
        self, ticket: Ticket, encoded: Sequence[list[int]], params: GenerationParameters, path: Path | None
    ) -> list[Seq]:
        """One sequence to decode per prompt, its new tokens capped by the model's context."""
        room = self._context_limit
        return [
            Seq(
                ticket=ticket,
                index=i,
                ids=ids,
                params=params,
                path=path,
                max_new=min(params.max_new_tokens, room - len(ids)) if room else params.max_new_tokens,
                sampler=Sampler(params),
            )
            for i, ids in enumerate(encoded)
        ]

    def submit(
        self,
        prompts: Sequence[Prompt],
        adapter_id: str | None,
        params: GenerationParameters,
        *,
        deadline_s: float | None = None,
        stream: bool = False,
        notify: Callable[[Event], None] | None = None,
    ) -> Ticket:
        """Validate, fetch the adapter, tokenise and queue; errors here are plain HTTP errors."""
        budget_s = self._admit(len(prompts), params, deadline_s)
        # Download (slow I/O) on this thread, pinned in the disk cache until the request ends.
        path = self.source.fetch(adapter_id, pin=True) if adapter_id is not None else None
        release = (lambda: self.source.unpin(adapter_id)) if adapter_id is not None else None
        try:
            encoded = self._encode(prompts)
            ticket = Ticket(
                adapter_id,
                len(encoded),
                deadline=self.scheduler.clock() + budget_s,
                stream=stream,
                notify=notify,
                on_close=release,
            )
            self.scheduler.submit(ticket, self._seqs(ticket, encoded, params, path))
        except BaseException:
            if release is not None:
                release()
            raise
        return ticket

    def generate(
        self,
        prompts: Sequence[Prompt],
        adapter_id: str | None,
        params: GenerationParameters,
        *,
        deadline_s: float | None = None,
    ) -> list[Generation]:
        """Blocking: one continuation per prompt, with ``adapter_id`` (or the base model when None)."""
        return self.submit(prompts, adapter_id, params, deadline_s=deadline_s).wait()
