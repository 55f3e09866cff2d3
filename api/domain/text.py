"""Text the API accepts from clients: what every layer behind it (databases, logs, JSON responses,
SageMaker) can hold."""

from __future__ import annotations

import unicodedata
from typing import Any

from pydantic import BaseModel, model_validator


def has_lone_surrogate(value: Any) -> bool:
    """Whether a string anywhere in ``value`` (keys included) holds an unpaired UTF-16 surrogate.

    JSON can spell one (``"\\ud800"``) and Python's parser keeps it, but it is not Unicode text: it
    cannot be encoded as UTF-8 for a database, a log line or a response.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(has_lone_surrogate(v) for v in value)
    return False


def has_control_char(text: str) -> bool:
    """Whether ``text`` holds a control character (NUL, newline, tab, DEL, C1 …)."""
    return any(unicodedata.category(c) == "Cc" for c in text)


class RequestBody(BaseModel):
    """Base of the JSON request bodies: refuses one that is not Unicode text (see has_lone_surrogate)."""

    @model_validator(mode="before")
    @classmethod
    def _unicode_text(cls, data: Any) -> Any:
        if has_lone_surrogate(data):
            raise ValueError(
                "text must be valid Unicode: the body holds an unpaired surrogate escape (\\ud800-\\udfff)"
            )
        return data
