"""The input formats: detection and normalisation of one parsed row into a training record.

Conversational formats become a list of chat messages (OpenAI's shape); the last message is
from the assistant and every assistant message with weight 1 is a training target:

* ``input_target`` {input, target}: user ``input`` / assistant ``target``
* ``prompt_completion`` {prompt, completion}: user ``prompt`` / assistant ``completion``
* ``instruction`` {instruction, input?, output}: user ``instruction`` (+ ``"\\n\\n" + input``
  when ``input`` is non-blank) / assistant ``output``
* ``chat`` {messages: [...], tools?, functions?}: OpenAI's fine-tuning shape. Roles system,
  user, assistant, tool (and the legacy function). A message may carry ``name``. An assistant
  message may carry ``weight`` (0 or 1; 0 = context only, not trained; on any other role it is
  an error) and ``tool_calls`` (then ``content`` may be null or absent); the legacy
  ``function_call`` becomes one tool call, a legacy ``function`` message a ``tool`` message and
  record-level ``functions`` become ``tools``. A ``tool`` message may carry ``tool_call_id`` and
  must follow an assistant message with tool calls. At least one user message; the last message
  is from the assistant; at least one assistant message has weight 1.
* ``sharegpt`` {conversations: [{from, value}], system?, tools?}: ``from`` human/user ->
  user, gpt/assistant/model -> assistant, system, tool/observation -> tool, function_call ->
  an assistant tool call (``value`` is the JSON ``{"name", "arguments"}`` of the call, or a
  list of them); then the ``chat`` rules apply.
* ``text`` {text}: continued pre-training: no messages, every token is trained (the engine
  packs such datasets by default).

Preference pairs ({prompt?, chosen, rejected}, plain or conversational) are recognised and
refused (no DPO yet). A row that fits no format gets an error naming its keys and the nearest
format with what it lacks.

Normalisers return a :class:`Normalised` record or raise :class:`RowError` (a stable issue code
and a short detail). Extra fields are ignored; the optional ``label`` field is handled by the
validator.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from api.domain.enums import DatasetFormat
from api.services.datasets import issues

Message = tuple[str, str]
Row = dict[str, Any]

CHAT_ROLES: Final[frozenset[str]] = frozenset({"system", "user", "assistant", "tool", "function"})

REQUIRED_FIELDS: Final[dict[DatasetFormat, tuple[str, ...]]] = {
    DatasetFormat.CHAT: ("messages",),
    DatasetFormat.SHAREGPT: ("conversations",),
    DatasetFormat.INSTRUCTION: ("instruction", "output"),
    DatasetFormat.PROMPT_COMPLETION: ("prompt", "completion"),
    DatasetFormat.INPUT_TARGET: ("input", "target"),
    DatasetFormat.TEXT: ("text",),
}

# ``instruction`` rows may also carry ``input``, so it is tried before ``input_target``; ``text``
# is tried last (other formats' rows may carry a ``text`` field too).
DETECTION_ORDER: Final[tuple[DatasetFormat, ...]] = (
    DatasetFormat.CHAT,
    DatasetFormat.SHAREGPT,
    DatasetFormat.INSTRUCTION,
    DatasetFormat.PROMPT_COMPLETION,
    DatasetFormat.INPUT_TARGET,
    DatasetFormat.TEXT,
)

# Which format an unmatched row is "nearest" to, on a tie of present required fields.
_NEAREST_ORDER: Final[tuple[DatasetFormat, ...]] = (
    DatasetFormat.INPUT_TARGET,
    DatasetFormat.PROMPT_COMPLETION,
    DatasetFormat.INSTRUCTION,
    DatasetFormat.CHAT,
    DatasetFormat.SHAREGPT,
    DatasetFormat.TEXT,
)

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

PREFERENCE_MESSAGE: Final = (
    "preference pairs (DPO) are not supported yet: this row has 'chosen' and 'rejected'; "
    "fine-tune on the chosen answers instead (e.g. {'prompt': ..., 'completion': <chosen>})"
)


class RowError(Exception):
    """One row is unusable; ``code`` is a stable issue code from :mod:`issues`."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(slots=True)
