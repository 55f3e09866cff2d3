"""ParamBPT: the description length of the LoRA weights under a Gaussian prior, in bits per token.

ParamBPT = sum(w^2) / (2 sigma^2 N ln 2) over the trainable (LoRA) weights, N = training tokens per
epoch. It is returned as a tensor *in the autograd graph*, so ``loss = CE + lambda*ParamBPT*ln 2``
moves the weights; never take ``.item()`` before adding it to the loss.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

LN2 = math.log(2.0)


def param_bpt(params: Iterable[torch.Tensor], sigma: float, n_tokens: int) -> torch.Tensor:
    plist: Sequence[torch.Tensor] = list(params)
    if not plist:
        raise ValueError("param_bpt needs at least one trainable parameter")
    if sigma <= 0 or n_tokens <= 0:
        raise ValueError("sigma and n_tokens must be positive")
    sq = _sum_of_squares(plist)
    return sq / (2.0 * sigma * sigma * n_tokens * LN2)


def _sum_of_squares(plist: Sequence[torch.Tensor]) -> torch.Tensor:
    if all(p.dtype == torch.float32 for p in plist) and len({p.device for p in plist}) == 1:
        # One fused kernel for all tensors; d||w||^2/dw = 2w (torch gives 0 at w = 0, as it should).
        return torch.stack(torch._foreach_norm(list(plist))).pow(2).sum()
    return torch.stack([p.float().pow(2).sum() for p in plist]).sum()


def regularised_loss(ce_nats: torch.Tensor, pbpt: torch.Tensor, lam: float) -> torch.Tensor:
    """CE (nats/token) + lambda * ParamBPT * ln 2 (nats/token)."""
    if lam == 0.0:
        return ce_nats
    return ce_nats + lam * pbpt * LN2
