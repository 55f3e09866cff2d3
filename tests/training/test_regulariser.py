"""ParamBPT over the LoRA update dW = (alpha/r) B A, in the graph, and acting through the trainer."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from scu.evaluate import causal_ce_sum
from scu.modeling import apply_lora, detect_target_modules, load_base_model
from scu.regulariser import (
    LN2,
    LoraFactor,
    add_penalty_grad,
    delta_w_sq_norm,
    lora_factors,
    param_bpt,
    proximal_shrink,
    regularised_loss,
)

from tests.training.support import TINY_PROJECTIONS, run_entry


def penalty_grads(
    factors: list[LoraFactor], params: list[torch.Tensor], sigma: float, n_tokens: int, lam: float
) -> list[torch.Tensor | None]:
    """The reference: d(ln 2 * lambda * ParamBPT)/dw for each of ``params`` by autograd (None where
    it does not enter); the trainer's closed form (``add_penalty_grad``) is held to it."""
    bits = param_bpt(factors, sigma, n_tokens)
    penalty = LN2 * regularised_loss(torch.zeros_like(bits), bits, lam)
    return list(torch.autograd.grad(penalty, list(params), allow_unused=True))


def _lora(tiny_model: Path, r: int = 4, alpha: float = 8.0, b_std: float = 0.02) -> torch.nn.Module:
    torch.manual_seed(0)
    model = load_base_model(str(tiny_model), "fp32", "lora", torch.device("cpu"), False)
    model, _ = apply_lora(model, r=r, alpha=alpha, dropout=0.0, target_modules=None)
    if b_std:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, b_std)
    return model


def test_param_bpt_is_the_frobenius_norm_of_the_update() -> None:
    torch.manual_seed(1)
    factors = [
        LoraFactor(a=torch.randn(4, 6), b=torch.randn(5, 4), scale=2.0),
        LoraFactor(a=torch.randn(4, 6), b=torch.randn(5, 4), scale=2.0),  # same shapes: one group
        LoraFactor(a=torch.randn(2, 3), b=torch.randn(7, 2), scale=0.5),
    ]
    explicit = sum(float(((f.scale * f.b @ f.a) ** 2).sum()) for f in factors)
    assert float(delta_w_sq_norm(factors)) == pytest.approx(explicit, rel=1e-5)
    expected = explicit / (2 * 0.01**2 * 1000 * math.log(2))
    assert float(param_bpt(factors, sigma=0.01, n_tokens=1000)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError):
        param_bpt([], 0.01, 10)
    with pytest.raises(ValueError):
        param_bpt(factors, 0.0, 10)


def test_zero_at_init_and_invariant_to_rescaling_a_against_b(tiny_model: Path) -> None:
    model = _lora(tiny_model, b_std=0.0)
    factors = lora_factors(model)
    assert len(factors) == 7 * model.config.num_hidden_layers  # attention + MLP projections
    assert float(param_bpt(factors, 0.01, 1000).detach()) == 0.0  # B = 0: no update, no bits
    model = _lora(tiny_model)
    factors = lora_factors(model)
    before = float(param_bpt(factors, 0.01, 1000).detach())
    assert before > 0
    with torch.no_grad():
        for f in factors:
            f.a.mul_(8.0)
            f.b.div_(8.0)
    assert float(param_bpt(factors, 0.01, 1000).detach()) == pytest.approx(before, rel=1e-4)


def test_kaiming_a_alone_costs_nothing_unlike_raw_weights(tiny_model: Path) -> None:
    """The mis-scaling that pinned lambda: sum(w^2) over the raw factors is large at init."""
    model = _lora(tiny_model, b_std=0.0)
    raw = sum(float(p.pow(2).sum()) for p in model.parameters() if p.requires_grad)
    assert raw > 1.0
    assert float(delta_w_sq_norm(lora_factors(model))) == 0.0


def test_target_modules_are_attention_and_mlp(tiny_model: Path) -> None:
    model = load_base_model(str(tiny_model), "fp32", "lora", torch.device("cpu"), False)
    assert detect_target_modules(model) == TINY_PROJECTIONS


def test_penalty_gradient_matches_analytic(tiny_model: Path) -> None:
    """d(lambda ParamBPT ln2)/dB = lambda s^2 B (A A^T) / (sigma^2 N), and the same for A."""

    model = _lora(tiny_model)
    params = [p for p in model.parameters() if p.requires_grad]
    factors = lora_factors(model)

    grads = penalty_grads(factors, params, 0.01, 1000, 5.0)
    by_id = {id(p): g for p, g in zip(params, grads, strict=True)}
    k = 5.0 / (0.01**2 * 1000)
    for f in factors:
        s2 = f.scale**2
        torch.testing.assert_close(by_id[id(f.b)], k * s2 * f.b @ (f.a @ f.a.T), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(by_id[id(f.a)], k * s2 * (f.b.T @ f.b) @ f.a, rtol=1e-4, atol=1e-7)


def test_the_trainers_two_gradient_parts_sum_to_the_regularised_loss(tiny_model: Path) -> None:
    """Without clipping, the data gradient plus add_penalty_grad is d(ln 2 * regularised_loss)/dw:
    the trainer's split changes only what clipping sees, never the objective."""
    model = _lora(tiny_model)
    params = [p for p in model.parameters() if p.requires_grad]
    factors = lora_factors(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3))

    def data_bpt() -> torch.Tensor:
        ce, n = causal_ce_sum(model(input_ids=ids).logits, ids)
        return ce / n / LN2

    model.zero_grad()
    (LN2 * regularised_loss(data_bpt(), param_bpt(factors, 0.01, 1000), 3.0)).backward()
    whole = [p.grad.clone() for p in params]
    model.zero_grad()
    (LN2 * data_bpt()).backward()
    add_penalty_grad(factors, params, 0.01, 1000, 3.0)
    for p, expected in zip(params, whole, strict=True):
        # closed form vs autograd: the same sums in another order (fp32 rounding near zero)
        torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-7)
    assert regularised_loss(2.0, 0.5, 3.0) == 3.5