class Normalised:
    """One normalised row: chat ``messages`` (+ record-level ``tools``) or a ``text`` document.

    ``plain``: every message is exactly ``{"role", "content"}`` with string values and there
    are no tools (stored in the version-1 record layout, byte for byte).
    """

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    text: str | None = None
    plain: bool = True

    def label_source(self) -> str:
        """What classification takes as the label when the row has none: the final reply."""
        if self.text is not None:
            return self.text
        content = self.messages[-1].get("content")
        return content if isinstance(content, str) else ""

    def measure(self) -> tuple[str, list[str]]:
        """(trained text, other texts): for the length limits and the token estimate.

        The trained text is every assistant message with weight 1 (content and tool-call
        JSON); a ``text`` row is all input (there is no separate target).
        """
        if self.text is not None:
            return "", [self.text]
        if self.plain:
            msgs = self.messages
            target = "".join([m["content"] for m in msgs if m["role"] == "assistant"])
            return target, [m["content"] for m in msgs if m["role"] != "assistant"]
        trained: list[str] = []
        other: list[str] = []
        if self.tools:
            other.append(json.dumps(self.tools, ensure_ascii=False))
        for m in self.messages:
            parts = [m["content"]] if isinstance(m.get("content"), str) else []
            parts.extend(json.dumps(tc["function"], ensure_ascii=False) for tc in m.get("tool_calls", ()))
            if m["role"] == "assistant" and m.get("weight", 1) == 1:
                trained.extend(parts)
            else:
                other.extend(parts)
        return "".join(trained), other


Normaliser = Callable[[Row], Normalised]


def is_preference(row: Row) -> bool:
    return "chosen" in row and "rejected" in row


def detect_format(row: Row) -> DatasetFormat | None:
    """The first format (in :data:`DETECTION_ORDER`) whose required fields are all present.

    Preference pairs match none (see :func:`unmatched_error`).
    """
    if is_preference(row):
        return None
    for fmt in DETECTION_ORDER:
        if all(field in row for field in REQUIRED_FIELDS[fmt]):
            return fmt
    return None


def _quoted(fields: list[str]) -> str:
    q = [repr(f) for f in fields]
    return q[0] if len(q) == 1 else ", ".join(q[:-1]) + " and " + q[-1]


def unmatched_error(row: Row) -> RowError:
    """The error for a row that matches no format: preference pairs, else the nearest format."""
    if is_preference(row):
        return RowError(issues.UNSUPPORTED_FORMAT, PREFERENCE_MESSAGE)
    keys = [str(k)[:40] for k in list(row)[:20]]
    more = ", ..." if len(row) > 20 else ""
    best = max(_NEAREST_ORDER, key=lambda f: sum(k in row for k in REQUIRED_FIELDS[f]))
    lacks = [k for k in REQUIRED_FIELDS[best] if k not in row]
    shown = repr(keys)[:-1] + more + "]"
    return RowError(
        issues.MISSING_FIELD,
        f"row has keys {shown}; nearest format: {best.value} (needs {_quoted(lacks)})",
    )


def _missing(row: Row, fmt: DatasetFormat, field: str) -> RowError:
    if is_preference(row):
        return RowError(issues.UNSUPPORTED_FORMAT, PREFERENCE_MESSAGE)
    other = detect_format(row)
    if other is not None and other is not fmt:
        return RowError(issues.FORMAT_MISMATCH, f"row looks like {other.value}, the file is {fmt.value}")
    return RowError(issues.MISSING_FIELD, f"{fmt.value} row has no {field!r} field")


def _text(row: Row, field: str, fmt: DatasetFormat) -> str:
    try:
        value = row[field]
    except KeyError:
        raise _missing(row, fmt, field) from None
    if type(value) is not str:
        raise RowError(issues.WRONG_TYPE, f"{field!r} must be a string, got {_type_name(value)}")
    if not value or value.isspace():
        raise RowError(issues.EMPTY_TEXT, f"{field!r} is empty")
    return value


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "string" if isinstance(value, str) else type(value).__name__


def _pair(user: str, assistant: str) -> Normalised:
    return Normalised([{"role": "user", "content": user}, {"role": "assistant", "content": assistant}])


def normalise_input_target(row: Row) -> Normalised:
    fmt = DatasetFormat.INPUT_TARGET
    return _pair(_text(row, "input", fmt), _text(row, "target", fmt))


def normalise_prompt_completion(row: Row) -> Normalised:
    fmt = DatasetFormat.PROMPT_COMPLETION
    return _pair(_text(row, "prompt", fmt), _text(row, "completion", fmt))


