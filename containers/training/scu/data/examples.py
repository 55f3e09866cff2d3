"""Examples from encoded rows (masked, truncated to the block, packed), their digest, batches and
the hold-out split.

Rows longer than the block are kept: the prompt is cut from the left; if the target alone does not
fit, it is cut from the right after the last prompt token. Both counts are reported.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch

log = logging.getLogger("scu.data")

IGNORE = -100
R = TypeVar("R")  # a row of any shape (split_holdout)


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class DataStats:
    rows: int = 0
    prompt_truncated: int = 0
    target_truncated: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    lengths: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return {
            "rows": self.rows,
            "prompt_truncated": self.prompt_truncated,
            "target_truncated": self.target_truncated,
            "tokens": self.tokens,
            "loss_tokens": self.loss_tokens,
        }


def build_examples(
    encoded: Sequence[tuple[list[int], list[int]]], block_size: int, train_on_inputs: bool
) -> tuple[list[Example], DataStats]:
    stats = DataStats(rows=len(encoded))
    examples: list[Example] = []
    for item in encoded:
        prompt, target = item
        mask = getattr(item, "mask", None)  # Encoded: masked tokens between trained turns
        stats.lengths.append(len(prompt) + len(target))
        if len(prompt) + len(target) > block_size:
            if len(target) >= block_size:
                stats.target_truncated += 1
                prompt = prompt[-1:] if prompt else []
                target = target[: block_size - len(prompt)]
            else:
                stats.prompt_truncated += 1
                prompt = prompt[len(prompt) - (block_size - len(target)) :]
        ids = list(prompt) + list(target)
        if train_on_inputs:
            labels = list(ids)
        elif mask is None:
            labels = [IGNORE] * len(prompt) + list(target)
        else:
            labels = [IGNORE] * len(prompt) + [t if m else IGNORE for t, m in zip(target, mask, strict=False)]
        examples.append(Example(ids, labels))
        stats.tokens += len(ids)
        stats.loss_tokens += sum(1 for x in labels[1:] if x != IGNORE)
    if stats.prompt_truncated or stats.target_truncated:
        log.warning(
            "truncated %d prompt(s) from the left and %d target(s) from the right to block_size=%d",
            stats.prompt_truncated,
            stats.target_truncated,
            block_size,
        )
    return examples, stats


def pack(examples: Sequence[Example], block_size: int) -> list[Example]:
    """Concatenate examples into blocks of ``block_size`` tokens (the last block may be shorter)."""
    ids: list[int] = []
    labels: list[int] = []
    for ex in examples:
        ids.extend(ex.input_ids)
        labels.extend(ex.labels)
    return [
        Example(ids[i : i + block_size], labels[i : i + block_size]) for i in range(0, len(ids), block_size)
    ]


def examples_sha256(examples: Sequence[Example]) -> str:
    """A digest of the tokenized training examples (ids and loss mask), in order."""
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(array("q", ex.input_ids).tobytes())
        digest.update(array("q", ex.labels).tobytes())
        digest.update(b"\x00")
    return digest.hexdigest()


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of the batch."""
    width = max(len(ex) for ex in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ex in enumerate(batch):
        n = len(ex)
        ids[i, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
        labels[i, :n] = torch.tensor(ex.labels, dtype=torch.long)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def rank_batches(
    n_examples: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """This rank's micro-batches (lists of example indices) for one epoch.

    The order depends only on (seed, epoch), so a restart can skip to any batch index. Every rank
    gets the same number of batches (the shuffled list wraps around to fill the last shard).
    """
    order = list(range(n_examples))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    per_rank = math.ceil(n_examples / world_size)
    padded = (order * (1 + (per_rank * world_size) // max(n_examples, 1)))[: per_rank * world_size]
    mine = padded[rank::world_size]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


def split_holdout(rows: list[R], fraction: float, seed: int) -> tuple[list[R], list[R]]:
    """Deterministically hold out ``fraction`` of rows (at least one when there are 2+ rows)."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    n_val = max(1, round(len(rows) * fraction))
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [r for i, r in enumerate(rows) if i not in val_idx]
    val = [r for i, r in enumerate(rows) if i in val_idx]
    return train, val
