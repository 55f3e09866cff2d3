"""Task evaluation: greedy generation on held-out rows by the base model (adapter disabled) and by
the adapter, scored with :mod:`scu.task_metrics`; the result is ``eval.json["task"]``.

Rows come from the ``test`` channel, else the ``validation`` channel, else the rows held out of
``train`` (the same split as the loss evaluation); at most ``task_eval_rows`` of them, in file
order. The prompt of a row is everything before its last message (the assistant turn it must
produce), rendered as training renders it (:func:`scu.data.encode_prompt`: the tokenizer's chat
template with ``add_generation_prompt=True`` and the row's tools, else the fallback format). Text
records and rows whose last message is not an assistant text (e.g. a tool call) are skipped.

Generation is greedy, batched with left padding under ``torch.inference_mode`` with the KV cache,
and stops at EOS or the chat template's end-of-turn token; ``max_new_tokens`` = the longest target
(in tokens, with EOS) + :data:`NEW_TOKENS_SLACK`, at most :data:`NEW_TOKENS_CAP`. Prompts are cut
from the left to fit the model's context. Under DDP only rank 0 generates (the others wait at the
job's final barrier).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from scu import data as data_mod
from scu.task_metrics import LabelMatcher, classification_scores, exact_match

log = logging.getLogger("scu.task_eval")

TaskKind = Literal["generation", "classification"]
SAMPLES = 8
SAMPLE_CHARS = 500
NEW_TOKENS_SLACK = 4
NEW_TOKENS_CAP = 256
TOKEN_BUDGET = {"cuda": 65536, "cpu": 8192}  # prompt + new tokens per generation batch
MAX_BATCH = {"cuda": 64, "cpu": 32}
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


class GenerationStopped(RuntimeError):
    """The job was asked to stop (SIGTERM) while generating: no task metrics."""


def _never() -> bool:
    return False


@dataclass(frozen=True)
class TaskRow:
    conversation: data_mod.Conversation  # the whole record; its last message is the target
    target: str
    label: str | None


def _row(obj: Any) -> TaskRow | None:
    """The evaluable part of one stored record, or ``None`` (a text record, or no assistant text
    after a prompt to generate)."""
    if not isinstance(obj, dict):
        return None
    messages = obj.get("messages")
    if not isinstance(messages, list) or len(messages) < 2 or not all(isinstance(m, dict) for m in messages):
        return None
    last = messages[-1]
    content = last.get("content")
    if last.get("role") != "assistant" or last.get("tool_calls") or not isinstance(content, str):
        return None
    if not content.strip():
        return None
    tools = obj.get("tools")
    label = obj.get("label")
    return TaskRow(
        conversation=data_mod.Conversation(messages, tools if isinstance(tools, list) and tools else None),
        target=content,
        label=label.strip() if isinstance(label, str) and label.strip() else None,
    )


def read_records(directory: Path) -> list[Any]:
    """Every JSON record of every ``*.jsonl`` under ``directory`` (the order of :mod:`scu.data`)."""
    files = sorted(p for p in directory.rglob("*.jsonl") if p.is_file()) if directory.is_dir() else []
    out: list[Any] = []
    for path in files:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        out.append(None)  # the training reader already reported it
    return out


def select_rows(
    channels: dict[str, list[Any]], validation_fraction: float, seed: int
) -> tuple[str, list[TaskRow]]:
    """(split name, evaluable rows): test, else validation, else the holdout of train."""
    for name in ("test", "validation"):
        rows = [r for r in map(_row, channels.get(name, [])) if r is not None]
        if rows:
            return name, rows
    _, held = data_mod.split_holdout(list(channels.get("train", [])), validation_fraction, seed)
    return "holdout", [r for r in map(_row, held) if r is not None]


def task_kind(requested: str, rows: Sequence[TaskRow]) -> TaskKind:
    """``requested`` unless ``auto``: classification when every row carries a label."""
    if requested in ("generation", "classification"):
        return requested  # type: ignore[return-value]
    return "classification" if rows and all(r.label is not None for r in rows) else "generation"


# -- prompts and generation ------------------------------------------------------------------------


def prompt_ids(tokenizer: Any, rows: Sequence[TaskRow]) -> tuple[list[TaskRow], list[list[int]]]:
    """The rows whose prompt renders (as training renders it) and their prompt token ids."""
    kept: list[TaskRow] = []
    prompts: list[list[int]] = []
    for r in rows:
        try:
            ids = data_mod.encode_prompt(tokenizer, r.conversation)
        except Exception as exc:  # a test-channel row training never read; skip it, say so
            log.warning("task metrics: a row's prompt does not render (%s); skipped", exc)
            continue
        kept.append(r)
        prompts.append(ids)
    return kept, prompts


def max_new_tokens(tokenizer: Any, targets: Sequence[str]) -> int:
    if not targets:
        return 1
    lengths = [len(ids) for ids in tokenizer(list(targets), add_special_tokens=False)["input_ids"]]
    return min(NEW_TOKENS_CAP, max(lengths) + 1 + NEW_TOKENS_SLACK)


def stop_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """EOS (tokenizer and generation config) and any end-of-turn token the vocabulary has."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list | tuple):
        ids.update(int(x) for x in configured if isinstance(x, int))
    vocab = tokenizer.get_vocab()
    ids.update(int(vocab[tok]) for tok in END_OF_TURN_TOKENS if tok in vocab)
    return sorted(ids)


