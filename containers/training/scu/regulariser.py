"""ParamBPT: the description length of the adapter's *update* under a Gaussian prior, in bits/token.

For every LoRA module the update is dW = (alpha/r) * B @ A, and

    ParamBPT = sum_modules ||dW||_F^2 / (2 sigma^2 N ln 2),
    ||dW||_F^2 = (alpha/r)^2 * tr((B^T B)(A A^T))          (two r x r Gram matrices, fp32)

with sigma the prior std and N the target tokens trained per epoch. It is zero at initialisation
(B = 0) and unchanged when A is scaled up and B down by the same factor. (Over the raw factors,
PEFT's Kaiming-initialised A alone costs ~100 bits/token on SmolLM2 at N = 40k, and a controller
holding a target S erases the adapter.)

The value is a tensor *in the autograd graph*: the gradient of ``lambda * ParamBPT * ln 2`` (nats
per token, the penalty term of the loss) moves the weights; never take ``.item()`` first.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import torch

LN2 = math.log(2.0)
Bits = TypeVar("Bits", float, torch.Tensor)


@dataclass(frozen=True)
class LoraFactor:
    """One adapted module: ``a`` is r x in, ``b`` is out x r, dW = scale * b @ a."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float


def lora_factors(model: torch.nn.Module) -> list[LoraFactor]:
    """The (A, B, alpha/r) triples of every active LoRA adapter in ``model`` (a PEFT model)."""
    from peft.tuners.lora import LoraLayer

    found: list[LoraFactor] = []
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for name in module.active_adapters:
            if name not in module.lora_A:
                continue
            found.append(
                LoraFactor(
                    a=cast(torch.Tensor, module.lora_A[name].weight),
                    b=cast(torch.Tensor, module.lora_B[name].weight),
                    scale=float(module.scaling[name]),
                )
            )
    if not found:
        raise ValueError("the model has no LoRA layers: ParamBPT needs a PEFT LoRA model")
    return found


def _groups(factors: Sequence[LoraFactor]) -> list[list[LoraFactor]]:
    """Modules of the same (A, B) shapes and device, to be stacked: 2 to 7 groups for common
    transformers, so the sums below cost a few batched matmuls instead of one per module."""
    groups: dict[tuple[object, ...], list[LoraFactor]] = defaultdict(list)
    for f in factors:
        groups[(tuple(f.a.shape), tuple(f.b.shape), f.a.device)].append(f)
    return list(groups.values())