def normalise_instruction(row: Row) -> Normalised:
    fmt = DatasetFormat.INSTRUCTION
    user = _text(row, "instruction", fmt)
    extra = row.get("input")
    if extra is not None:
        if type(extra) is not str:
            raise RowError(issues.WRONG_TYPE, f"'input' must be a string, got {_type_name(extra)}")
        if extra and not extra.isspace():
            user = f"{user}\n\n{extra}"
    return _pair(user, _text(row, "output", fmt))


def normalise_text(row: Row) -> Normalised:
    return Normalised(messages=[], text=_text(row, "text", DatasetFormat.TEXT), plain=False)


# --- tools -------------------------------------------------------------------------------------


def _json_arguments(value: Any, where: str) -> str:
    """Tool-call arguments as a JSON string (OpenAI's shape); an object is serialised."""
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if type(value) is not str:
        raise RowError(
            issues.WRONG_TYPE, f"{where} must be a JSON string or an object, got {_type_name(value)}"
        )
    try:
        json.loads(value)
    except ValueError:
        raise RowError(issues.INVALID_TOOLS, f"{where} is not valid JSON") from None
    return value


def _function_call(value: Any, where: str) -> dict[str, Any]:
    """``{"name", "arguments"}`` -> the canonical ``function`` object of a tool call."""
    if type(value) is not dict:
        raise RowError(issues.WRONG_TYPE, f"{where} must be an object, got {_type_name(value)}")
    name = value.get("name")
    if type(name) is not str or not name.strip():
        raise RowError(issues.INVALID_TOOLS, f"{where}.name must be a non-empty string")
    args = value.get("arguments", "{}")
    return {"name": name, "arguments": _json_arguments(args, f"{where}.arguments")}


def _tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    if type(value) is not list:
        raise RowError(issues.WRONG_TYPE, f"{where} must be an array, got {_type_name(value)}")
    if not value:
        raise RowError(issues.INVALID_TOOLS, f"{where} is empty")
    out: list[dict[str, Any]] = []
    for j, call in enumerate(value):
        at = f"{where}[{j}]"
        if type(call) is not dict:
            raise RowError(issues.WRONG_TYPE, f"{at} must be an object, got {_type_name(call)}")
        kind = call.get("type", "function")
        if kind != "function":
            raise RowError(
                issues.INVALID_TOOLS, f"{at}.type is {str(kind)[:40]!r}; only 'function' is supported"
            )
        if "function" not in call:
            raise RowError(issues.INVALID_TOOLS, f"{at} has no 'function'")
        canonical: dict[str, Any] = {}
        call_id = call.get("id")
        if call_id is not None:
            if type(call_id) is not str:
                raise RowError(issues.WRONG_TYPE, f"{at}.id must be a string, got {_type_name(call_id)}")
            canonical["id"] = call_id
        canonical["type"] = "function"
        canonical["function"] = _function_call(call["function"], f"{at}.function")
        out.append(canonical)
    return out


def _tools(value: Any, where: str, *, legacy: bool) -> list[dict[str, Any]]:
    """Record-level ``tools`` (or legacy ``functions``) -> ``[{"type": "function", "function"}]``."""
    if type(value) is str:  # some exports store the list as a JSON string
        try:
            value = json.loads(value)
        except ValueError:
            raise RowError(issues.INVALID_TOOLS, f"{where!r} is a string but not valid JSON") from None
    if type(value) is not list:
        raise RowError(issues.WRONG_TYPE, f"{where!r} must be an array, got {_type_name(value)}")
    out: list[dict[str, Any]] = []
    for j, tool in enumerate(value):
        at = f"{where}[{j}]"
        if type(tool) is not dict:
            raise RowError(issues.WRONG_TYPE, f"{at} must be an object, got {_type_name(tool)}")
        fn = tool if legacy or ("function" not in tool and "name" in tool) else tool.get("function")
        if not legacy and tool.get("type", "function") != "function":
            raise RowError(issues.INVALID_TOOLS, f"{at}.type must be 'function'")
        if type(fn) is not dict or type(fn.get("name")) is not str or not fn["name"].strip():
            raise RowError(issues.INVALID_TOOLS, f"{at} needs a function with a non-empty 'name'")
        out.append({"type": "function", "function": fn})
    return out


# --- chat --------------------------------------------------------------------------------------


def _weight(msg: dict[str, Any], role: str, where: str) -> int:
    if "weight" not in msg:
        return 1
    weight = msg["weight"]
    if role != "assistant":
        raise RowError(
            issues.INVALID_WEIGHT,
            f"{where}.weight is set on a {role} message; only assistant messages take a weight",
        )
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight not in (0, 1):
        shown = json.dumps(weight)[:40] if not isinstance(weight, str) else repr(weight[:40])
        raise RowError(issues.INVALID_WEIGHT, f"{where}.weight must be 0 or 1, got {shown}")
    return int(weight)


