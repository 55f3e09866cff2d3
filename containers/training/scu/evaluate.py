"""Held-out evaluation: token-weighted bits per token and perplexity, base model vs adapter."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from scu.data import IGNORE, Example, collate
from scu.distributed import DistInfo, all_reduce_sum

LN2 = math.log(2.0)


def causal_ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy (nats) over non-masked targets, and their count.

    The labels are shifted (position t is scored on token t+1; the last position on nothing), not
    the logits: slicing the logits copies the whole batch x sequence x vocabulary tensor, forward
    and backward (SmolLM2's 1 x 320 x 49152 logits, one CPU thread: 320 -> 249 ms forward+backward)."""
    shift_labels = shifted_labels(labels)
    ce = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return ce, int((shift_labels != IGNORE).sum().item())


def shifted_labels(labels: torch.Tensor) -> torch.Tensor:
    """The target of every position: token t+1's label at position t, IGNORE at the last."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE)


def keeps_target_logits(model: Any) -> bool:
    """Whether ``model`` (a PEFT or plain HF causal LM) computes logits at only the positions of a
    boolean ``logits_to_keep`` mask, returning them flattened (transformers >= 5 slices that way;
    older versions and custom models take only an int or positions, or no such argument). Probed
    once with a 3-token forward, since the signature alone does not say which slicing a model has."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if "logits_to_keep" not in inspect.signature(base.forward).parameters:
        return False
    device = next(model.parameters()).device
    ids = torch.zeros((1, 3), dtype=torch.long, device=device)
    keep = torch.tensor([[False, True, False]], device=device)
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=keep).logits
    except (TypeError, IndexError, RuntimeError, ValueError):
        return False
    return bool(logits.dim() == 2 and logits.size(0) == 1)


def forward_ce_sum(
    model: Any, batch: dict[str, torch.Tensor], device: torch.device, target_logits: bool
) -> tuple[torch.Tensor, int]:
    """Forward ``batch`` and return (summed next-token CE in nats, target count), as
    :func:`causal_ce_sum` of the full logits. With ``target_logits`` (see
    :func:`keeps_target_logits`) the LM head and the softmax run only at positions that have a
    target: chat rows train on the replies only, and on SmolLM2 (49k vocabulary) the head and
    the cross-entropy are a large part of a step."""
    input_ids = batch["input_ids"].to(device)
    attention_mask = batch["attention_mask"].to(device)
    labels = batch["labels"].to(device)
    targets = shifted_labels(labels)
    keep = targets != IGNORE
    n = int(keep.sum())
    if not target_logits or n == 0:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return causal_ce_sum(logits, labels)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep).logits
    ce = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
    return ce, n


@torch.no_grad()
def ce_over(
    model: torch.nn.Module,
    examples: Sequence[Example],
    batch_size: int,
    pad_id: int,
    device: torch.device,
    info: DistInfo,
) -> tuple[float, int]:
    """(sum CE nats, target tokens) over ``examples``, sharded across ranks and all-reduced."""
    mine = list(examples)[info.rank :: info.world_size]
    total, count = 0.0, 0
    target_logits = keeps_target_logits(model)
    for i in range(0, len(mine), batch_size):
        batch = collate(mine[i : i + batch_size], pad_id)
        ce, n = forward_ce_sum(model, batch, device, target_logits)
        total += float(ce.item())
        count += n
    total, count_f = all_reduce_sum([total, float(count)], info, device)
    return total, int(count_f)


def summarise(ce_sum: float, tokens: int) -> dict[str, float]:
    if tokens == 0:
        return {"bpt": float("nan"), "perplexity": float("nan"), "loss_nats": float("nan")}
    mean = ce_sum / tokens
    return {"bpt": mean / LN2, "perplexity": math.exp(min(mean, 700.0)), "loss_nats": mean}


def evaluate_adapter(
    peft_model: Any,
    examples: Sequence[Example],
    batch_size: int,
    pad_id: int,
    device: torch.device,
    info: DistInfo,
) -> dict[str, Any]:
    """Evaluate the adapter, then the base model (adapter disabled) on the same tokens."""
    was_training = peft_model.training
    peft_model.eval()
    adapter_sum, tokens = ce_over(peft_model, examples, batch_size, pad_id, device, info)
    with peft_model.disable_adapter():
        base_sum, _ = ce_over(peft_model, examples, batch_size, pad_id, device, info)
    if was_training:
        peft_model.train()
    base, adapter = summarise(base_sum, tokens), summarise(adapter_sum, tokens)
    return {
        "rows": len(examples),
        "tokens": tokens,
        "base": base,
        "adapter": adapter,
        "delta_bpt": adapter["bpt"] - base["bpt"],
    }
