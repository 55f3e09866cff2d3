"""Lean forwards for PEFT's LoRA ``Linear`` layers: one adapter, none, or a mixed batch.

PEFT's ``lora.Linear.forward`` handles every case (merged weights, DoRA and other variants, dtype
casts) at the price of five module calls and a dozen lookups per layer per step, and in a mixed
batch it rebuilds each adapter's row list in Python in every layer. On a small model that Python is
much of a decoding step (tiny model: a cached adapter cost 1.27x the base per request; a 16-row
batch over 4 adapters ran at a third of the speed it runs at here).

``LeanLoRA`` replaces each eligible layer's ``forward`` by plain ``F.linear`` calls: the base layer,
then ``x·Aᵀ·(s·B)ᵀ`` added in place, with the scaling ``s`` folded into B once per adapter (PEFT
multiplies by ``s`` in every step). That is PEFT's arithmetic up to float rounding, and one formula
for every kind of step (one adapter, the base, a mixed batch whose rows per adapter are set once
per step), so a row computes the same whatever shares its batch. A layer that is not eligible (a
variant such as DoRA, a quantised or ``fan_in_fan_out`` layer, merged weights, another dtype) keeps
PEFT's forward, which is then used for every kind of step too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Forward = Callable[..., torch.Tensor]  # (x, adapter_names=None): our hooks may pass adapter_names
Lora = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]  # A, a, s·B, s·b
MIXED = "\0mixed"  # ``LeanLoRA.target`` of a mixed batch
PEFT = "\0peft"  # ``LeanLoRA.target`` when every layer runs PEFT's own forward


def lora_layers(model: nn.Module) -> list[Any]:
    """The LoRA ``Linear`` layers of ``model`` (exactly PEFT's class: quantised subclasses differ)."""
    from peft.tuners.lora.layer import Linear

    return [m for m in model.modules() if type(m) is Linear]


def _plain_layer(layer: Any) -> bool:
    return type(layer.base_layer) is nn.Linear and not layer.fan_in_fan_out and not layer.merged


def _plain_adapter(layer: Any, adapter: str) -> bool:
    """Whether PEFT computes ``adapter`` in this layer as vanilla LoRA in the base layer's dtype."""
    if adapter not in layer.lora_A:
        return True  # this adapter does not touch the layer: the base alone, as PEFT computes it
    dtype = layer.base_layer.weight.dtype
    return adapter not in layer.lora_variant and layer.lora_A[adapter].weight.dtype == dtype


def _base_only(base: nn.Linear) -> Forward:
    weight, bias = base.weight, base.bias

    def forward(x: torch.Tensor, adapter_names: object = None) -> torch.Tensor:
        return F.linear(x, weight, bias)

    return forward


def _with_lora(base: nn.Linear, lora: Lora) -> Forward:
    weight, bias = base.weight, base.bias
    a_weight, a_bias, b_weight, b_bias = lora

    def forward(x: torch.Tensor, adapter_names: object = None) -> torch.Tensor:
        result = F.linear(x, weight, bias)
        result += F.linear(F.linear(x, a_weight, a_bias), b_weight, b_bias)
        return result

    return forward


def _mixed(base: nn.Linear, loras: dict[str, Lora], groups: list[tuple[str, torch.Tensor]]) -> Forward:
    weight, bias = base.weight, base.bias

    def forward(x: torch.Tensor, adapter_names: object = None) -> torch.Tensor:
        result = F.linear(x, weight, bias)
        for adapter, index in groups:
            lora = loras.get(adapter)
            if lora is not None:
                a_weight, a_bias, b_weight, b_bias = lora
                result[index] += F.linear(F.linear(x[index], a_weight, a_bias), b_weight, b_bias)
        return result

    return forward


class LeanLoRA:
    """The lean forwards of one PeftModel's LoRA layers. Build a new one whenever PEFT adds or
    removes an adapter (after ``restore``): the layers and the folded weights are taken once."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = lora_layers(model)
        self.target: str | None = PEFT  # an adapter, None (the base), MIXED, or PEFT
        self._groups: list[tuple[str, torch.Tensor]] = []  # a mixed step's rows per adapter
        self._folded: dict[tuple[int, str], Lora] = {}
        self.lean = 0  # how many layers run a lean forward now

    def _lora(self, i: int, adapter: str) -> Lora:
        key = (i, adapter)
        if key not in self._folded:
            layer = self.layers[i]
            a, b, s = layer.lora_A[adapter], layer.lora_B[adapter], float(layer.scaling[adapter])
            with torch.no_grad():
                b_bias = None if b.bias is None else b.bias * s
                self._folded[key] = (a.weight, a.bias, b.weight * s, b_bias)
        return self._folded[key]

    def use(self, adapter: str | None) -> int:
        """Every step from now on uses ``adapter`` (None: the base model) on every row; returns how
        many layers run lean. The caller sets PEFT's own state (active adapter, enabled) the same."""
        if self.target == adapter:
            return self.lean
        self.target = adapter
        for i, layer in enumerate(self.layers):
            _restore(layer)
            if adapter is None:
                if type(layer.base_layer) is nn.Linear and not layer.merged:
                    layer.forward = _base_only(layer.base_layer)
            elif _plain_layer(layer) and _plain_adapter(layer, adapter):
                lean = adapter in layer.lora_A
                layer.forward = (
                    _with_lora(layer.base_layer, self._lora(i, adapter))
                    if lean
                    else _base_only(layer.base_layer)
                )
        self.lean = self._lean_count()
        return self.lean

    def use_mixed(self, adapters: Sequence[str | None]) -> int:
        """This step's rows use ``adapters`` (None: the base); returns how many layers run lean (on
        the others, PEFT's forward gets ``adapter_names`` from the caller's hooks)."""
        rows: dict[str, list[int]] = {}
        for i, adapter in enumerate(adapters):
            if adapter is not None:
                rows.setdefault(adapter, []).append(i)
        device = self.layers[0].base_layer.weight.device if self.layers else None
        self._groups[:] = [(a, torch.tensor(ix, dtype=torch.long, device=device)) for a, ix in rows.items()]
        if self.target != MIXED:
            self.target = MIXED
            for i, layer in enumerate(self.layers):
                _restore(layer)
                loaded = list(layer.lora_A.keys())
                if _plain_layer(layer) and all(_plain_adapter(layer, a) for a in loaded):
                    loras = {a: self._lora(i, a) for a in loaded}
                    layer.forward = _mixed(layer.base_layer, loras, self._groups)
            self.lean = self._lean_count()
        return self.lean

    def restore(self) -> None:
        """PEFT's own forward on every layer again."""
        for layer in self.layers:
            _restore(layer)
        self.target = PEFT
        self.lean = 0

    def _lean_count(self) -> int:
        return sum("forward" in layer.__dict__ for layer in self.layers)


def _restore(layer: Any) -> None:
    layer.__dict__.pop("forward", None)
