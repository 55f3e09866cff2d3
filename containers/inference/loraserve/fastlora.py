"""A lean forward for PEFT's LoRA ``Linear`` layers while a batch uses one adapter, or none.

PEFT's ``lora.Linear.forward`` handles every case (mixed batches, merged weights, DoRA and other
variants, dtype casts) at the price of five module calls and a dozen lookups per layer per step. On
a small model that Python is a large part of a decoding step (tiny model: a cached adapter cost
1.27x the base per request). While the whole batch uses one plain LoRA adapter, or no adapter, each
eligible layer's ``forward`` is replaced here by the same arithmetic in plain ``F.linear`` calls, in
PEFT's order, so the result is bitwise PEFT's; ``restore`` puts PEFT's forward back (mixed batches,
and before PEFT adds or removes adapters). A layer that is not eligible keeps PEFT's forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Forward = Callable[[torch.Tensor], torch.Tensor]


def lora_layers(model: nn.Module) -> list[Any]:
    """The LoRA ``Linear`` layers of ``model`` (exactly PEFT's class: quantised subclasses differ)."""
    from peft.tuners.lora.layer import Linear

    return [m for m in model.modules() if type(m) is Linear]


def _eligible(layer: Any, adapter: str) -> bool:
    base = layer.base_layer
    if type(base) is not nn.Linear or layer.fan_in_fan_out or layer.merged:
        return False
    if adapter not in layer.lora_A:
        return True  # this adapter does not touch the layer: the base alone, as PEFT computes it
    return adapter not in layer.lora_variant and layer.lora_A[adapter].weight.dtype == base.weight.dtype


def _base_only(base: nn.Linear) -> Forward:
    weight, bias = base.weight, base.bias

    def forward(x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, bias)

    return forward


def _with_lora(base: nn.Linear, a: nn.Linear, b: nn.Linear, scaling: float) -> Forward:
    weight, bias = base.weight, base.bias
    a_weight, a_bias, b_weight, b_bias = a.weight, a.bias, b.weight, b.bias

    def forward(x: torch.Tensor) -> torch.Tensor:
        result = F.linear(x, weight, bias)
        return result + F.linear(F.linear(x, a_weight, a_bias), b_weight, b_bias) * scaling

    return forward


def install(layers: Iterable[Any], adapter: str | None) -> int:
    """Make the layers compute ``adapter`` (None: the base model) with a lean forward; returns how
    many layers got one. The caller has set PEFT's own state to the same (active adapter, enabled)."""
    fast = 0
    for layer in layers:
        restore_one(layer)
        if adapter is None:
            if type(layer.base_layer) is nn.Linear:
                layer.forward = _base_only(layer.base_layer)
                fast += 1
            continue
        if not _eligible(layer, adapter):
            continue
        if adapter in layer.lora_A:
            scaling = float(layer.scaling[adapter])
            layer.forward = _with_lora(
                layer.base_layer, layer.lora_A[adapter], layer.lora_B[adapter], scaling
            )
        else:
            layer.forward = _base_only(layer.base_layer)
        fast += 1
    return fast


def restore_one(layer: Any) -> None:
    layer.__dict__.pop("forward", None)


def restore(layers: Iterable[Any]) -> None:
    """PEFT's own forward again on every layer."""
    for layer in layers:
        restore_one(layer)
