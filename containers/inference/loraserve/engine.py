"""The model: one base causal LM, a PeftModel holding an LRU of LoRA adapters, and generation.

Concurrency: adapter downloads run outside the model lock; everything that touches the model
(loading/evicting adapters, choosing the active adapter, tokenising, generating) runs under one lock,
so requests for different adapters never see each other's adapter. Correctness over throughput.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import transformers
from packaging.version import Version
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
)

from loraserve.config import ServerConfig
from loraserve.errors import AdapterInvalid, BadRequest, NotReady, ServeError
from loraserve.logs import log_event
from loraserve.schemas import ChatMessage, GenerationParameters, Prompt
from loraserve.store import AdapterSource, make_source, resolve_base_model

if TYPE_CHECKING:
    from peft import PeftModel

# transformers 4.56 renamed from_pretrained's ``torch_dtype`` to ``dtype`` (5.x warns on the old name).
_DTYPE_KWARG = "dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype"

State = Literal["loading", "ready", "failed"]
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Generation:
    generated_text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason


class _StopOnStrings(StoppingCriteria):
    """Stops once the decoded continuation contains any stop string (batch of one)."""

    def __init__(self, tokenizer: Any, prompt_len: int, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stops = list(stops)
        self.hit = False

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        text = self.tokenizer.decode(input_ids[0, self.prompt_len :], skip_special_tokens=True)
        self.hit = any(s in text for s in self.stops)
        done: torch.BoolTensor = torch.full(  # type: ignore[assignment]
            (input_ids.shape[0],), self.hit, dtype=torch.bool, device=input_ids.device
        )
        return done


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


class Engine:
    """Loads the base model once, serves generation for the base model or any adapter."""

    def __init__(self, config: ServerConfig, source: AdapterSource | None = None) -> None:
        self.config = config
        self.source = source if source is not None else make_source(config.adapter_prefix, config.cache_dir)
        self.state: State = "loading"
        self.error: str | None = None
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(config.dtype, self.device)
        self._lock = threading.RLock()
        self._base: PreTrainedModel | None = None
        self._peft: PeftModel | None = None
        self._tokenizer: Any = None
        self._lru: OrderedDict[str, None] = OrderedDict()
        self._loaded: tuple[str, ...] = ()  # snapshot of the LRU order for readers without the lock
        self._context_limit: int | None = None
        self._eos_ids: set[int] = set()
        self.evictions = 0
        self.load_started = False

    # ---------------------------------------------------------------- loading
    @property
    def ready(self) -> bool:
        return self.state == "ready"

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
            self._eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
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

    def _drop_adapter(self, adapter_id: str) -> None:
        peft = self._peft
        if peft is not None and adapter_id in peft.peft_config:
            with contextlib.suppress(Exception), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "adapter X was active which is now deleted"
                peft.delete_adapter(adapter_id)

    def _load_adapter(self, adapter_id: str, path: Path) -> None:
        from peft import PeftConfig, PeftModelForCausalLM, PeftType

        assert self._base is not None
        try:
            peft_config = PeftConfig.from_pretrained(str(path))
        except Exception as exc:
            raise AdapterInvalid(f"adapter {adapter_id!r} has an unreadable config: {exc}") from exc
        if peft_config.peft_type != PeftType.LORA:
            raise AdapterInvalid(f"adapter {adapter_id!r} is {peft_config.peft_type}, not a LoRA adapter")
        peft_config.inference_mode = True
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
            detail = " ".join(str(exc).split()) or type(exc).__name__
            log_event("adapter_load_failed", adapter=adapter_id, error=detail[:2000])
            raise AdapterInvalid(
                f"adapter {adapter_id!r} cannot be loaded onto base model {self.config.base_model!r}: "
                f"{detail[:500]}"
            ) from exc
        self._peft.to(self.device)
        self._peft.eval()

    def _ensure_adapter(self, adapter_id: str, path: Path) -> None:
        """Make ``adapter_id`` loaded and most recently used; evict beyond ``max_adapters``. Under the lock."""
        if adapter_id in self._lru:
            self._lru.move_to_end(adapter_id)
            self._loaded = tuple(self._lru)
            return
        started = time.perf_counter()
        self._load_adapter(adapter_id, path)
        self._lru[adapter_id] = None
        log_event(
            "adapter_loaded", adapter=adapter_id, load_ms=round((time.perf_counter() - started) * 1000, 1)
        )
        # Evict after loading, so the PeftModel always keeps at least one adapter.
        evicted = False
        while len(self._lru) > self.config.max_adapters:
            old, _ = self._lru.popitem(last=False)
            self._drop_adapter(old)
            self.evictions += 1
            evicted = True
            log_event("adapter_evicted", adapter=old, loaded=len(self._lru))
        self._loaded = tuple(self._lru)
        if evicted and self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()

    @contextlib.contextmanager
    def _use(self, adapter_id: str | None, path: Path | None) -> Iterator[PreTrainedModel]:
        """Yield the model to generate with: the adapter active, or the base model with adapters off."""
        assert self._base is not None
        if adapter_id is not None:
            assert path is not None
            self._ensure_adapter(adapter_id, path)
            assert self._peft is not None
            self._peft.set_adapter(adapter_id)
            yield self._peft  # type: ignore[misc]
        elif self._peft is not None and self._peft.peft_config:
            with self._peft.disable_adapter():
                yield self._base
        else:
            yield self._base

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

    def _generation_config(self, params: GenerationParameters, max_new: int) -> GenerationConfig:
        assert self._base is not None
        gc_ = copy.deepcopy(self._base.generation_config)
        gc_.max_new_tokens = max_new
        gc_.max_length = None
        gc_.min_new_tokens = None
        gc_.min_length = 0
        gc_.num_beams = 1
        gc_.num_return_sequences = 1
        gc_.pad_token_id = self._tokenizer.pad_token_id
        if gc_.eos_token_id is None and self._eos_ids:
            gc_.eos_token_id = sorted(self._eos_ids)
        if params.temperature > 0:
            gc_.do_sample = True
            gc_.temperature = params.temperature
            gc_.top_p = params.top_p
            gc_.top_k = params.top_k or 0
        else:
            gc_.do_sample = False
            gc_.temperature = None
            gc_.top_p = None
            gc_.top_k = None
        return gc_

    def _generate_one(
        self, model: PreTrainedModel, ids: list[int], params: GenerationParameters
    ) -> Generation:
        tok = self._tokenizer
        max_new = params.max_new_tokens
        if self._context_limit is not None:
            max_new = min(max_new, self._context_limit - len(ids))
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        attention = torch.ones_like(input_ids)
        criteria = StoppingCriteriaList()
        stopper = None
        if params.stop:
            stopper = _StopOnStrings(tok, len(ids), params.stop)
            criteria.append(stopper)
        out = model.generate(  # type: ignore[operator]
            input_ids=input_ids,
            attention_mask=attention,
            generation_config=self._generation_config(params, max_new),
            stopping_criteria=criteria,
        )
        new = out[0, len(ids) :].tolist()
        # Batch of one: nothing is padded, but be safe about a trailing pad after EOS.
        pad = tok.pad_token_id
        while new and pad is not None and new[-1] == pad and pad not in self._eos_ids:
            new.pop()
        text = tok.decode(new, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, params.stop)
        ended = bool(new) and new[-1] in self._eos_ids
        finish: FinishReason = "stop" if stopped or ended else "length"
        return Generation(text, len(ids), len(new), finish)

    def generate(
        self, prompts: Sequence[Prompt], adapter_id: str | None, params: GenerationParameters
    ) -> list[Generation]:
        """Generate one continuation per prompt, with ``adapter_id`` (or the base model when None)."""
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
        # Download (slow I/O) before taking the model lock; 404/422/502 surface here.
        path = self.source.fetch(adapter_id) if adapter_id is not None else None
        with self._lock:
            encoded = [self._render(p, i) for i, p in enumerate(prompts)]
            results = []
            with self._use(adapter_id, path) as model, torch.inference_mode():
                for ids in encoded:
                    if params.seed is not None:
                        torch.manual_seed(params.seed)
                    results.append(self._generate_one(model, ids, params))
            return results
