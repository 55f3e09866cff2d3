"""Text the API accepts from clients: what every layer behind it (databases, logs, JSON responses,
SageMaker) can hold."""

from __future__ import annotations

import unicodedata
from typing import Any

from pydantic import BaseModel, model_validator

from api.domain.userjson import MAX_JSON_DEPTH, depth_error, nesting_depth


def has_lone_surrogate(value: Any) -> bool:
    """Whether a string anywhere in ``value`` (keys included) holds an unpaired UTF-16 surrogate.

    JSON can spell one (``"\\ud800"``) and Python's parser keeps it, but it is not Unicode text: it
    cannot be encoded as UTF-8 for a database, a log line or a response. Iterative: safe at any depth.
    """
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def has_control_char(text: str) -> bool:
    """Whether ``text`` holds a control character (NUL, newline, tab, DEL, C1 …)."""
    return any(unicodedata.category(c) == "Cc" for c in text)


class RequestBody(BaseModel):
    """Base of the JSON request bodies: refuses one that is not Unicode text (see has_lone_surrogate)
    or that nests arrays/objects deeper than ``MAX_JSON_DEPTH`` (validators recurse per level)."""

    @model_validator(mode="before")
    @classmethod
    def _unicode_text(cls, data: Any) -> Any:
        if nesting_depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:  # before anything recurses into it
            raise depth_error()
        if has_lone_surrogate(data):
            raise ValueError(
                "text must be valid Unicode: the body holds an unpaired surrogate escape (\\ud800-\\udfff)"
            )
        return data
