"""Read and check the records of a channel (every ``*.jsonl`` file under it).

Records (the control plane's record schema 2; schema 1 is the plain subset and reads the same)::

    {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str|null, ...}, ...],
     "tools": [...]?, "label": str|null}
    {"text": str, "label": str|null}

A message may also carry ``name``, ``weight`` (assistant only: 0 = context, not trained; absent
= 1), ``tool_calls`` (assistant, OpenAI's shape; ``content`` may then be null) and
``tool_call_id`` (tool). The last message is from the assistant; extra keys are ignored.

``text`` rows (continued pre-training) are ``<bos>{text}<eos>`` with every token trained; the
engine packs them by default (hyperparameter ``packing``, see :mod:`scu.config`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROLES = {"system", "user", "assistant", "tool"}


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
