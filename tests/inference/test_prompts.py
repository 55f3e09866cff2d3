"""loraserve renders a conversation exactly as the training engine renders the prompt of the reply it
trains (``scu.data.encode_prompt``): through the chat template, and without one through the
engine's fallback format. A mismatch means an adapter is served a prompt format it never saw."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.inference.support import Store

pytest.importorskip("transformers")

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Shout this: amber lotus"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}],
    [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "ONE"},
        {"role": "user", "content": "two"},
    ],
    [
        {"role": "user", "content": "What is 6*7?"},
        {"role": "assistant", "content": "Let me compute."},
        {"role": "tool", "content": "42"},
        {"role": "tool", "content": "(checked)"},
    ],
]


@pytest.fixture(scope="module")
def tokenizer(store: Store) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(store.base)


def _both(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    from loraserve.prompts import render
    from loraserve.schemas import ChatMessage
    from scu.data import encode_prompt

    trained = encode_prompt(tokenizer, [*messages, {"role": "assistant", "content": "reply"}])
    served = render(tokenizer, [ChatMessage(**m) for m in messages], 0, None)
    return trained, served


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_chat_template_prompts_match_training(tokenizer: Any, index: int) -> None:
    trained, served = _both(tokenizer, CONVERSATIONS[index])
    assert served == trained


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_fallback_prompts_match_training(tokenizer: Any, index: int) -> None:
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    trained, served = _both(plain, CONVERSATIONS[index])
    assert served == trained
    text = plain.decode(served)
    assert text.endswith("### Assistant:\n") and "### User:\n" in text
    if index == 3:
        assert "### User:\n<tool_response>\n42\n</tool_response>\n<tool_response>\n(checked)" in text


def test_plain_text_is_tokenised_as_it_is(tokenizer: Any) -> None:
    from loraserve.prompts import render

    assert render(tokenizer, "Shout this: amber", 0, None) == tokenizer("Shout this: amber")["input_ids"]


def test_named_templates_use_tool_use_for_tool_turns_as_training_does(tokenizer: Any) -> None:
    named = copy.deepcopy(tokenizer)
    plain = tokenizer.chat_template
    named.chat_template = {
        "default": plain,
        "tool_use": plain.replace("<|{{ m['role'] }}|>", "<|T:{{ m['role'] }}|>"),
    }
    for messages in CONVERSATIONS:
        trained, served = _both(named, messages)
        assert served == trained
    with_tools = named.decode(_both(named, CONVERSATIONS[3])[1])
    assert "T:" in with_tools and "T:" not in named.decode(_both(named, CONVERSATIONS[0])[1])
