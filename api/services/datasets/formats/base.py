"""What every format shares: the normalised row, the row error and field checks."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from api.services.datasets import issues

Message = tuple[str, str]
Row = dict[str, Any]
T = TypeVar("T")

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


class MissingField(RowError):
    """A row lacks a field its format requires; the registry words it (the row may be of
    another format, or a preference pair)."""

    def __init__(self, field: str) -> None:
        super().__init__(issues.MISSING_FIELD, f"row has no {field!r} field")
        self.field = field


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


def type_name(value: object) -> str:
    """The JSON name of ``value``'s type, for error details."""
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


def expect(value: object, kind: type[T], where: str) -> T:
    """``value`` if its type is exactly ``kind`` (str, list or dict), else a wrong_type error."""
    if type(value) is not kind:
        raise wrong_type(value, kind, where)
    return value


def wrong_type(value: object, kind: type, where: str) -> RowError:
    """The wrong_type error for ``value`` where a ``kind`` (str, list or dict) belongs."""
    return RowError(issues.WRONG_TYPE, f"{where} must be {_ARTICLED[kind]}, got {type_name(value)}")


_ARTICLED: Final[dict[type, str]] = {str: "a string", list: "an array", dict: "an object"}


def optional_str(value: object, where: str) -> str | None:
    """``value`` when it is a string or None, else a wrong_type error."""
    return None if value is None else expect(value, str, where)


def required_text(row: Row, field: str) -> str:
    """The non-blank string in ``row[field]``."""
    try:
        value = row[field]
    except KeyError:
        raise MissingField(field) from None
    if type(value) is not str:
        raise wrong_type(value, str, repr(field))
    if not value or value.isspace():
        raise RowError(issues.EMPTY_TEXT, f"{field!r} is empty")
    return value
