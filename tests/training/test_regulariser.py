"""ParamBPT is a tensor in the graph: lambda changes the gradients of the LoRA weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from scu.data import build_examples, collate, encode_rows
from scu.evaluate import causal_ce_sum
from scu.modeling import apply_lora, detect_target_modules, load_base_model, load_tokenizer
from scu.regulariser import LN2, param_bpt, regularised_loss

from tests.training.support import make_rows


def test_param_bpt_formula() -> None:
    w = [torch.full((2, 3), 0.02), torch.full((4,), -0.01)]
    expected = (6 * 0.02**2 + 4 * 0.01**2) / (2 * 0.01**2 * 1000 * math.log(2))
    assert param_bpt(w, sigma=0.01, n_tokens=1000).item() == pytest.approx(expected)
    with pytest.raises(ValueError):
        param_bpt([], 0.01, 10)


def test_target_modules_are_attention_and_mlp(tiny_model: Path) -> None:
    model = load_base_model(str(tiny_model), "fp32", "lora", torch.device("cpu"), False)
    assert detect_target_modules(model) == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]


def _grads(tiny_model: Path, lam: float) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    tok = load_tokenizer(str(tiny_model))
    model = load_base_model(str(tiny_model), "fp32", "lora", torch.device("cpu"), False)
    model, _ = apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules=None)
    # make B non-zero so both LoRA matrices carry weight
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    examples, _ = build_examples(encode_rows(tok, [r["messages"] for r in make_rows(4)]), 64, False)
    batch = collate(examples, tok.pad_token_id)
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    ce_sum, n = causal_ce_sum(out.logits, batch["labels"])
    loss = regularised_loss(ce_sum / n, param_bpt(params, 0.01, 1000), lam)
    loss.backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def test_lambda_changes_lora_gradients(tiny_model: Path) -> None:
    g0, g5 = _grads(tiny_model, 0.0), _grads(tiny_model, 5.0)
    assert g0.keys() == g5.keys() and g0
    # d(lambda * ParamBPT * ln2)/dw = lambda * w / (sigma^2 N): exactly what the difference must be.
    diffs = [float((g5[k] - g0[k]).abs().max()) for k in g0]
    assert min(diffs) > 0, "ParamBPT is detached: lambda does not reach some LoRA weights"


@pytest.mark.slow
def test_gradient_difference_matches_analytic(tiny_model: Path) -> None:
    g0, g5 = _grads(tiny_model, 0.0), _grads(tiny_model, 5.0)
    torch.manual_seed(0)
    model = load_base_model(str(tiny_model), "fp32", "lora", torch.device("cpu"), False)
    model, _ = apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules=None)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    weights = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    for k, w in weights.items():
        expected = 5.0 * LN2 * w / (0.01**2 * 1000 * LN2)
        torch.testing.assert_close(g5[k] - g0[k], expected, rtol=1e-4, atol=1e-6)
