"""The four input formats: detection and normalisation of one parsed row into chat messages.

Every format becomes a list of ``(role, content)`` messages whose last message is the
assistant target:

* ``input_target`` {input, target}: user ``input`` / assistant ``target``
* ``prompt_completion`` {prompt, completion}: user ``prompt`` / assistant ``completion``
* ``instruction`` {instruction, input?, output}: user ``instruction`` (+ ``"\\n\\n" + input``
  when ``input`` is non-blank) / assistant ``output``
* ``chat`` {messages: [{role, content}, ...]}: OpenAI style, roles system/user/assistant, at
  least one user message, last message from the assistant.

Normalisers raise :class:`RowError` (a stable issue code and a short detail) for a bad row.
Extra fields are ignored; the optional ``label`` field is handled by the validator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from api.domain.enums import DatasetFormat
from api.services.datasets import issues

Message = tuple[str, str]
Row = dict[str, Any]
Normaliser = Callable[[Row], list[Message]]

CHAT_ROLES: Final[frozenset[str]] = frozenset({"system", "user", "assistant"})

REQUIRED_FIELDS: Final[dict[DatasetFormat, tuple[str, ...]]] = {
    DatasetFormat.CHAT: ("messages",),
    DatasetFormat.INSTRUCTION: ("instruction", "output"),
    DatasetFormat.PROMPT_COMPLETION: ("prompt", "completion"),
    DatasetFormat.INPUT_TARGET: ("input", "target"),
}

# ``instruction`` rows may also carry ``input``, so it is tried before ``input_target``.
DETECTION_ORDER: Final[tuple[DatasetFormat, ...]] = (
    DatasetFormat.CHAT,
    DatasetFormat.INSTRUCTION,
    DatasetFormat.PROMPT_COMPLETION,
    DatasetFormat.INPUT_TARGET,
)


class RowError(Exception):
    """One row is unusable; ``code`` is a stable issue code from :mod:`issues`."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def detect_format(row: Row) -> DatasetFormat | None:
    """The first format (in :data:`DETECTION_ORDER`) whose required fields are all present."""
    for fmt in DETECTION_ORDER:
        if all(field in row for field in REQUIRED_FIELDS[fmt]):
            return fmt
    return None


def _missing(row: Row, fmt: DatasetFormat, field: str) -> RowError:
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


def normalise_input_target(row: Row) -> list[Message]:
    fmt = DatasetFormat.INPUT_TARGET
    return [("user", _text(row, "input", fmt)), ("assistant", _text(row, "target", fmt))]


def normalise_prompt_completion(row: Row) -> list[Message]:
    fmt = DatasetFormat.PROMPT_COMPLETION
    return [("user", _text(row, "prompt", fmt)), ("assistant", _text(row, "completion", fmt))]


def normalise_instruction(row: Row) -> list[Message]:
    fmt = DatasetFormat.INSTRUCTION
    user = _text(row, "instruction", fmt)
    extra = row.get("input")
    if extra is not None:
        if type(extra) is not str:
            raise RowError(issues.WRONG_TYPE, f"'input' must be a string, got {_type_name(extra)}")
        if extra and not extra.isspace():
            user = f"{user}\n\n{extra}"
    return [("user", user), ("assistant", _text(row, "output", fmt))]


def normalise_chat(row: Row) -> list[Message]:
    fmt = DatasetFormat.CHAT
    try:
        raw = row["messages"]
    except KeyError:
        raise _missing(row, fmt, "messages") from None
    if type(raw) is not list:
        raise RowError(issues.WRONG_TYPE, f"'messages' must be an array, got {_type_name(raw)}")
    if not raw:
        raise RowError(issues.INVALID_CONVERSATION, "'messages' is empty")
    out: list[Message] = []
    has_user = False
    for i, msg in enumerate(raw):
        if type(msg) is not dict:
            raise RowError(issues.WRONG_TYPE, f"messages[{i}] must be an object, got {_type_name(msg)}")
        role = msg.get("role")
        content = msg.get("content")
        if role is None or content is None:
            field = "role" if role is None else "content"
            raise RowError(issues.MISSING_FIELD, f"messages[{i}] has no {field!r}")
        if type(role) is not str:
            raise RowError(issues.WRONG_TYPE, f"messages[{i}].role must be a string, got {_type_name(role)}")
        if type(content) is not str:
            raise RowError(
                issues.WRONG_TYPE, f"messages[{i}].content must be a string, got {_type_name(content)}"
            )
        if role not in CHAT_ROLES:
            raise RowError(issues.INVALID_ROLE, f"messages[{i}].role is {role[:40]!r}")
        if not content or content.isspace():
            raise RowError(issues.EMPTY_TEXT, f"messages[{i}].content is empty")
        has_user = has_user or role == "user"
        out.append((role, content))
    if out[-1][0] != "assistant":
        raise RowError(issues.INVALID_CONVERSATION, "the last message must be from the assistant")
    if not has_user:
        raise RowError(issues.INVALID_CONVERSATION, "there is no user message")
    return out


NORMALISERS: Final[dict[DatasetFormat, Normaliser]] = {
    DatasetFormat.INPUT_TARGET: normalise_input_target,
    DatasetFormat.PROMPT_COMPLETION: normalise_prompt_completion,
    DatasetFormat.INSTRUCTION: normalise_instruction,
    DatasetFormat.CHAT: normalise_chat,
}