def test_proximal_shrink_is_the_implicit_penalty_step(tiny_model: Path) -> None:
    """Each factor lands where its proximal optimality condition holds, (X - W)/eta +
    grad_X penalty(X, other factor before the step) = 0, for a lambda * eta far beyond where an
    explicit step would overshoot; it only shrinks, and eta = 0 leaves a factor as it was."""
    model = _lora(tiny_model)
    factors = lora_factors(model)
    before = [(f.a.detach().clone(), f.b.detach().clone()) for f in factors]
    etas = [(0.0 if i == 0 else 0.3, 0.7) for i in range(len(factors))]
    lam, sigma, n = 50.0, 0.01, 1000
    proximal_shrink(factors, etas, sigma, n, lam)
    k = lam / (sigma**2 * n)
    for i, (f, (a0, b0)) in enumerate(zip(factors, before, strict=True)):
        s2 = f.scale**2
        eta_a, eta_b = etas[i]
        assert eta_b * k * s2 * float(torch.linalg.eigvalsh(a0 @ a0.T).max()) > 2  # explicit: unstable
        grad_b = k * s2 * f.b @ (a0 @ a0.T)
        torch.testing.assert_close((f.b - b0) / eta_b + grad_b, torch.zeros_like(b0), atol=1e-3, rtol=0)
        assert float(f.b.detach().norm()) < float(b0.norm())
        if eta_a == 0.0:
            torch.testing.assert_close(f.a, a0)
        else:
            grad_a = k * s2 * (b0.T @ b0) @ f.a
            torch.testing.assert_close((f.a - a0) / eta_a + grad_a, torch.zeros_like(a0), atol=1e-3, rtol=0)
            assert float(f.a.detach().norm()) < float(a0.norm())
    with pytest.raises(ValueError, match="one"):
        proximal_shrink(factors, etas[:-1], sigma, n, lam)


def _end_state(root: Path) -> tuple[float, dict[str, float]]:
    from safetensors.torch import load_file

    weights = load_file(str(root / "model" / "adapter_model.safetensors"))
    cfg = json.loads((root / "model" / "fastuner_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["lora_r"]
    total = 0.0
    for key, a in weights.items():
        if "lora_A" in key:
            b = weights[key.replace("lora_A", "lora_B")]
            total += float(((scale * b @ a) ** 2).sum())
    last = json.loads((root / "model" / "metrics.jsonl").read_text().splitlines()[-1])
    return total, last


@pytest.mark.slow
@pytest.mark.parametrize("penalty", ["loss", "proximal"])
def test_trainer_penalty_shrinks_the_update_and_grows_with_lambda(
    make_root: Callable[..., Path], penalty: str
) -> None:
    """Through the real engine, same seed and data: the adapter's ||dW||^2 falls as lambda rises,
    with the penalty in the loss and as the proximal step.
    Fails if the trainer detaches the penalty, clips it away or ignores lambda."""
    common = {
        "penalty": penalty,
        "max_steps": 30,
        "batch_size": 8,
        "grad_accum": 1,
        "learning_rate": 5e-3,
        "lr_scheduler": "constant",
        "lora_dropout": 0.0,
        "log_every": 1,
        "checkpoint_every": 1000,
        "keep_best": False,  # the last step's adapter, whatever the validation set says
    }
    norms = {}
    for lam in (0.0, 1.0, 10.0):
        hp = dict(common, scu="off") if lam == 0.0 else dict(common, scu="fixed", lambda_fixed=lam)
        root = make_root(f"{penalty}-lam{lam:g}", **hp)
        proc = run_entry(root)
        assert proc.returncode == 0, proc.stderr[-2000:]
        norms[lam], last = _end_state(root)
        assert last["lambda"] == lam
        # the logged ParamBPT is the saved adapter's: same formula, N from the config
        cfg = json.loads((root / "model" / "fastuner_config.json").read_text())
        expected = norms[lam] / (2 * cfg["prior_sigma"] ** 2 * cfg["train_tokens"] * LN2)
        assert last["param_bpt"] == pytest.approx(expected, rel=1e-3)
    assert norms[0.0] > 0
    assert norms[1.0] < 0.9 * norms[0.0]
    assert norms[10.0] < 0.9 * norms[1.0]


def test_causal_ce_sum_scores_each_position_on_the_next_token() -> None:
    """Shifting the labels (not slicing the logits) gives the reference sum and count, masked
    targets included."""
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 11)
    labels = torch.randint(0, 11, (2, 7))
    labels[0, :3] = -100
    ce, n = causal_ce_sum(logits, labels)
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
    )
    assert n == int((labels[:, 1:] != -100).sum()) == 10
    assert float(ce) == pytest.approx(float(ref), rel=1e-6)
