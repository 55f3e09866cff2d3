"""LoRA dropout that is cheap on CPU.

PEFT puts an ``nn.Dropout`` on the input of every adapted projection (seven per Llama block).
On CPU ``torch.dropout`` draws one 32-bit Mersenne-Twister number per element and builds a float
mask: a fifth of a training step on a small model (the `scu_overhead` toy Llama, one thread).
:class:`LoraDropout` draws one 64-bit number per four elements instead, takes a 15-bit uniform
lane for each and keeps the element when its lane is at or above ``round(p * 32768)``, so the drop
probability is ``p`` rounded to a multiple of 1/32768 (0.05 -> 0.049988); the kept elements are
scaled by ``1 / (1 - p)`` as ``nn.Dropout`` does. Forward and backward cost about half of
``torch.dropout``'s. Elsewhere (CUDA, whose dropout is one fused kernel; eval mode) it is
``nn.Dropout``. The masks come from the CPU default generator, which the trainer re-seeds every
step, so a resumed run draws the same masks."""

from __future__ import annotations

import torch

LANE_BITS = 15
LANES = 1 << LANE_BITS


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """A boolean mask of ``shape``: each element kept with probability 1 - p (p to 1/32768),
    independently, from the CPU default generator."""
    n = shape.numel()
    draws = torch.empty((n + 3) // 4, dtype=torch.int64).random_()  # 63 random bits each
    lanes = draws.view(torch.int16)[:n].view(shape)  # four 16-bit lanes; the top one has 15 bits
    return torch.bitwise_and(lanes, LANES - 1) >= round(p * LANES)


class LoraDropout(torch.nn.Dropout):
    """``nn.Dropout`` with the cheaper CPU mask of :func:`keep_mask` in training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        if self.p >= 1.0:
            return x * 0.0
        mask = keep_mask(x.shape, self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * mask


def use_lora_dropout(model: torch.nn.Module) -> int:
    """Swap PEFT's LoRA ``nn.Dropout`` modules in ``model`` for :class:`LoraDropout` (same p);
    returns how many were swapped. Other dropouts (the base model's) are left alone."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, drop in list(dropouts.items()):
            if type(drop) is torch.nn.Dropout:
                dropouts[name] = LoraDropout(drop.p)
                swapped += 1
    return swapped
