"""What one finished input is: its text, token counts and why it ended. Torch-free."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length", "deadline"]


@dataclass(frozen=True)
class Generation:
    generated_text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop string; returns (text, whether one was found)."""
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    if not cuts:
        return text, False
    return text[: min(cuts)], True
