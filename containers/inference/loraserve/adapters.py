"""The LoRA adapters on the base model: a PeftModel holding an LRU of them, and per-batch routing.

Everything here but the snapshots (``loaded``, ``sizes``) runs under the engine's model lock.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence, Set
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from loraserve import fastlora
from loraserve.config import ServerConfig
from loraserve.errors import AdapterInvalid, ServeError
from loraserve.logs import log_event
from loraserve.store import AdapterSource

if TYPE_CHECKING:
    from peft import PeftConfig, PeftModel

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


class AdapterCache:
    """Loads adapters onto the base model (set once it is loaded), evicts the least recently used
    beyond ``max_adapters`` or the memory budget, and says which model a batch's rows call."""

    def __init__(self, config: ServerConfig, source: AdapterSource, device: torch.device) -> None:
        self.config = config
        self.source = source
        self.device = device
        self.base: Any = None  # the base PreTrainedModel, once loaded
        self.evictions = 0
        self._peft: PeftModel | None = None
        self._lru: OrderedDict[str, int] = OrderedDict()  # adapter id -> bytes of its weights
        self._loaded: tuple[str, ...] = ()  # snapshot of the LRU order for readers without the lock
        self._layers: tuple[Any, bool] | None = None  # (active adapter, LoRA layers enabled); see _switch
        self._hooks: list[Any] = []  # pre-forward hooks giving ``adapter_names`` to the LoRA layers
        self._row_adapters: list[str] | None = None  # their value: the running mixed batch's rows
        self._lora_layer_types: tuple[type, ...] = ()
        self.in_use: frozenset[str] = frozenset()  # adapters of the rows decoding now (the scheduler's)
        self._fast: fastlora.LeanLoRA | None = None  # lean forwards of the LoRA layers (fastlora)

    # -------------------------------------------------------------- snapshots
    def loaded(self) -> list[str]:
        """Loaded adapter ids, least recently used first (a snapshot; never waits for the lock)."""
        return list(self._loaded)

    def sizes(self) -> dict[str, int]:
        """Bytes of LoRA weights per loaded adapter (a snapshot)."""
        return dict(self._lru)

    # ---------------------------------------------------------- load and evict
    def activate(self, paths: Mapping[str, Path]) -> dict[str, ServeError]:
        """Load every adapter of a batch, evicting none of them nor any ``in_use``; returns the ones
        that failed."""
        failed: dict[str, ServeError] = {}
        keep = set(paths)
        for adapter_id, path in paths.items():
            try:
                self.ensure(adapter_id, path, keep)
            except ServeError as exc:
                failed[adapter_id] = exc
        return failed

    def ensure(self, adapter_id: str, path: Path, keep: Set[str] = frozenset()) -> None:
        """Make ``adapter_id`` loaded and most recently used, then evict least recently used adapters
        beyond ``max_adapters`` or the memory budget, never one in ``keep`` nor one ``in_use`` (by
        rows decoding now: start-up preloading runs while requests are served)."""
        if adapter_id in self._lru:
            self._lru.move_to_end(adapter_id)
        else:
            started = time.perf_counter()
            self._load(adapter_id, path)
            self._lru[adapter_id] = self._weights_bytes(adapter_id)
            log_event(
                "adapter_loaded",
                adapter=adapter_id,
                bytes=self._lru[adapter_id],
                load_ms=round((time.perf_counter() - started) * 1000, 1),
            )
        # Evict after loading, so the PeftModel always keeps at least one adapter; also when it was
        # loaded already: an adapter in use may have held the cache over its budget until now.
        evicted = self._evict({adapter_id, *keep, *self.in_use})
        self._loaded = tuple(self._lru)
        if evicted and self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()

    def _over_budget(self) -> bool:
        budget = self.config.adapter_memory_bytes
        return len(self._lru) > self.config.max_adapters or (budget > 0 and sum(self._lru.values()) > budget)

    def _evict(self, keep: Set[str]) -> bool:
        """Drop least recently used adapters not in ``keep`` while over budget; whether any went."""
        evicted = False
        while self._over_budget():
            victim = next((a for a in self._lru if a not in keep), None)
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
            self._drop(victim)
            self.evictions += 1
            evicted = True
            log_event(
                "adapter_evicted",
                adapter=victim,
                bytes=size,
                loaded=len(self._lru),
                loaded_bytes=sum(self._lru.values()),
            )
        return evicted

    def _drop(self, adapter_id: str) -> None:
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

    def _lora_config(self, adapter_id: str, path: Path) -> PeftConfig:
        from peft import PeftConfig, PeftType

        try:
            peft_config: PeftConfig = PeftConfig.from_pretrained(str(path))
        except Exception as exc:
            self.source.invalidate(adapter_id)
            raise AdapterInvalid(f"adapter {adapter_id!r} has an unreadable config: {exc}") from exc
        if peft_config.peft_type != PeftType.LORA:
            raise AdapterInvalid(f"adapter {adapter_id!r} is {peft_config.peft_type}, not a LoRA adapter")
        peft_config.inference_mode = True
        return peft_config

    def _load(self, adapter_id: str, path: Path) -> None:
        from peft.tuners.lora import LoraLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        assert self.base is not None
        peft_config = self._lora_config(adapter_id, path)
        self._forget_layers()  # new LoRA layers start enabled, with their own active adapter
        self._lora_layer_types = (LoraLayer, AuxiliaryTrainingWrapper)  # as PEFT's adapter_names hooks
        try:
            peft = self._load_weights(adapter_id, path, peft_config)
        except Exception as exc:
            self._drop(adapter_id)
            self.source.invalidate(adapter_id)  # a corrupt download is fetched again next time
            detail = " ".join(str(exc).split()) or type(exc).__name__
            log_event("adapter_load_failed", adapter=adapter_id, error=detail[:2000])
            raise AdapterInvalid(
                f"adapter {adapter_id!r} cannot be loaded onto base model {self.config.base_model!r}: "
                f"{detail[:500]}"
            ) from exc
        peft.to(self.device)
        peft.eval()

    def _load_weights(self, adapter_id: str, path: Path, peft_config: PeftConfig) -> PeftModel:
        from peft import PeftModelForCausalLM

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            if self._peft is None:
                # Built by hand (not PeftModel.from_pretrained) so that a failed first load can be
                # undone: the LoRA layers injected into the base model are removed again.
                self._peft = PeftModelForCausalLM(self.base, peft_config, adapter_name=adapter_id)
                self._peft.eval()
            result = self._peft.load_adapter(str(path), adapter_name=adapter_id, is_trainable=False)
        missing = [k for k in result.missing_keys if "lora_" in k and f".{adapter_id}." in k]
        if missing:
            raise ValueError(f"{len(missing)} LoRA weights missing from the checkpoint, e.g. {missing[0]}")
        return self._peft

    # ---------------------------------------------------------------- routing
    def route(self, adapters: Sequence[str | None]) -> Any:
        """The model to call for a batch whose rows use ``adapters``: always the base model, whose
        layers PEFT has wrapped. PeftModel's own forward only adds ``adapter_names`` hooks per call,
        which ours replace (registered once), so calling it would cost time and change nothing."""
        assert self.base is not None
        peft = self._peft
        self._row_adapters = None
        if peft is None or not peft.peft_config:
            return self.base
        distinct = set(adapters)
        if distinct == {None}:
            self._switch(peft, None, enabled=False)
            self._lean(peft).use(None)
            return self.base
        if len(distinct) == 1:
            adapter = next(iter(distinct))
            self._switch(peft, adapter, enabled=True)
            self._lean(peft).use(adapter)
            return self.base
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
        self._lean(peft).use_mixed(adapters)
        return self.base

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
            tuner: Any = peft.base_model  # the LoraModel
            if enabled:
                tuner.enable_adapter_layers()
            else:
                tuner.disable_adapter_layers()
        self._layers = (peft.active_adapter, enabled)

    def _lean(self, peft: PeftModel) -> fastlora.LeanLoRA:
        if self._fast is None:
            self._fast = fastlora.LeanLoRA(peft.base_model)
        return self._fast

    def _forget_layers(self) -> None:
        """Before PEFT adds or removes LoRA layers: the next batch sets their state again."""
        if self._fast is not None:
            self._fast.restore()
        self._fast = None
        self._layers = None
        self._row_adapters = None
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
