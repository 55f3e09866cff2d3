"""The LM head and the cross-entropy at target positions only: the same loss and gradients as
the full logits, and a model that cannot slice that way falls back to them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from scu.data import IGNORE
from scu.evaluate import forward_ce_sum, keeps_target_logits
from scu.modeling import apply_lora, load_base_model


def _chat_batch(vocab: int) -> dict[str, torch.Tensor]:
    """Two rows of different lengths: a masked prompt, then a reply; the second is padded."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (2, 12), generator=g)
    labels = ids.clone()
    labels[0, :5] = IGNORE  # prompt of row 0
    labels[1, :7] = IGNORE  # longer prompt of row 1
    labels[1, 10:] = IGNORE  # padding
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _lora(tiny_model: Path) -> Any:
    torch.manual_seed(0)
    model = load_base_model(str(tiny_model), "fp32", "lora", torch.device("cpu"), False)
    model, _ = apply_lora(model, r=4, alpha=8.0, dropout=0.0, target_modules=None)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model


def test_target_logits_give_the_full_logits_loss_and_gradients(tiny_model: Path) -> None:
    model = _lora(tiny_model)
    assert keeps_target_logits(model)
    batch = _chat_batch(model.config.vocab_size)
    params = [p for p in model.parameters() if p.requires_grad]
    results = []
    for target_logits in (False, True):
        model.zero_grad()
        ce, n = forward_ce_sum(model, batch, torch.device("cpu"), target_logits)
        ce.backward()
        results.append((float(ce), n, [p.grad.clone() for p in params]))
    (ce_full, n_full, g_full), (ce_kept, n_kept, g_kept) = results
    assert n_full == n_kept == 7 + 3  # row 0: positions 4..10 score tokens 5..11; row 1: 6..8 score 7..9
    assert abs(ce_full - ce_kept) < 1e-4 * abs(ce_full)
    for a, b in zip(g_full, g_kept, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_a_batch_without_targets_and_a_model_without_the_argument_use_full_logits(tiny_model: Path) -> None:
    model = _lora(tiny_model)
    batch = _chat_batch(model.config.vocab_size)
    batch["labels"][:] = IGNORE
    ce, n = forward_ce_sum(model, batch, torch.device("cpu"), True)
    assert (float(ce), n) == (0.0, 0)

    class Plain(torch.nn.Module):  # a causal LM whose forward has no logits_to_keep
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    assert not keeps_target_logits(Plain(model))
