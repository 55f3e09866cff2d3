"""The ``chat`` format: OpenAI's fine-tuning shape {messages: [...], tools?, functions?}.

Roles system, user, assistant, tool (and the legacy function). A message may carry ``name``.
An assistant message may carry ``weight`` (0 or 1; 0 = context only, not trained; on any
other role it is an error) and ``tool_calls`` (then ``content`` may be null or absent); the
legacy ``function_call`` becomes one tool call, a legacy ``function`` message a ``tool``
message and record-level ``functions`` become ``tools``. A ``tool`` message may carry
``tool_call_id`` and must follow an assistant message with tool calls. At least one user
message; the last message is from the assistant; at least one assistant message has weight 1.
"""

from __future__ import annotations

import json
from typing import Any, Final

from api.services.datasets import issues
from api.services.datasets.formats.base import MissingField, Normalised, Row, RowError, expect, optional_str
from api.services.datasets.formats.tools import as_tool_call, record_tools, tool_calls

CHAT_ROLES: Final[frozenset[str]] = frozenset({"system", "user", "assistant", "tool", "function"})
_PLAIN_ROLES: Final[frozenset[str]] = frozenset({"system", "user", "assistant"})


def normalise_chat(row: Row) -> Normalised:
    try:
        raw = row["messages"]
    except KeyError:
        raise MissingField("messages") from None
    return chat_messages(raw, "messages", record_tools(row))


def chat_messages(raw: Any, field: str, tools: list[dict[str, Any]] | None) -> Normalised:
    """Validate OpenAI-shaped messages (``field`` names them in errors) into a :class:`Normalised`."""
    if not tools and type(raw) is list and raw:
        fast = _plain_chat(raw)
        if fast is not None:
            return fast
    expect(raw, list, repr(field))
    if not raw:
        raise RowError(issues.INVALID_CONVERSATION, f"{field!r} is empty")
    out: list[dict[str, Any]] = []
    open_calls = False  # the previous non-tool message was an assistant tool call
    for i, msg in enumerate(raw):
        message = _message(msg, f"{field}[{i}]", open_calls=open_calls)
        if message["role"] != "tool":
            open_calls = "tool_calls" in message
        out.append(message)
    _check_conversation(out)
    plain = not tools and all(
        len(m) == 2 and m["role"] in _PLAIN_ROLES and m["content"] is not None for m in out
    )
    return Normalised(out, tools=tools or None, plain=plain)


def _plain_chat(raw: list[Any]) -> Normalised | None:
    """The fast path: every message exactly ``{role, content}`` (system/user/assistant, non-blank
    text), a user message, the assistant last. ``None``: take the full checks."""
    has_user = False
    for msg in raw:
        if type(msg) is not dict or len(msg) != 2:
            return None
        role = msg.get("role")
        content = msg.get("content")
        if type(role) is not str or type(content) is not str or role not in _PLAIN_ROLES:
            return None
        if not content or content.isspace():
            return None
        if role == "user":
            has_user = True
    if not has_user or raw[-1]["role"] != "assistant":
        return None
    return Normalised(raw)


def _message(raw: Any, where: str, *, open_calls: bool) -> dict[str, Any]:
    """One message in the canonical shape (keys in the record's order)."""
    msg = expect(raw, dict, where)
    role, legacy = _role(msg, where)
    calls = _assistant_calls(msg, where) if role == "assistant" else None
    out: dict[str, Any] = {"role": role, "content": _content(msg, where, role, calls)}
    name = optional_str(msg.get("name"), f"{where}.name")
    if name is not None:
        out["name"] = name
    if _weight(msg, role, where) == 0:
        out["weight"] = 0
    if calls is not None:
        out["tool_calls"] = calls
    if role == "tool":
        _tool_result(msg, out, where, open_calls=open_calls, legacy=legacy)
    return out


def _role(msg: dict[str, Any], where: str) -> tuple[str, bool]:
    """(canonical role, whether it was the legacy ``function`` role)."""
    role = msg.get("role")
    if role is None:
        raise RowError(issues.MISSING_FIELD, f"{where} has no 'role'")
    role = expect(role, str, f"{where}.role")
    if role not in CHAT_ROLES:
        detail = f"{where}.role is {role[:40]!r}; expected system, user, assistant or tool"
        raise RowError(issues.INVALID_ROLE, detail)
    return ("tool", True) if role == "function" else (role, False)


def _assistant_calls(msg: dict[str, Any], where: str) -> list[dict[str, Any]] | None:
    if msg.get("tool_calls") is not None:
        return tool_calls(msg["tool_calls"], f"{where}.tool_calls")
    if msg.get("function_call") is not None:
        return [as_tool_call(msg["function_call"], f"{where}.function_call")]
    return None


def _content(msg: dict[str, Any], where: str, role: str, calls: list[Any] | None) -> str | None:
    content = optional_str(msg.get("content"), f"{where}.content")
    if content is None and calls is None:
        detail = f"{where} has no 'content'"
        if role == "assistant":
            detail += " (and no 'tool_calls')"
        raise RowError(issues.MISSING_FIELD, detail)
    if content is not None and (not content or content.isspace()) and calls is None and role != "tool":
        raise RowError(issues.EMPTY_TEXT, f"{where}.content is empty")
    return content


def _weight(msg: dict[str, Any], role: str, where: str) -> int:
    if "weight" not in msg:
        return 1
    weight = msg["weight"]
    if role != "assistant":
        detail = f"{where}.weight is set on a {role} message; only assistant messages take a weight"
        raise RowError(issues.INVALID_WEIGHT, detail)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight not in (0, 1):
        shown = json.dumps(weight)[:40] if not isinstance(weight, str) else repr(weight[:40])
        raise RowError(issues.INVALID_WEIGHT, f"{where}.weight must be 0 or 1, got {shown}")
    return int(weight)


def _tool_result(
    msg: dict[str, Any], out: dict[str, Any], where: str, *, open_calls: bool, legacy: bool
) -> None:
    """Check a ``tool`` message and add its ``tool_call_id`` to ``out``."""
    if not open_calls:
        detail = f"{where} is a tool result with no assistant tool call before it"
        raise RowError(issues.INVALID_CONVERSATION, detail)
    call_id = optional_str(msg.get("tool_call_id"), f"{where}.tool_call_id")
    if call_id is not None:
        out["tool_call_id"] = call_id
    if legacy and "name" not in out:
        raise RowError(issues.MISSING_FIELD, f"{where} (a legacy function result) has no 'name'")


def _check_conversation(messages: list[dict[str, Any]]) -> None:
    if messages[-1]["role"] != "assistant":
        raise RowError(issues.INVALID_CONVERSATION, "the last message must be from the assistant")
    if not any(m["role"] == "user" for m in messages):
        raise RowError(issues.INVALID_CONVERSATION, "there is no user message")
    if not any(m["role"] == "assistant" and "weight" not in m for m in messages):
        detail = "no assistant message is trained (every one has weight 0)"
        raise RowError(issues.INVALID_CONVERSATION, detail)
