"""Read normalised JSONL channels, render conversations, tokenize, mask, truncate, pack/pad, batch.

Records (the control plane's record schema 2; schema 1 is the plain subset and reads the same)::

    {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str|null, ...}, ...],
     "tools": [...]?, "label": str|null}
    {"text": str, "label": str|null}

A message may also carry ``name``, ``weight`` (assistant only: 0 = context, not trained; absent
= 1), ``tool_calls`` (assistant, OpenAI's shape; ``content`` may then be null) and
``tool_call_id`` (tool). The last message is from the assistant; extra keys are ignored.

**Which tokens are trained.** Every assistant message with weight 1 is a target; everything else
(system, user and tool messages, assistant messages with weight 0, the template's scaffolding
such as ``<|im_start|>assistant\\n`` before each reply) is masked (label -100) unless
``train_on_inputs``. With a chat template the conversation is rendered by the template and each
target is located by rendering prefixes: the prompt for assistant message *i* is
``template(messages[:i], add_generation_prompt=True)``, its target is what
``template(messages[:i+1])`` adds after that, up to and including the last EOS token in it
(whatever the template puts after the EOS, e.g. a newline, is masked scaffolding; without an
EOS the whole addition is trained and the final target gets an EOS appended). A one-turn row
gives exactly prompt + reply + EOS. Tokenizers without a chat template use::

    <bos>### System:\\n{content}\\n\\n### User:\\n{content}\\n\\n### Assistant:\\n{reply}<eos>\\n\\n### User:...

``text`` rows (continued pre-training) are ``<bos>{text}<eos>`` with every token trained; the
engine packs them by default (hyperparameter ``packing``, see :mod:`scu.config`).

**Tool calling.** When the template's source handles tools (it mentions both ``tools`` and
``tool_calls``) the conversation goes to it as it is: ``tools=`` the record's tools, assistant
``tool_calls`` with their ``arguments`` parsed to objects, ``tool`` messages with their
``tool_call_id``/``name``. Otherwise (and without a template) a fallback rendering is used:

* the tools are appended to the system message (one is added first when there is none)::

      # Tools
      You may call one or more of these functions. To call one, reply with
      <tool_call>{"name": <function name>, "arguments": <arguments object>}</tool_call>
      <tools>
      {"type": "function", "function": {...}}
      </tools>

* an assistant tool call becomes assistant text: its content (if any), a newline, then one
  ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` per call (that text is the
  target, so the call's JSON is learnt);
* tool results become a user turn (consecutive results merged into one), each as
  ``<tool_response>\\n{content}\\n</tool_response>`` (masked, like any user turn).

A template that rejects the (native or fallback) conversation raises :class:`DataError` naming the
row: that model cannot express it (e.g. a template that refuses a system message cannot take tools).

Rows longer than the block are kept: the prompt is cut from the left; if the target alone does not
fit, it is cut from the right after the last prompt token. Both counts are reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("scu.data")

IGNORE = -100
ROLES = {"system", "user", "assistant", "tool"}
_TOOLS_RE = re.compile(r"\btools\b")


class DataError(ValueError):
    """A user-facing explanation of a problem with the input data."""


class Conversation(list[dict[str, Any]]):
    """One record: its messages (dicts, extra keys kept) plus the record-level ``tools``.

    A ``text`` record (``is_text``) is one assistant message holding the whole document.
    """

    tools: list[dict[str, Any]] | None
    is_text: bool

    def __init__(
        self,
        messages: Sequence[dict[str, Any]] = (),
        tools: list[dict[str, Any]] | None = None,
        *,
        text: bool = False,
    ) -> None:
        super().__init__(messages)
        self.tools = tools
        self.is_text = text


def is_text(row: Sequence[dict[str, Any]]) -> bool:
    """Whether ``row`` is a ``text`` record (continued pre-training: no prompt, all trained)."""
    return bool(getattr(row, "is_text", False))


class Encoded(tuple[list[int], list[int]]):
    """``(prompt_ids, target_ids)`` of one row; ``mask[i]``: whether ``target_ids[i]`` is trained.

    ``prompt_ids`` are the tokens before the first trained token; ``mask`` is ``None`` when every
    target token is trained (single-turn rows, text rows).
    """

    mask: list[bool] | None

    def __new__(cls, prompt: list[int], target: list[int], mask: list[bool] | None = None) -> Encoded:
        self = super().__new__(cls, (prompt, target))
        self.mask = None if mask is None or all(mask) else mask
        return self


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


_MESSAGE_SHAPE = "{'role': system|user|assistant|tool, 'content': string}"


def _check_message(m: Any, i: int, where: str) -> dict[str, Any]:
    bad = f"{where}: messages[{i}] must be {_MESSAGE_SHAPE}"
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise DataError(bad)
    role, content = m["role"], m.get("content")
    calls = m.get("tool_calls")
    if calls is not None:
        if role != "assistant" or not isinstance(calls, list) or not calls:
            raise DataError(
                f"{where}: messages[{i}].tool_calls must be a non-empty list on an assistant message"
            )
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise DataError(f"{where}: messages[{i}].tool_calls entries need a function with a name")
    if not isinstance(content, str) and not (content is None and calls is not None):
        raise DataError(bad)
    weight = m.get("weight", 1)
    if weight not in (0, 1) or isinstance(weight, bool) or (weight == 0 and role != "assistant"):
        raise DataError(f"{where}: messages[{i}].weight must be 0 or 1, on an assistant message")
    for key in ("name", "tool_call_id"):
        if m.get(key) is not None and not isinstance(m[key], str):
            raise DataError(f"{where}: messages[{i}].{key} must be a string")
    return dict(m)


def _check_record(obj: Any, where: str) -> Conversation:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: a record must be a JSON object with a 'messages' list or a 'text' string")
    if "messages" not in obj and "text" in obj:
        text = obj["text"]
        if not isinstance(text, str) or not text:
            raise DataError(f"{where}: 'text' must be a non-empty string")
        return Conversation([{"role": "assistant", "content": text}], text=True)
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list")
    out = [_check_message(m, i, where) for i, m in enumerate(messages)]
    if out[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant target")
    tools = obj.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        raise DataError(f"{where}: 'tools' must be a list of objects")
    return Conversation(out, tools or None)


def read_channel(directory: Path) -> list[Conversation]:
    """All records of every ``*.jsonl`` file under ``directory`` (sorted by path)."""
    files = sorted(p for p in directory.rglob("*.jsonl") if p.is_file()) if directory.is_dir() else []
    rows: list[Conversation] = []
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


# --- rendering -----------------------------------------------------------------------------------


def _has_tools(row: Sequence[dict[str, Any]]) -> bool:
    return bool(getattr(row, "tools", None)) or any(m.get("tool_calls") or m["role"] == "tool" for m in row)


def _template_source(tokenizer: Any, tools: bool) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: prefer "tool_use" for tool conversations
        return template.get("tool_use") if tools and "tool_use" in template else template.get("default")
    return template if isinstance(template, str) and template else None


def template_supports_tools(source: str | None) -> bool:
    """Whether a chat template's source handles tool calling (mentions ``tools`` and ``tool_calls``)."""
    return bool(source) and bool(_TOOLS_RE.search(source or "")) and "tool_calls" in (source or "")


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def _call_json(call: dict[str, Any]) -> str:
    fn = call["function"]
    return json.dumps(
        {"name": fn["name"], "arguments": _arguments(fn.get("arguments", {}))}, ensure_ascii=False
    )


