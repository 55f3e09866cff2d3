"""Prompts to token ids: plain text as it is; chat messages as the training engine renders them, so
an adapter sees the prompt format it was trained on: through the tokenizer's chat template, or
(a tokenizer without one) through the engine's documented fallback format::

    <bos>### System:\n{content}\n\n### User:\n{content}\n\n### Assistant:\n{reply}<eos>\n\n### User:...

ending with ``### Assistant:\n`` for the reply to generate; tool results become a user turn of
``<tool_response>`` blocks (containers/training/scu/data/render.py; a test compares the two).
"""

from __future__ import annotations

import re
from typing import Any

from loraserve.errors import BadRequest
from loraserve.schemas import ChatMessage, Prompt

_TOOLS_RE = re.compile(r"\btools\b")


def _turns(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """The conversation as the engine renders tool results where the format has no tool role: each
    run of consecutive ``tool`` messages becomes one user turn of ``<tool_response>`` blocks."""
    turns: list[dict[str, str]] = []
    merging = False
    for m in messages:
        if m.role == "tool":
            body = f"<tool_response>\n{m.content}\n</tool_response>"
            if merging:
                turns[-1]["content"] += "\n" + body
            else:
                turns.append({"role": "user", "content": body})
            merging = True
        else:
            turns.append({"role": m.role, "content": m.content})
            merging = False
    return turns


def _fallback_text(tokenizer: Any, messages: list[ChatMessage]) -> str:
    """The engine's fallback rendering of ``messages`` plus the generation prompt (no BOS)."""
    eos = tokenizer.eos_token or ""
    parts = []
    for turn in _turns(messages):
        if turn["role"] == "assistant":
            parts.append(f"### Assistant:\n{turn['content']}{eos}\n\n")
        else:
            parts.append(f"### {turn['role'].capitalize()}:\n{turn['content']}\n\n")
    return "".join(parts) + "### Assistant:\n"


def _template(tokenizer: Any, tools: bool) -> str | None:
    """The chat template's source the engine renders with: of named templates, ``tool_use`` for a
    conversation with tool turns when there is one, else ``default``."""
    template = tokenizer.chat_template
    if isinstance(template, dict):
        chosen = template.get("tool_use") if tools and "tool_use" in template else template.get("default")
        return chosen if isinstance(chosen, str) else None
    return template if isinstance(template, str) and template else None


def _handles_tools(source: str | None) -> bool:
    """Whether a template takes tool messages natively (its source mentions ``tools`` and
    ``tool_calls``, the engine's test); otherwise tool results go to it as user turns."""
    return bool(source) and bool(_TOOLS_RE.search(source or "")) and "tool_calls" in (source or "")


def _chat_text(tokenizer: Any, messages: list[ChatMessage], source: str, index: int) -> str:
    tools = any(m.role == "tool" for m in messages)
    if tools and not _handles_tools(source):
        rows: list[dict[str, Any]] = list(_turns(messages))
    else:
        rows = [m.model_dump() for m in messages]
    try:
        text: str = tokenizer.apply_chat_template(
            rows, add_generation_prompt=True, tokenize=False, chat_template=source
        )
    except Exception as exc:
        raise BadRequest(f"inputs[{index}]: the chat template rejected these messages: {exc}") from exc
    return text


def render(tokenizer: Any, prompt: Prompt, index: int, context_limit: int | None) -> list[int]:
    """The token ids of ``inputs[index]``; BadRequest when empty or too long for the context.
    Fast tokenizers are not thread-safe: the caller holds the tokenizer's lock."""
    if isinstance(prompt, str):
        ids: list[int] = tokenizer(prompt)["input_ids"]
        return _checked(ids, index, context_limit)
    prompt = [m if isinstance(m, ChatMessage) else ChatMessage.model_validate(m) for m in prompt]
    source = _template(tokenizer, any(m.role == "tool" for m in prompt))
    if source:
        ids = tokenizer(_chat_text(tokenizer, prompt, source, index), add_special_tokens=False)["input_ids"]
    else:
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        ids = bos + tokenizer(_fallback_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    return _checked(ids, index, context_limit)


def _checked(ids: list[int], index: int, context_limit: int | None) -> list[int]:
    if not ids:
        raise BadRequest(f"inputs[{index}] is empty after tokenisation", code="empty_prompt")
    if context_limit is not None and len(ids) >= context_limit:
        raise BadRequest(
            f"inputs[{index}] has {len(ids)} tokens; the model's context is {context_limit}",
            code="prompt_too_long",
        )
    return ids
