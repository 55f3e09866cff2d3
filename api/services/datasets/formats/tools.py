"""Tools and tool calls in OpenAI's shape: record-level ``tools`` and assistant ``tool_calls``.

Arguments are kept as a JSON string (an object is serialised); the legacy ``functions`` and
``function_call`` fields become ``tools`` and one tool call.
"""

from __future__ import annotations

import json
from typing import Any

from api.services.datasets import issues
from api.services.datasets.formats.base import Row, RowError, expect, optional_str, type_name


def _json_arguments(value: Any, where: str) -> str:
    """Tool-call arguments as a JSON string (OpenAI's shape); an object is serialised."""
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if type(value) is not str:
        detail = f"{where} must be a JSON string or an object, got {type_name(value)}"
        raise RowError(issues.WRONG_TYPE, detail)
    try:
        json.loads(value)
    except ValueError:
        raise RowError(issues.INVALID_TOOLS, f"{where} is not valid JSON") from None
    return value


def function_call(value: Any, where: str) -> dict[str, Any]:
    """``{"name", "arguments"}`` -> the canonical ``function`` object of a tool call."""
    call = expect(value, dict, where)
    name = call.get("name")
    if type(name) is not str or not name.strip():
        raise RowError(issues.INVALID_TOOLS, f"{where}.name must be a non-empty string")
    args = call.get("arguments", "{}")
    return {"name": name, "arguments": _json_arguments(args, f"{where}.arguments")}


def as_tool_call(value: Any, where: str) -> dict[str, Any]:
    """A bare ``{"name", "arguments"}`` (legacy ``function_call``, ShareGPT) as one tool call."""
    return {"type": "function", "function": function_call(value, where)}


def _tool_call(value: Any, at: str) -> dict[str, Any]:
    call = expect(value, dict, at)
    kind = call.get("type", "function")
    if kind != "function":
        detail = f"{at}.type is {str(kind)[:40]!r}; only 'function' is supported"
        raise RowError(issues.INVALID_TOOLS, detail)
    if "function" not in call:
        raise RowError(issues.INVALID_TOOLS, f"{at} has no 'function'")
    canonical: dict[str, Any] = {}
    call_id = optional_str(call.get("id"), f"{at}.id")
    if call_id is not None:
        canonical["id"] = call_id
    canonical["type"] = "function"
    canonical["function"] = function_call(call["function"], f"{at}.function")
    return canonical


def tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls`` in the canonical shape."""
    calls = expect(value, list, where)
    if not calls:
        raise RowError(issues.INVALID_TOOLS, f"{where} is empty")
    return [_tool_call(call, f"{where}[{j}]") for j, call in enumerate(calls)]


def _tool(value: Any, at: str, *, legacy: bool) -> dict[str, Any]:
    tool = expect(value, dict, at)
    fn = tool if legacy or ("function" not in tool and "name" in tool) else tool.get("function")
    if not legacy and tool.get("type", "function") != "function":
        raise RowError(issues.INVALID_TOOLS, f"{at}.type must be 'function'")
    if type(fn) is not dict or type(fn.get("name")) is not str or not fn["name"].strip():
        raise RowError(issues.INVALID_TOOLS, f"{at} needs a function with a non-empty 'name'")
    return {"type": "function", "function": fn}


def _tools(value: Any, where: str, *, legacy: bool) -> list[dict[str, Any]]:
    """Record-level ``tools`` (or legacy ``functions``) -> ``[{"type": "function", "function"}]``."""
    if type(value) is str:  # some exports store the list as a JSON string
        try:
            value = json.loads(value)
        except ValueError:
            raise RowError(issues.INVALID_TOOLS, f"{where!r} is a string but not valid JSON") from None
    items = expect(value, list, repr(where))
    return [_tool(tool, f"{where}[{j}]", legacy=legacy) for j, tool in enumerate(items)]


def record_tools(row: Row) -> list[dict[str, Any]] | None:
    """The row's ``tools`` and legacy ``functions``, canonical; None when it has none."""
    tools: list[dict[str, Any]] = []
    if row.get("tools") is not None:
        tools.extend(_tools(row["tools"], "tools", legacy=False))
    if row.get("functions") is not None:
        tools.extend(_tools(row["functions"], "functions", legacy=True))
    return tools or None
