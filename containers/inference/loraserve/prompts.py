"""Prompts to token ids: plain text as it is, chat messages through the tokenizer's chat template."""

from __future__ import annotations

from typing import Any

from loraserve.errors import BadRequest
from loraserve.schemas import ChatMessage, Prompt


def _chat_text(tokenizer: Any, messages: list[ChatMessage], index: int) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise BadRequest(
            "the base model's tokenizer has no chat template: send plain-text inputs",
            code="chat_template_missing",
        )
    rows = [m.model_dump() if isinstance(m, ChatMessage) else m for m in messages]
    try:
        text: str = tokenizer.apply_chat_template(rows, add_generation_prompt=True, tokenize=False)
    except Exception as exc:
        raise BadRequest(f"inputs[{index}]: the chat template rejected these messages: {exc}") from exc
    return text


def render(tokenizer: Any, prompt: Prompt, index: int, context_limit: int | None) -> list[int]:
    """The token ids of ``inputs[index]``; BadRequest when empty or too long for the context.
    Fast tokenizers are not thread-safe: the caller holds the tokenizer's lock."""
    if isinstance(prompt, str):
        ids: list[int] = tokenizer(prompt)["input_ids"]
    else:
        ids = tokenizer(_chat_text(tokenizer, prompt, index), add_special_tokens=False)["input_ids"]
    if not ids:
        raise BadRequest(f"inputs[{index}] is empty after tokenisation", code="empty_prompt")
    if context_limit is not None and len(ids) >= context_limit:
        raise BadRequest(
            f"inputs[{index}] has {len(ids)} tokens; the model's context is {context_limit}",
            code="prompt_too_long",
        )
    return ids
