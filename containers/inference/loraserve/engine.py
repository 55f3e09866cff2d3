"""The model step: one base causal LM, a PeftModel holding an LRU of LoRA adapters, batched decoding.

Threads: the scheduler's worker thread (scheduler.py) is the only one that runs the model; it loads
adapters and decodes a batch under ``Engine.lock`` (start-up preloading takes the lock too). Adapter
downloads and tokenisation run on the request's thread before the request is queued, so their errors
are plain HTTP errors. HTTP lives in app.py.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import transformers
from packaging.version import Version
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
)

from loraserve.config import ServerConfig
from loraserve.errors import AdapterInvalid, BadRequest, NotReady, ServeError
from loraserve.logs import log_event
from loraserve.schemas import ChatMessage, GenerationParameters, Prompt
from loraserve.store import AdapterSource, make_source, resolve_base_model

if TYPE_CHECKING:
    from peft import PeftModel

    from loraserve.scheduler import Event, Ticket

# transformers 4.56 renamed from_pretrained's ``torch_dtype`` to ``dtype`` (5.x warns on the old name).
_DTYPE_KWARG = "dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype"

State = Literal["loading", "ready", "failed"]
FinishReason = Literal["stop", "length", "deadline"]
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


@dataclass(frozen=True)
class Generation:
    generated_text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop string; returns (text, whether one was found)."""
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    if not cuts:
        return text, False
    return text[: min(cuts)], True


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class Sampler:
    """Next-token choice for one sequence: greedy, or temperature/top-k/top-p sampling with its own
    generator (a ``seed`` makes it reproducible whatever else shares the batch)."""

    def __init__(self, params: GenerationParameters) -> None:
        self.temperature = params.temperature
        self.top_p = params.top_p
        self.top_k = params.top_k or 0
        self.generator: torch.Generator | None = None
        if self.temperature > 0:
            self.generator = torch.Generator(device="cpu")
            if params.seed is not None:
                self.generator.manual_seed(params.seed)
            else:
                self.generator.seed()

    @property
    def greedy(self) -> bool:
        return self.generator is None

    def sample(self, logits: torch.Tensor) -> int:
        """``logits``: one row (vocabulary), float32 on the CPU."""
        assert self.generator is not None
        x = logits / self.temperature
        if 0 < self.top_k < x.shape[-1]:
            kth = torch.topk(x, self.top_k).values[-1]
            x = x.masked_fill(x < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_x, order = torch.sort(x)  # ascending, as transformers' TopPLogitsWarper
            cumulative = sorted_x.softmax(-1).cumsum(-1)
            drop = cumulative <= 1 - self.top_p
            drop[-1] = False  # keep at least the most likely token
            x = x.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
        return int(torch.multinomial(x.softmax(-1), 1, generator=self.generator).item())


class Batch:
    """One decoding batch: a left-padded prefill, then one token per row per step with a KV cache.

    Rows may use different adapters (PEFT mixed-adapter batch, ``adapter_names``; ``__base__`` = no
    adapter). Padding is masked and position ids count real tokens only, so each row computes what it
    would alone. Rows are dropped between steps (finished, cancelled, past their deadline).
    """

    def __init__(self, engine: Engine, rows: Sequence[tuple[list[int], str | None]]) -> None:
        self.engine = engine
        self.adapters = [adapter for _, adapter in rows]
        width = max(len(ids) for ids, _ in rows)
        pad = engine.pad_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r, _ in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r, _ in rows], dtype=torch.long)
        self.input_ids = ids.to(engine.device)
        self.mask = mask.to(engine.device)
        self.cache: Any = None

    def _forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        model = self.engine.route(self.adapters)
        name = self.engine.cache_kwarg
        kwargs: dict[str, Any] = {} if self.cache is None else {name: self.cache}
        out = model(
            input_ids=input_ids,
            attention_mask=self.mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        self.cache = getattr(out, name)
        return out.logits[:, -1, :]

    @torch.inference_mode()
    def prefill(self) -> torch.Tensor:
        """Logits of each row's first new token, ``[rows, vocab]``."""
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.next_pos = positions[:, -1] + 1
        return self._forward(self.input_ids, positions)

    @torch.inference_mode()
    def step(self, tokens: Sequence[int], keep: Sequence[int]) -> torch.Tensor:
        """Feed ``tokens`` (one per kept row) for the rows ``keep`` (indices into the current rows)."""
        if len(keep) != len(self.adapters):
            index = torch.tensor(list(keep), dtype=torch.long, device=self.engine.device)
            self.cache.batch_select_indices(index)
            self.mask = self.mask[index]
            self.next_pos = self.next_pos[index]
            self.adapters = [self.adapters[i] for i in keep]
        new = torch.tensor(list(tokens), dtype=torch.long, device=self.engine.device).unsqueeze(-1)
        self.mask = torch.cat([self.mask, torch.ones_like(new)], dim=-1)
        positions = self.next_pos.unsqueeze(-1)
        self.next_pos = self.next_pos + 1
        return self._forward(new, positions)


@torch.inference_mode()
def pick_tokens(logits: torch.Tensor, samplers: Sequence[Sampler]) -> list[int]:
    """One next token per row: argmax for greedy rows, each sampled row with its own generator."""
    chosen: list[int] = logits.argmax(-1).tolist()
    for i, sampler in enumerate(samplers):
        if not sampler.greedy:
            chosen[i] = sampler.sample(logits[i].float().cpu())
    return chosen


class Engine:
    """Loads the base model once; holds the adapters; runs batches for the scheduler."""

    def __init__(self, config: ServerConfig, source: AdapterSource | None = None) -> None:
        from loraserve.scheduler import Scheduler

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
        self._lock = threading.RLock()  # the model: adapters and batches
        self._tok_lock = threading.Lock()  # fast tokenizers are not safe to share across threads
        self._base: PreTrainedModel | None = None
        self._peft: PeftModel | None = None
        self._tokenizer: Any = None
        self._lru: OrderedDict[str, int] = OrderedDict()  # adapter id -> bytes of its weights
        self._loaded: tuple[str, ...] = ()  # snapshot of the LRU order for readers without the lock
        self._layers: tuple[Any, bool] | None = None  # (active adapter, LoRA layers enabled); see _switch
        self._hooks: list[Any] = []  # pre-forward hooks giving ``adapter_names`` to the LoRA layers
        self._row_adapters: list[str] | None = None  # their value: the running mixed batch's rows
        self._lora_layer_types: tuple[type, ...] = ()
        self._context_limit: int | None = None
        self.eos_ids: set[int] = set()
        self.pad_id = 0
        self.cache_kwarg = "past_key_values"  # transformers >= 5.2x names it ``cache``
        self.evictions = 0
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
            path = resolve_base_model(self.config.base_model, self.config.cache_dir / "base")
            common: dict[str, Any] = {
                "local_files_only": self.config.local_files_only,
                "trust_remote_code": self.config.trust_remote_code,
            }
            tokenizer = AutoTokenizer.from_pretrained(path, **common)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
            tokenizer.padding_side = "left"
            if self.device.type == "cuda":
                common["device_map"] = str(self.device)  # load straight onto the GPU (accelerate)
            common[_DTYPE_KWARG] = self.dtype
            model: Any = AutoModelForCausalLM.from_pretrained(path, **common)
            if self.device.type != "cuda":
                model.to(self.device)
            model.eval()
            gen = model.generation_config
            eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
            self.eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
            self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            if "cache" in inspect.signature(type(model).forward).parameters:
                self.cache_kwarg = "cache"
            limit = getattr(model.config, "max_position_embeddings", None)
            self._context_limit = int(limit) if isinstance(limit, int) and limit > 0 else None
            with self._lock:
                self._tokenizer = tokenizer
                self._base = model
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
                    self._ensure_adapter(adapter_id, path)
            except ServeError as exc:
                log_event(
                    "adapter_preload_failed",
                    logging.WARNING,
                    adapter=adapter_id,
                    code=exc.code,
                    error=exc.message,
                )

    # --------------------------------------------------------------- adapters
    def loaded_adapters(self) -> list[str]:
        """Loaded adapter ids, least recently used first (a snapshot; never waits for the lock)."""
        return list(self._loaded)

    def adapter_bytes(self) -> dict[str, int]:
        """Bytes of LoRA weights per loaded adapter (a snapshot)."""
        return dict(self._lru)

    def _drop_adapter(self, adapter_id: str) -> None:
        self._forget_layers()
        peft = self._peft
        if peft is not None and adapter_id in peft.peft_config:
            with contextlib.suppress(Exception), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "adapter X was active which is now deleted"
                peft.delete_adapter(adapter_id)

    def _weights_bytes(self, adapter_id: str) -> int:
        assert self._peft is not None
        marker = f".{adapter_id}."
        return sum(p.numel() * p.element_size() for n, p in self._peft.named_parameters() if marker in n)

    def _load_adapter(self, adapter_id: str, path: Path) -> None:
        from peft import PeftConfig, PeftModelForCausalLM, PeftType
        from peft.tuners.lora import LoraLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        assert self._base is not None
        try:
            peft_config = PeftConfig.from_pretrained(str(path))
        except Exception as exc:
            self.source.invalidate(adapter_id)
            raise AdapterInvalid(f"adapter {adapter_id!r} has an unreadable config: {exc}") from exc
        if peft_config.peft_type != PeftType.LORA:
            raise AdapterInvalid(f"adapter {adapter_id!r} is {peft_config.peft_type}, not a LoRA adapter")
        peft_config.inference_mode = True
        self._forget_layers()  # new LoRA layers start enabled, with their own active adapter
        self._lora_layer_types = (LoraLayer, AuxiliaryTrainingWrapper)  # as PEFT's adapter_names hooks
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                if self._peft is None:
                    # Built by hand (not PeftModel.from_pretrained) so that a failed first load can be
                    # undone: the LoRA layers injected into the base model are removed again.
                    self._peft = PeftModelForCausalLM(self._base, peft_config, adapter_name=adapter_id)
                    self._peft.eval()
                result = self._peft.load_adapter(str(path), adapter_name=adapter_id, is_trainable=False)
            missing = [k for k in result.missing_keys if "lora_" in k and f".{adapter_id}." in k]
            if missing:
                raise ValueError(
                    f"{len(missing)} LoRA weights missing from the checkpoint, e.g. {missing[0]}"
                )
        except Exception as exc:
            self._drop_adapter(adapter_id)
            self.source.invalidate(adapter_id)  # a corrupt download is fetched again next time
            detail = " ".join(str(exc).split()) or type(exc).__name__
            log_event("adapter_load_failed", adapter=adapter_id, error=detail[:2000])
            raise AdapterInvalid(
                f"adapter {adapter_id!r} cannot be loaded onto base model {self.config.base_model!r}: "
                f"{detail[:500]}"
            ) from exc
        self._peft.to(self.device)
        self._peft.eval()

    def _over_budget(self) -> bool:
        budget = self.config.adapter_memory_bytes
        return len(self._lru) > self.config.max_adapters or (budget > 0 and sum(self._lru.values()) > budget)

    def _ensure_adapter(self, adapter_id: str, path: Path, keep: Set[str] = frozenset()) -> None:
        """Make ``adapter_id`` loaded and most recently used, then evict least recently used adapters
        beyond ``max_adapters`` or the memory budget, never one in ``keep`` (the running batch's).
        Under the lock."""
        if adapter_id in self._lru:
            self._lru.move_to_end(adapter_id)
            self._loaded = tuple(self._lru)
            return
        started = time.perf_counter()
        self._load_adapter(adapter_id, path)
        self._lru[adapter_id] = self._weights_bytes(adapter_id)
        log_event(
            "adapter_loaded",
            adapter=adapter_id,
            bytes=self._lru[adapter_id],
            load_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        # Evict after loading, so the PeftModel always keeps at least one adapter.
        evicted = False
        while self._over_budget():
            victim = next((a for a in self._lru if a != adapter_id and a not in keep), None)
            if victim is None:
                log_event(
                    "adapter_memory_over_budget",
                    logging.WARNING,
                    loaded=len(self._lru),
                    bytes=sum(self._lru.values()),
                    budget_bytes=self.config.adapter_memory_bytes,
                )
                break
            size = self._lru.pop(victim)
            self._drop_adapter(victim)
            self.evictions += 1
            evicted = True
            log_event(
                "adapter_evicted",
                adapter=victim,
                bytes=size,
                loaded=len(self._lru),
                loaded_bytes=sum(self._lru.values()),
            )
        self._loaded = tuple(self._lru)
        if evicted and self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()

    def activate(self, paths: Mapping[str, Path]) -> dict[str, ServeError]:
        """Load every adapter of a batch (under the lock); returns the ones that failed."""
        failed: dict[str, ServeError] = {}
        keep = set(paths)
        for adapter_id, path in paths.items():
            try:
                self._ensure_adapter(adapter_id, path, keep)
            except ServeError as exc:
                failed[adapter_id] = exc
        return failed

    def route(self, adapters: Sequence[str | None]) -> PreTrainedModel | PeftModel:
        """The model to call for a batch whose rows use ``adapters``. Under the lock."""
        assert self._base is not None
        peft = self._peft
        self._row_adapters = None
        if peft is None or not peft.peft_config:
            return self._base
        distinct = set(adapters)
        if distinct == {None}:
            self._switch(peft, None, enabled=False)
            return self._base
        if len(distinct) == 1:
            self._switch(peft, next(iter(distinct)), enabled=True)
            return peft
        # A mixed batch: PEFT's ``adapter_names``, given to every LoRA layer by our own pre-forward
        # hooks (registered once, not per call as ``peft(..., adapter_names=...)`` does).
        self._switch(peft, None, enabled=True)
        if not self._hooks:
            self._hooks = [
                module.register_forward_pre_hook(self._inject_adapter_names, with_kwargs=True)
                for module in peft.base_model.modules()
                if isinstance(module, self._lora_layer_types)
            ]
        self._row_adapters = [a if a is not None else BASE_ADAPTER for a in adapters]
        return peft

    def _inject_adapter_names(
        self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self._row_adapters is not None:
            kwargs["adapter_names"] = self._row_adapters
        return args, kwargs

    def _switch(self, peft: PeftModel, active: str | None, *, enabled: bool) -> None:
        """Make ``active`` the active adapter (None: any) and the LoRA layers enabled or disabled,
        touching PEFT only for what differs from the last state set here: ``set_adapter`` and
        ``disable_adapter`` walk every module of the model, which costs more than a decoding step
        of a small model. Loading or deleting an adapter forgets the state (``_forget_layers``)."""
        known = self._layers
        if active is not None and (known is None or known[0] != active):
            peft.set_adapter(active)
        if known is None or known[1] != enabled:
            if enabled:
                peft.base_model.enable_adapter_layers()
            else:
                peft.base_model.disable_adapter_layers()
        self._layers = (peft.active_adapter, enabled)

    def _forget_layers(self) -> None:
        """Before PEFT adds or removes LoRA layers: the next batch sets their state again."""
        self._layers = None
        self._row_adapters = None
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    # ------------------------------------------------------------- generation
    def _render(self, prompt: Prompt, index: int) -> list[int]:
        tok = self._tokenizer
        if isinstance(prompt, str):
            ids: list[int] = tok(prompt)["input_ids"]
        else:
            if not getattr(tok, "chat_template", None):
                raise BadRequest(
                    "the base model's tokenizer has no chat template: send plain-text inputs",
                    code="chat_template_missing",
                )
            messages = [m.model_dump() if isinstance(m, ChatMessage) else m for m in prompt]
            try:
                text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            except Exception as exc:
                raise BadRequest(
                    f"inputs[{index}]: the chat template rejected these messages: {exc}"
                ) from exc
            ids = tok(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise BadRequest(f"inputs[{index}] is empty after tokenisation", code="empty_prompt")
        if self._context_limit is not None and len(ids) >= self._context_limit:
            raise BadRequest(
                f"inputs[{index}] has {len(ids)} tokens; the model's context is {self._context_limit}",
                code="prompt_too_long",
            )
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        with self._tok_lock:
            text: str = self._tokenizer.decode(list(ids), skip_special_tokens=True)
        return text

    def batch(self, rows: Sequence[tuple[list[int], str | None]]) -> Batch:
        return Batch(self, rows)

    def deadline_for(self, requested_s: float | None) -> float:
        """Seconds a request may take: its own ``deadline_s`` capped at the server's setting."""
        return min(requested_s, self.config.deadline_s) if requested_s else self.config.deadline_s

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
        from loraserve.scheduler import Seq, Ticket

        if not self.ready:
            raise NotReady(
                "the base model is still loading"
                if self.state == "loading"
                else f"model failed: {self.error}"
            )
        if len(prompts) > self.config.max_batch_inputs:
            raise BadRequest(
                f"{len(prompts)} inputs in one request; at most {self.config.max_batch_inputs}",
                code="too_many_inputs",
            )
        if len(prompts) > self.config.max_queue:
            raise BadRequest(
                f"{len(prompts)} inputs in one request; the queue holds {self.config.max_queue}",
                code="too_many_inputs",
            )
        budget_s = self.deadline_for(deadline_s)
        floor = self.config.min_tokens_per_s
        if floor > 0 and params.max_new_tokens > budget_s * floor:
            raise BadRequest(
                f"max_new_tokens={params.max_new_tokens} cannot be generated within the {budget_s:g} s "
                f"deadline at the server's floor of {floor:g} tokens/s: at most {int(budget_s * floor)}",
                code="token_budget_exceeds_deadline",
            )
        # Download (slow I/O) on this thread, pinned in the disk cache until the request ends.
        path = self.source.fetch(adapter_id, pin=True) if adapter_id is not None else None
        release = (lambda: self.source.unpin(adapter_id)) if adapter_id is not None else None
        try:
            with self._tok_lock:
                encoded = [self._render(p, i) for i, p in enumerate(prompts)]
            ticket = Ticket(
                adapter_id,
                len(encoded),
                deadline=self.scheduler.clock() + budget_s,
                stream=stream,
                notify=notify,
                on_close=release,
            )
            room = self._context_limit
            seqs = [
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
            self.scheduler.submit(ticket, seqs)
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
