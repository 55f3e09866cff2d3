"""The engine's LoRA dropout: nn.Dropout's distribution and gradient with a cheaper CPU mask."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from scu.dropout import LANES, LoraDropout, keep_mask, use_lora_dropout
from scu.modeling import apply_lora, load_base_model


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_keep_mask_drops_p_independently(p: float) -> None:
    torch.manual_seed(0)
    n = 2_000_000
    keep = keep_mask(torch.Size([n]), p)
    q = round(p * LANES) / LANES  # p on the mask's 1/32768 grid
    dropped = 1.0 - keep.float().mean().item()
    assert abs(dropped - q) < 5 * math.sqrt(q * (1 - q) / n)
    # every lane of a 64-bit draw (element i % 4) drops at the same rate: the top lane's missing bit
    # is masked off everywhere
    for lane in range(4):
        sub = keep[lane::4].float()
        assert abs(1.0 - sub.mean().item() - q) < 5 * math.sqrt(q * (1 - q) / sub.numel())
    # neighbours are independent: P(both kept) = (1 - q)^2
    both = (keep[:-1] & keep[1:]).float().mean().item()
    assert abs(both - (1 - q) ** 2) < 5 * math.sqrt((1 - q) ** 2 / n)


def test_training_forward_and_gradient_match_nn_dropout_semantics() -> None:
    x = torch.randn(64, 33, 17, requires_grad=True)
    torch.manual_seed(1)
    y = LoraDropout(0.2)(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.8)
    assert 0.15 < 1 - kept.float().mean().item() < 0.25
    y.sum().backward()
    assert x.grad is not None
    assert torch.allclose(x.grad, kept.float() / 0.8)
    # the same seed draws the same mask (the trainer re-seeds each step: exact resume)
    torch.manual_seed(1)
    assert torch.equal(LoraDropout(0.2)(x.detach()), y.detach())


def test_eval_zero_p_and_bf16() -> None:
    x = torch.randn(8, 5)
    drop = LoraDropout(0.3).eval()
    assert torch.equal(drop(x), x)
    assert torch.equal(LoraDropout(0.0)(x), x)
    assert torch.equal(LoraDropout(1.0)(x), torch.zeros_like(x))
    xb = torch.randn(4, 100, dtype=torch.bfloat16)
    yb = LoraDropout(0.1)(xb)
    assert yb.dtype == torch.bfloat16 and yb.shape == xb.shape


def test_non_cpu_tensors_take_torch_dropout() -> None:
    x = torch.empty(4, 4, device="meta")
    assert LoraDropout(0.1)(x).device.type == "meta"  # nn.Dropout's path (the fused kernel on CUDA)


def test_apply_lora_swaps_every_lora_dropout(tiny_model: Path) -> None:
    base = load_base_model(str(tiny_model), "fp32", "lora", torch.device("cpu"), False)
    model, targets = apply_lora(base, 4, 8, 0.05, None)
    drops = [m for name, m in model.named_modules() if ".lora_dropout." in name]
    assert drops and len(drops) == sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A"))
    assert all(type(d) is LoraDropout and d.p == 0.05 for d in drops)
    assert use_lora_dropout(model) == 0  # already swapped
    # no dropout: PEFT puts an Identity there, which stays
    base = load_base_model(str(tiny_model), "fp32", "lora", torch.device("cpu"), False)
    model, _ = apply_lora(base, 4, 8, 0.0, targets)
    assert not any(isinstance(m, LoraDropout) for m in model.modules())