FALLBACK_TOOLS_HEADER = (
    "# Tools\nYou may call one or more of these functions. To call one, reply with\n"
    '<tool_call>{"name": <function name>, "arguments": <arguments object>}</tool_call>\n'
)


def fallback_messages(
    messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[tuple[dict[str, Any], int]]:
    """The documented fallback rendering of a tool conversation as system/user/assistant turns.

    Returns ``(message, source index)`` pairs (the index of the stored message it came from;
    merged tool results keep the first one's).
    """
    out: list[tuple[dict[str, Any], int]] = []
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "tool":
            body = f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"
            if out and out[-1][0].get("_tool_results"):
                out[-1][0]["content"] += "\n" + body
            else:
                out.append(({"role": "user", "content": body, "_tool_results": True}, i))
            continue
        msg = {k: v for k, v in m.items() if k not in ("tool_calls", "weight", "tool_call_id")}
        if m.get("tool_calls"):
            calls = "\n".join(f"<tool_call>\n{_call_json(c)}\n</tool_call>" for c in m["tool_calls"])
            msg["content"] = f"{m['content']}\n{calls}" if m.get("content") else calls
        out.append((msg, i))
    for msg, _ in out:
        msg.pop("_tool_results", None)
    if tools:
        block = (
            FALLBACK_TOOLS_HEADER
            + "<tools>\n"
            + "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
            + "\n</tools>"
        )
        if out and out[0][0]["role"] == "system":
            out[0][0]["content"] = f"{out[0][0]['content']}\n\n{block}"
        else:
            out.insert(0, ({"role": "system", "content": block}, -1))
    return out


def _native_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        msg = {k: v for k, v in m.items() if k != "weight"}
        if msg.get("content") is None:
            msg["content"] = ""
        if m.get("tool_calls"):
            msg["tool_calls"] = [
                {
                    **c,
                    "function": {
                        **c["function"],
                        "arguments": _arguments(c["function"].get("arguments", {})),
                    },
                }
                for c in m["tool_calls"]
            ]
        out.append(msg)
    return out


def _plan(
    row: Sequence[dict[str, Any]], source: str | None
) -> tuple[list[dict[str, Any]], list[bool], list[dict[str, Any]] | None]:
    """(messages to render, trained flag per message, tools to pass to the template)."""
    tools = getattr(row, "tools", None)
    if _has_tools(row) and not template_supports_tools(source):
        pairs = fallback_messages(row, tools)
        msgs = [m for m, _ in pairs]
        trained = [m["role"] == "assistant" and i >= 0 and row[i].get("weight", 1) == 1 for m, i in pairs]
        return msgs, trained, None
    msgs = _native_messages(row)
    trained = [m["role"] == "assistant" and m.get("weight", 1) == 1 for m in row]
    return msgs, trained, tools


def _template_segments(
    tokenizer: Any, source: str, row: Sequence[dict[str, Any]], index: int
) -> list[tuple[str, int]]:
    """Text pieces of a templated conversation with a kind: 0 masked, 1 trained turn, 2 last turn."""
    msgs, trained, tools = _plan(row, source)
    kwargs: dict[str, Any] = {"tokenize": False, "chat_template": source}
    if tools:
        kwargs["tools"] = tools

    def render(part: list[dict[str, Any]], gen: bool) -> str:
        try:
            return str(tokenizer.apply_chat_template(part, add_generation_prompt=gen, **kwargs))
        except Exception as exc:  # jinja TemplateError, or a template's raise_exception()
            what = "tool calling" if _has_tools(row) else "this conversation"
            raise DataError(
                f"row {index}: the base model's chat template cannot express {what}: {exc}"
            ) from None

    pieces: list[tuple[str, int]] = []
    consumed = ""
    last = len(msgs) - 1
    for i, m in enumerate(msgs):
        if m["role"] != "assistant" or (not trained[i] and i != last):
            continue
        prompt = render(msgs[:i], True)
        full = render(msgs[: i + 1], False)
        if not prompt.startswith(consumed) or not full.startswith(prompt):
            raise DataError(
                f"row {index}: the base model's chat template renders earlier turns differently once later "
                "turns are added, so the assistant turns cannot be located for training"
            )
        pieces.append((prompt[len(consumed) :], 0))
        pieces.append((full[len(prompt) :], (2 if i == last else 1) if trained[i] else 0))
        consumed = full
    return pieces


def _fallback_segments(row: Sequence[dict[str, Any]], eos: str) -> list[tuple[str, int]]:
    msgs, trained, _ = _plan(row, None)
    pieces: list[tuple[str, int]] = []
    last = len(msgs) - 1
    for i, m in enumerate(msgs):
        if m["role"] == "assistant":
            pieces.append(("### Assistant:\n", 0))
            pieces.append((f"{m.get('content') or ''}{eos}", (2 if i == last else 1) if trained[i] else 0))
            if i != last:
                pieces.append(("\n\n", 0))
        else:
            pieces.append((f"### {m['role'].capitalize()}:\n{m.get('content') or ''}\n\n", 0))
    return pieces


def encode_rows(tokenizer: Any, rows: Sequence[Sequence[dict[str, Any]]]) -> list[Encoded]:
    """One :class:`Encoded` ``(prompt_ids, target_ids)`` per row, untruncated.

    Each trained turn ends with EOS (see the module docstring); ``Encoded.mask`` marks the masked
    tokens between trained turns of a multi-turn row.
    """
    eos_id = tokenizer.eos_token_id
    eos = [eos_id] if eos_id is not None else []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos_text = tokenizer.eos_token or ""
    out: list[Encoded] = []
    step = 512
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        plans: list[tuple[list[int], list[tuple[str, int]]]] = []
        for n, row in enumerate(chunk, start):
            if is_text(row):
                plans.append((bos, [(row[0]["content"], 2)]))
                continue
            source = _template_source(tokenizer, _has_tools(row))
            if source:
                pieces = _template_segments(tokenizer, source, row, n)
                plans.append(([], _merge(pieces)))
            else:
                plans.append((bos, _merge(_fallback_segments(row, eos_text))))
        texts = [text for _, pieces in plans for text, _ in pieces]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        k = 0
        for head, pieces in plans:
            tokens: list[int] = list(head)
            trained: list[bool] = [False] * len(head)
            for _, kind in pieces:
                piece = list(ids[k])
                k += 1
                if kind == 0:
                    tokens.extend(piece)
                    trained.extend([False] * len(piece))
                    continue
                cut = _last_index(piece, eos_id)
                learn, rest = (piece, []) if cut is None else (piece[: cut + 1], piece[cut + 1 :])
                if cut is None and kind == 2:
                    learn = learn + eos
                tokens.extend(learn)
                trained.extend([True] * len(learn))
                if kind == 1:
                    tokens.extend(rest)
                    trained.extend([False] * len(rest))
            first = trained.index(True) if True in trained else len(tokens)
            out.append(Encoded(tokens[:first], tokens[first:], trained[first:]))
    return out


def _merge(pieces: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Join neighbouring masked pieces (one tokenizer call each, as one string) and drop empty ones."""
    out: list[tuple[str, int]] = []
    for text, kind in pieces:
        if kind == 0 and out and out[-1][1] == 0:
            out[-1] = (out[-1][0] + text, 0)
        elif text or kind == 2:
            out.append((text, kind))
    return out


def _last_index(ids: list[int], value: int | None) -> int | None:
    if value is None:
        return None
    for i in range(len(ids) - 1, -1, -1):
        if ids[i] == value:
            return i
    return None


def encode_prompt(tokenizer: Any, row: Sequence[dict[str, Any]]) -> list[int]:
    """Token ids of the prompt that asks for the final assistant turn of ``row``, rendered as
    training renders it (template or fallback, tools included): for generation-based evaluation."""
    tools = _has_tools(row)
    source = _template_source(tokenizer, tools)
    if source:
        msgs, _, tmpl_tools = _plan(row, source)
        kwargs: dict[str, Any] = {"tools": tmpl_tools} if tmpl_tools else {}
        text = tokenizer.apply_chat_template(
            msgs[:-1], add_generation_prompt=True, tokenize=False, chat_template=source, **kwargs
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    pieces = _fallback_segments(row, tokenizer.eos_token or "")
    text = "".join(t for t, _ in pieces[:-1])
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + list(tokenizer(text, add_special_tokens=False)["input_ids"])


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
