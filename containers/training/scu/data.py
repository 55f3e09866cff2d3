"""Read normalised JSONL channels, render prompts, tokenize, mask, truncate, pack/pad, and batch.

Record shape: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...],
"label": str|null}``; the last message is the assistant target (extra keys are ignored).

Prompt = chat template over ``messages[:-1]`` with ``add_generation_prompt=True``; target = final
content + EOS. Tokenizers without a chat template use the fallback format::

    <bos>### System:\\n{content}\\n\\n### User:\\n{content}\\n\\n### Assistant:\\n{target}<eos>

Prompt tokens are masked out of the loss (label -100) unless ``train_on_inputs``. Rows longer than
the block are kept: the prompt is cut from the left; if the target alone does not fit, it is cut
from the right after the last prompt token. Both counts are reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("scu.data")

IGNORE = -100
ROLES = {"system", "user", "assistant"}


class DataError(ValueError):
    """A user-facing explanation of a problem with the input data."""


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


def _check_record(obj: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: a record must be a JSON object with a 'messages' list")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list")
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(
                f"{where}: messages[{i}] must be {{'role': system|user|assistant, 'content': string}}"
            )
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant target")
    return out


def read_channel(directory: Path) -> list[list[dict[str, str]]]:
    """All records of every ``*.jsonl`` file under ``directory`` (sorted by path)."""
    files = sorted(p for p in directory.rglob("*.jsonl") if p.is_file()) if directory.is_dir() else []
    rows: list[list[dict[str, str]]] = []
    for path in files:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path.name} line {lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
                rows.append(_check_record(obj, where))
    return rows


def _fallback_prompt(messages: Sequence[dict[str, str]]) -> str:
    parts = [f"### {m['role'].capitalize()}:\n{m['content']}\n\n" for m in messages]
    return "".join(parts) + "### Assistant:\n"


def encode_rows(
    tokenizer: Any, rows: Sequence[Sequence[dict[str, str]]]
) -> list[tuple[list[int], list[int]]]:
    """(prompt_ids, target_ids) per row, untruncated; target ends with EOS when there is one."""
    if getattr(tokenizer, "chat_template", None):
        prompts = [
            tokenizer.apply_chat_template(list(r[:-1]), add_generation_prompt=True, tokenize=False)
            for r in rows
        ]
        bos: list[int] = []
    else:
        prompts = [_fallback_prompt(r[:-1]) for r in rows]
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    targets = [r[-1]["content"] for r in rows]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out: list[tuple[list[int], list[int]]] = []
    step = 512
    for start in range(0, len(rows), step):
        p_ids = tokenizer(prompts[start : start + step], add_special_tokens=False)["input_ids"]
        t_ids = tokenizer(targets[start : start + step], add_special_tokens=False)["input_ids"]
        out.extend((bos + list(p), list(t) + eos) for p, t in zip(p_ids, t_ids, strict=True))
    return out


def build_examples(
    encoded: Sequence[tuple[list[int], list[int]]], block_size: int, train_on_inputs: bool
) -> tuple[list[Example], DataStats]:
    stats = DataStats(rows=len(encoded))
    examples: list[Example] = []
    for prompt, target in encoded:
        stats.lengths.append(len(prompt) + len(target))
        if len(prompt) + len(target) > block_size:
            if len(target) >= block_size:
                stats.target_truncated += 1
                prompt = prompt[-1:] if prompt else []
                target = target[: block_size - len(prompt)]
            else:
                stats.prompt_truncated += 1
                prompt = prompt[len(prompt) - (block_size - len(target)) :]
        ids = prompt + target
        labels = list(ids) if train_on_inputs else [IGNORE] * len(prompt) + list(target)
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


def split_holdout(
    rows: list[list[dict[str, str]]], fraction: float, seed: int
) -> tuple[list[list[dict[str, str]]], list[list[dict[str, str]]]]:
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