_PLAIN_ROLES: Final[frozenset[str]] = frozenset({"system", "user", "assistant"})


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


def _chat_messages(raw: Any, field: str, tools: list[dict[str, Any]] | None) -> Normalised:
    """Validate OpenAI-shaped messages (``field`` names them in errors) into a :class:`Normalised`."""
    if not tools and type(raw) is list and raw:
        fast = _plain_chat(raw)
        if fast is not None:
            return fast
    if type(raw) is not list:
        raise RowError(issues.WRONG_TYPE, f"{field!r} must be an array, got {_type_name(raw)}")
    if not raw:
        raise RowError(issues.INVALID_CONVERSATION, f"{field!r} is empty")
    out: list[dict[str, Any]] = []
    plain = not tools
    has_user = trained = False
    open_calls = False  # the previous non-tool message was an assistant tool call
    for i, msg in enumerate(raw):
        where = f"{field}[{i}]"
        if type(msg) is not dict:
            raise RowError(issues.WRONG_TYPE, f"{where} must be an object, got {_type_name(msg)}")
        role = msg.get("role")
        if role is None:
            raise RowError(issues.MISSING_FIELD, f"{where} has no 'role'")
        if type(role) is not str:
            raise RowError(issues.WRONG_TYPE, f"{where}.role must be a string, got {_type_name(role)}")
        if role not in CHAT_ROLES:
            raise RowError(
                issues.INVALID_ROLE,
                f"{where}.role is {role[:40]!r}; expected system, user, assistant or tool",
            )
        legacy_function = role == "function"
        if legacy_function:
            role = "tool"
        out_msg: dict[str, Any] = {"role": role}
        calls: list[dict[str, Any]] | None = None
        if role == "assistant":
            if "tool_calls" in msg and msg["tool_calls"] is not None:
                calls = _tool_calls(msg["tool_calls"], f"{where}.tool_calls")
            elif "function_call" in msg and msg["function_call"] is not None:
                calls = [
                    {
                        "type": "function",
                        "function": _function_call(msg["function_call"], f"{where}.function_call"),
                    }
                ]
        content = msg.get("content")
        if content is None and calls is None:
            detail = f"{where} has no 'content'"
            if role == "assistant":
                detail += " (and no 'tool_calls')"
            raise RowError(issues.MISSING_FIELD, detail)
        if content is not None:
            if type(content) is not str:
                raise RowError(
                    issues.WRONG_TYPE, f"{where}.content must be a string, got {_type_name(content)}"
                )
            if (not content or content.isspace()) and calls is None and role != "tool":
                raise RowError(issues.EMPTY_TEXT, f"{where}.content is empty")
        out_msg["content"] = content
        name = msg.get("name")
        if name is not None:
            if type(name) is not str:
                raise RowError(issues.WRONG_TYPE, f"{where}.name must be a string, got {_type_name(name)}")
            out_msg["name"] = name
        weight = _weight(msg, role, where)
        if weight == 0:
            out_msg["weight"] = 0
        if calls is not None:
            out_msg["tool_calls"] = calls
        if role == "tool":
            if not open_calls:
                raise RowError(
                    issues.INVALID_CONVERSATION,
                    f"{where} is a tool result with no assistant tool call before it",
                )
            call_id = msg.get("tool_call_id")
            if call_id is not None:
                if type(call_id) is not str:
                    raise RowError(
                        issues.WRONG_TYPE, f"{where}.tool_call_id must be a string, got {_type_name(call_id)}"
                    )
                out_msg["tool_call_id"] = call_id
            if legacy_function and name is None:
                raise RowError(issues.MISSING_FIELD, f"{where} (a legacy function result) has no 'name'")
        else:
            open_calls = calls is not None
        has_user = has_user or role == "user"
        trained = trained or (role == "assistant" and weight == 1)
        if len(out_msg) != 2 or role not in ("system", "user", "assistant") or content is None:
            plain = False
        out.append(out_msg)
    if out[-1]["role"] != "assistant":
        raise RowError(issues.INVALID_CONVERSATION, "the last message must be from the assistant")
    if not has_user:
        raise RowError(issues.INVALID_CONVERSATION, "there is no user message")
    if not trained:
        raise RowError(
            issues.INVALID_CONVERSATION, "no assistant message is trained (every one has weight 0)"
        )
    return Normalised(out, tools=tools or None, plain=plain)


