"""The trainer's AdamW (fused where torch has it, with the per-tensor loop's numbers) and per-step seeding."""

from __future__ import annotations

import torch
from scu.trainer import make_optimizer, seed_step


def _params() -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(8, 16, generator=gen)) for _ in range(3)]


def test_fused_on_cpu_fp32_and_the_same_steps_as_the_loop() -> None:
    fused_params, loop_params = _params(), _params()
    fused = make_optimizer(fused_params, 1e-2, 0.1)
    loop = torch.optim.AdamW(loop_params, lr=1e-2, weight_decay=0.1, foreach=False)
    assert fused.defaults["fused"] is True
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        grads = [torch.randn(8, 16, generator=gen) for _ in range(3)]
        for ps, opt in ((fused_params, fused), (loop_params, loop)):
            for p, g in zip(ps, grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(fused_params, loop_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_not_fused_where_torch_has_no_fused_kernel() -> None:
    params = [torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))]
    assert make_optimizer(params, 1e-3, 0.0).defaults["fused"] is None


def test_seed_step_draws_what_torch_manual_seed_draws_on_cpu() -> None:
    """The per-step seeding (dropout masks a resumed run repeats) seeds only this device's
    generator, and on CPU gives the very numbers torch.manual_seed gives."""
    torch.manual_seed(12345)
    want = torch.nn.functional.dropout(torch.ones(64), 0.5, training=True)
    torch.manual_seed(0)
    seed_step(torch.device("cpu"), 12345)
    assert torch.equal(torch.nn.functional.dropout(torch.ones(64), 0.5, training=True), want)