def _batches(lengths: Sequence[int], new_tokens: int, device: torch.device) -> list[list[int]]:
    """Row indices grouped longest first, each group within the token budget of ``device``."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    i = 0
    while i < len(order):
        width = lengths[order[i]] + new_tokens
        size = max(1, min(MAX_BATCH[kind], TOKEN_BUDGET[kind] // width))
        groups.append(order[i : i + size])
        i += size
    return groups


@torch.inference_mode()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    new_tokens: int,
    stops: Sequence[int],
    pad_id: int,
    device: torch.device,
    stop: Callable[[], bool] = _never,
) -> list[str]:
    """Greedy continuations of ``prompts`` (left-padded batches), decoded without special tokens.
    ``stop`` is polled between batches (:class:`GenerationStopped` when it says so)."""
    out: list[str] = [""] * len(prompts)
    for group in _batches([len(p) for p in prompts], new_tokens, device):
        if stop():
            raise GenerationStopped("stopped while generating the task metrics")
        width = max(len(prompts[i]) for i in group)
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, i in enumerate(group):
            n = len(prompts[i])
            ids[row, width - n :] = torch.tensor(prompts[i], dtype=torch.long)
            mask[row, width - n :] = 1
        generated = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=list(stops),
            pad_token_id=pad_id,
            use_cache=True,
        )
        stop_set = set(stops)
        for row, i in enumerate(group):
            tokens = generated[row, width:].tolist()
            cut = next((k for k, t in enumerate(tokens) if t in stop_set), len(tokens))
            out[i] = tokenizer.decode(tokens[:cut], skip_special_tokens=True)
    return out


def _clip(text: str) -> str:
    return text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 1] + "…"


def _shown_prompt(row: TaskRow) -> str:
    for m in reversed(row.conversation[:-1]):
        if isinstance(m.get("content"), str) and m.get("role") != "assistant":
            return str(m["content"])
    return ""


def evaluate_task(
    peft_model: Any,
    tokenizer: Any,
    rows: Sequence[TaskRow],
    kind: TaskKind,
    labels: Sequence[str],
    max_positions: int,
    device: torch.device,
    stop: Callable[[], bool] = _never,
) -> dict[str, Any]:
    """Generate for ``rows`` with the adapter disabled and enabled; the ``eval.json["task"]`` dict."""
    started = time.monotonic()
    rows, prompts = prompt_ids(tokenizer, rows)
    new_tokens = max_new_tokens(tokenizer, [r.target for r in rows])
    keep = max(1, max_positions - new_tokens)
    prompts = [p[-keep:] for p in prompts]
    stops = stop_token_ids(tokenizer, peft_model)
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0])
    was_training = peft_model.training
    peft_model.eval()
    try:
        with peft_model.disable_adapter():
            base = generate(peft_model, tokenizer, prompts, new_tokens, stops, pad_id, device, stop)
        adapter = generate(peft_model, tokenizer, prompts, new_tokens, stops, pad_id, device, stop)
    finally:
        if was_training:
            peft_model.train()
    targets = [r.target for r in rows]
    report: dict[str, Any] = {"kind": kind, "rows": len(rows), "max_new_tokens": new_tokens}
    if kind == "classification":
        matcher = LabelMatcher(labels, [(r.target, r.label) for r in rows if r.label is not None])
        gold = [r.label if r.label is not None else r.target.strip() for r in rows]
        report["base"] = classification_scores([matcher.match(t) for t in base], gold)
        report["adapter"] = classification_scores([matcher.match(t) for t in adapter], gold)
        report["labels"] = list(matcher.labels)
    else:
        report["base"] = {"exact_match": exact_match(base, targets)}
        report["adapter"] = {"exact_match": exact_match(adapter, targets)}
    report["samples"] = [
        {
            "prompt": _clip(_shown_prompt(r)),
            "target": _clip(r.target),
            "base": _clip(b),
            "adapter": _clip(a),
        }
        for r, b, a in list(zip(rows, base, adapter, strict=True))[:SAMPLES]
    ]
    report["seconds"] = round(time.monotonic() - started, 3)
    return report


def run_task_eval(
    peft_model: Any,
    tokenizer: Any,
    channel_dirs: dict[str, Path],
    *,
    requested: str,
    limit: int,
    validation_fraction: float,
    seed: int,
    max_positions: int,
    device: torch.device,
    stop: Callable[[], bool] = _never,
) -> dict[str, Any] | None:
    """Read the channels, pick up to ``limit`` rows and evaluate them; ``None`` when there is
    nothing to evaluate (``limit`` 0, or no row with an assistant text after a prompt)."""
    if limit <= 0:
        return None
    channels = {name: read_records(path) for name, path in channel_dirs.items()}
    split, rows = select_rows(channels, validation_fraction, seed)
    if not rows:
        log.warning("task metrics skipped: no held-out row has a prompt and an assistant text target")
        return None
    rows = rows[:limit]
    kind = task_kind(requested, rows)
    labels: set[str] = set()
    if kind == "classification":
        for records in channels.values():
            labels.update(r.label for r in map(_row, records) if r is not None and r.label is not None)
        labels.update(r.label if r.label is not None else r.target.strip() for r in rows)
    report = evaluate_task(peft_model, tokenizer, rows, kind, sorted(labels), max_positions, device, stop)
    report["split"] = split
    return report