def _record_tools(row: Row) -> list[dict[str, Any]] | None:
    tools: list[dict[str, Any]] = []
    if row.get("tools") is not None:
        tools.extend(_tools(row["tools"], "tools", legacy=False))
    if row.get("functions") is not None:
        tools.extend(_tools(row["functions"], "functions", legacy=True))
    return tools or None


def normalise_chat(row: Row) -> Normalised:
    try:
        raw = row["messages"]
    except KeyError:
        raise _missing(row, DatasetFormat.CHAT, "messages") from None
    return _chat_messages(raw, "messages", _record_tools(row))


def _sharegpt_call(value: str, where: str) -> list[dict[str, Any]]:
    try:
        parsed = json.loads(value)
    except ValueError:
        raise RowError(
            issues.INVALID_TOOLS,
            f"{where}.value of a function_call turn must be JSON {{'name', 'arguments'}}",
        ) from None
    items = parsed if isinstance(parsed, list) else [parsed]
    return [{"type": "function", "function": _function_call(c, f"{where}.value")} for c in items]


def normalise_sharegpt(row: Row) -> Normalised:
    try:
        raw = row["conversations"]
    except KeyError:
        raise _missing(row, DatasetFormat.SHAREGPT, "conversations") from None
    if type(raw) is not list:
        raise RowError(issues.WRONG_TYPE, f"'conversations' must be an array, got {_type_name(raw)}")
    messages: list[Any] = []
    system = row.get("system")
    if system is not None:
        if type(system) is not str:
            raise RowError(issues.WRONG_TYPE, f"'system' must be a string, got {_type_name(system)}")
        if system.strip():
            messages.append({"role": "system", "content": system})
    prepended = bool(messages)
    for i, turn in enumerate(raw):
        where = f"conversations[{i}]"
        if type(turn) is not dict:
            raise RowError(issues.WRONG_TYPE, f"{where} must be an object, got {_type_name(turn)}")
        source, value = turn.get("from"), turn.get("value")
        if source is None or value is None:
            raise RowError(issues.MISSING_FIELD, f"{where} has no {'from' if source is None else 'value'!r}")
        if type(source) is not str or type(value) is not str:
            bad = "from" if type(source) is not str else "value"
            raise RowError(issues.WRONG_TYPE, f"{where}.{bad} must be a string")
        role = SHAREGPT_ROLES.get(source.strip().lower())
        if role is None:
            raise RowError(
                issues.INVALID_ROLE,
                f"{where}.from is {source[:40]!r}; expected human, gpt, system, tool, "
                "function_call or observation",
            )
        msg: dict[str, Any] = {"role": role}
        if source.strip().lower() == "function_call":
            msg["content"] = None
            msg["tool_calls"] = _sharegpt_call(value, where)
        else:
            msg["content"] = value
        for key in ("name", "weight"):
            if key in turn:
                msg[key] = turn[key]
        messages.append(msg)
    # Errors from the chat rules name the converted list, so map indices back when a
    # system message was prepended.
    tools = _record_tools(row)
    try:
        return _chat_messages(messages, "conversations", tools)
    except RowError as exc:
        if prepended:
            exc.detail = _shift_index(exc.detail)
            exc.args = (exc.detail,)
        raise


def _shift_index(detail: str) -> str:
    prefix = "conversations["
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


def _refusing_preference(normalise: Normaliser) -> Normaliser:
    """``normalise`` that first refuses preference pairs (also in a file of a forced format)."""

    def checked(row: Row) -> Normalised:
        if is_preference(row):
            raise RowError(issues.UNSUPPORTED_FORMAT, PREFERENCE_MESSAGE)
        return normalise(row)

    return checked


NORMALISERS: Final[dict[DatasetFormat, Normaliser]] = {
    fmt: _refusing_preference(fn)
    for fmt, fn in (
        (DatasetFormat.INPUT_TARGET, normalise_input_target),
        (DatasetFormat.PROMPT_COMPLETION, normalise_prompt_completion),
        (DatasetFormat.INSTRUCTION, normalise_instruction),
        (DatasetFormat.CHAT, normalise_chat),
        (DatasetFormat.SHAREGPT, normalise_sharegpt),
        (DatasetFormat.TEXT, normalise_text),
    )
}
