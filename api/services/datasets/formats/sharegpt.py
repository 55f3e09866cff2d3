"""The ``sharegpt`` format: {conversations: [{from, value}], system?, tools?}.

``from`` human/user -> user, gpt/assistant/model -> assistant, system, tool/observation ->
tool, function_call -> an assistant tool call (``value`` is the JSON ``{"name", "arguments"}``
of the call, or a list of them); then the ``chat`` rules apply.
"""

from __future__ import annotations

import json
from typing import Any, Final

from api.services.datasets import issues
from api.services.datasets.formats.base import MissingField, Normalised, Row, RowError, expect, optional_str
from api.services.datasets.formats.chat import chat_messages
from api.services.datasets.formats.tools import as_tool_call, record_tools

SHAREGPT_ROLES: Final[dict[str, str]] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool",
    "observation": "tool",
    "function_call": "assistant",
}
_FIELD: Final = "conversations"


def normalise_sharegpt(row: Row) -> Normalised:
    try:
        raw = row[_FIELD]
    except KeyError:
        raise MissingField(_FIELD) from None
    turns = expect(raw, list, repr(_FIELD))
    system = optional_str(row.get("system"), "'system'")
    prepended = system is not None and bool(system.strip())
    messages: list[Any] = [{"role": "system", "content": system}] if prepended else []
    messages.extend(_message(turn, f"{_FIELD}[{i}]") for i, turn in enumerate(turns))
    tools = record_tools(row)
    try:
        return chat_messages(messages, _FIELD, tools)
    except RowError as exc:
        # Errors from the chat rules name the converted list: map indices back when a
        # system message was prepended.
        if prepended:
            exc.detail = _shift_index(exc.detail)
            exc.args = (exc.detail,)
        raise


def _message(value: Any, where: str) -> dict[str, Any]:
    """One turn as a chat message (``name`` and ``weight`` passed on for the chat checks)."""
    turn = expect(value, dict, where)
    source, text = turn.get("from"), turn.get("value")
    if source is None or text is None:
        raise RowError(issues.MISSING_FIELD, f"{where} has no {'from' if source is None else 'value'!r}")
    if type(source) is not str or type(text) is not str:
        bad = "from" if type(source) is not str else "value"
        raise RowError(issues.WRONG_TYPE, f"{where}.{bad} must be a string")
    kind = source.strip().lower()
    role = SHAREGPT_ROLES.get(kind)
    if role is None:
        detail = (
            f"{where}.from is {source[:40]!r}; expected human, gpt, system, tool, "
            "function_call or observation"
        )
        raise RowError(issues.INVALID_ROLE, detail)
    msg: dict[str, Any] = {"role": role}
    if kind == "function_call":
        msg["content"] = None
        msg["tool_calls"] = _calls(text, where)
    else:
        msg["content"] = text
    msg.update((key, turn[key]) for key in ("name", "weight") if key in turn)
    return msg


def _calls(value: str, where: str) -> list[dict[str, Any]]:
    try:
        parsed = json.loads(value)
    except ValueError:
        detail = f"{where}.value of a function_call turn must be JSON {{'name', 'arguments'}}"
        raise RowError(issues.INVALID_TOOLS, detail) from None
    items = parsed if isinstance(parsed, list) else [parsed]
    return [as_tool_call(c, f"{where}.value") for c in items]


def _shift_index(detail: str) -> str:
    prefix = f"{_FIELD}["
    if not detail.startswith(prefix):
        return detail
    end = detail.find("]")
    try:
        index = int(detail[len(prefix) : end])
    except ValueError:
        return detail
    if index == 0:
        return "'system'" + detail[end + 1 :]
    return f"{prefix}{index - 1}{detail[end:]}"