def _stacked(members: Sequence[LoraFactor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A (G, r, in), B (G, out, r), scale^2 (G,)) in fp32, differentiable in A and B."""
    a = torch.stack([f.a for f in members]).float()
    b = torch.stack([f.b for f in members]).float()
    scales = torch.tensor([f.scale**2 for f in members], dtype=torch.float32, device=a.device)
    return a, b, scales


def delta_w_sq_norm(factors: Sequence[LoraFactor]) -> torch.Tensor:
    """sum ||dW||_F^2 over modules, in fp32, differentiable in A and B."""
    total: torch.Tensor | None = None
    for members in _groups(factors):
        a, b, scales = _stacked(members)
        gram_a = a @ a.transpose(1, 2)  # (G, r, r) = A A^T
        gram_b = b.transpose(1, 2) @ b  # (G, r, r) = B^T B
        per_module = (gram_a * gram_b).sum(dim=(1, 2))  # tr(X Y) = sum(X * Y^T), both symmetric
        part = (per_module * scales).sum()
        total = part if total is None else total + part.to(total.device)
    assert total is not None
    return total


def param_bpt(factors: Sequence[LoraFactor], sigma: float, n_tokens: int) -> torch.Tensor:
    if not factors:
        raise ValueError("param_bpt needs at least one LoRA module")
    if sigma <= 0 or n_tokens <= 0:
        raise ValueError("sigma and n_tokens must be positive")
    return delta_w_sq_norm(factors) / (2.0 * sigma * sigma * n_tokens * LN2)


def regularised_loss(data_bpt: Bits, param_bpt: Bits, lam: float) -> Bits:
    """The SCU objective in bits/token, DataBPT + lambda * ParamBPT (the metrics' ``loss_bpt``).

    The trainer descends ln 2 times its gradient in two parts: the data part (clipped), then the
    penalty part from :func:`add_penalty_grad`, which clipping never scales.
    """
    return data_bpt + lam * param_bpt


def add_penalty_grad(
    factors: Sequence[LoraFactor], params: Sequence[torch.Tensor], sigma: float, n_tokens: int, lam: float
) -> None:
    """Add the penalty's gradient, d(lambda * ParamBPT * ln 2)/dw, to the LoRA factors' ``.grad``
    (the trainer calls it after clipping the data gradient; ``params`` are the trainable parameters,
    of which only the factors get a penalty gradient).

    In closed form rather than through autograd (no graph, one stack per group):
    d tr(B^T B A A^T)/dA = 2 (B^T B) A and d/dB = 2 B (A A^T), so with c = lambda /
    (2 sigma^2 N), the same for both, grad A = 2 c s^2 (B^T B) A and grad B = 2 c s^2 B (A A^T).
    Autograd through :func:`param_bpt` is the reference the tests hold it to."""
    if sigma <= 0 or n_tokens <= 0:
        raise ValueError("sigma and n_tokens must be positive")
    trainable = {id(p) for p in params}
    c = 2.0 * lam / (2.0 * sigma * sigma * n_tokens)  # ln 2 of the nats cancels the bits' 1/ln 2
    with torch.no_grad():
        for members in _groups(factors):
            a, b, scales = _stacked(members)
            k = (c * scales).view(-1, 1, 1)
            grad_a = k * ((b.transpose(1, 2) @ b) @ a)  # (G, r, in)
            grad_b = k * (b @ (a @ a.transpose(1, 2)))  # (G, out, r)
            for i, f in enumerate(members):
                for w, g in ((f.a, grad_a[i]), (f.b, grad_b[i])):
                    if id(w) in trainable:
                        w.grad = g.to(w.dtype) if w.grad is None else w.grad.add_(g.to(w.dtype))


def proximal_shrink(
    factors: Sequence[LoraFactor],
    step_sizes: Sequence[tuple[float, float]],
    sigma: float,
    n_tokens: int,
    lam: float,
) -> None:
    """Apply the penalty as a decoupled *implicit* step after the optimizer's (``penalty=proximal``).

    For each module, with k = lambda * s^2 / (sigma^2 N) (the penalty's curvature per unit of
    the other factor's Gram matrix) and step sizes (eta_A, eta_B) from ``step_sizes`` (one pair
    per factor, in order):

        B <- B (I + eta_B k A A^T)^-1,      A <- (I + eta_A k B^T B)^-1 A

    i.e. the proximal step argmin_X ||X - B||^2 / (2 eta_B) + lambda * penalty(X) for B with A
    fixed (likewise for A; both from the pre-step factors), a contraction for every lambda: unlike
    the explicit decoupled step, it cannot overshoot past zero however large lambda * eta is. Unlike
    the penalty in the loss, its effect keeps growing with lambda: in the loss, Adam normalises the
    summed gradient, and once the penalty dominates every weight shrinks by ~lr a step whatever
    lambda is, so a controller on lambda sees a saturated actuator and winds up."""
    if sigma <= 0 or n_tokens <= 0:
        raise ValueError("sigma and n_tokens must be positive")
    if len(step_sizes) != len(factors):
        raise ValueError("step_sizes needs one (eta_A, eta_B) pair per factor")
    index = {id(f): i for i, f in enumerate(factors)}
    c = lam / (sigma * sigma * n_tokens)
    with torch.no_grad():
        for members in _groups(factors):
            a, b, scales = _stacked(members)
            etas = torch.tensor(
                [step_sizes[index[id(f)]] for f in members], dtype=torch.float32, device=a.device
            )  # (G, 2)
            k = c * scales
            eye = torch.eye(a.shape[1], dtype=torch.float32, device=a.device)
            m_b = eye + (etas[:, 1] * k).view(-1, 1, 1) * (a @ a.transpose(1, 2))  # (G, r, r)
            m_a = eye + (etas[:, 0] * k).view(-1, 1, 1) * (b.transpose(1, 2) @ b)
            new_b = torch.linalg.solve(m_b, b.transpose(1, 2)).transpose(1, 2)  # m_b symmetric
            new_a = torch.linalg.solve(m_a, a)
            for i, f in enumerate(members):
                f.a.copy_(new_a[i].to(f.a.dtype))
                f.b.copy_(new_b[i].to(f.b.dtype))
