"""The engine's reader and loss mask for multi-turn chat, tool calls and text rows (scu.data)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from scu.data import (
    IGNORE,
    Conversation,
    DataError,
    Encoded,
    build_examples,
    encode_prompt,
    encode_rows,
    read_channel,
    template_supports_tools,
)

from tests.training.support import TOOLS_TEMPLATE

TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
CALL = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    from scu.modeling import load_tokenizer

    return load_tokenizer(str(tiny_model))


@pytest.fixture
def restore_template(tokenizer: Any) -> Any:
    original = tokenizer.chat_template
    yield tokenizer
    tokenizer.chat_template = original


def _multi() -> Conversation:
    return Conversation(
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "two plus two"},
            {"role": "assistant", "content": "five", "weight": 0},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "four"},
        ]
    )


def _loss_text(tokenizer: Any, enc: Encoded, block: int = 512) -> list[str]:
    [ex], _ = build_examples([enc], block, train_on_inputs=False)
    runs: list[list[int]] = []
    prev = False
    for tok, label in zip(ex.input_ids, ex.labels, strict=True):
        if label != IGNORE and not prev:
            runs.append([])
        if label != IGNORE:
            runs[-1].append(tok)
        prev = label != IGNORE
    return [tokenizer.decode(r) for r in runs]


def test_encoded_is_prompt_target_pair_with_a_mask(tokenizer: Any) -> None:
    [enc] = encode_rows(tokenizer, [_multi()])
    prompt, target = enc  # still unpacks as (prompt_ids, target_ids)
    assert tokenizer.decode(prompt) == "<s><|user|>\nhi</s>\n<|assistant|>\n"
    assert enc.mask is not None and len(enc.mask) == len(target) and enc.mask[0]
    assert _loss_text(tokenizer, enc) == ["hello</s>", "four</s>"]
    [ex], stats = build_examples([enc], 512, train_on_inputs=True)
    assert ex.labels == ex.input_ids and stats.loss_tokens == len(ex) - 1


def test_single_turn_rows_have_no_mask(tokenizer: Any) -> None:
    [enc] = encode_rows(
        tokenizer, [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "four"}]]
    )
    assert enc.mask is None and tokenizer.decode(enc[1]) == "four</s>"


def test_weight_zero_on_the_last_turn_masks_it(tokenizer: Any) -> None:
    row = _multi()
    row[1]["weight"], row[3]["weight"], row[5]["weight"] = 1, 1, 0
    [enc] = encode_rows(tokenizer, [row])
    assert _loss_text(tokenizer, enc) == ["hello</s>", "five</s>"]
    assert not enc.mask[-1]  # type: ignore[index]


def test_truncation_cuts_the_target_and_its_mask(tokenizer: Any) -> None:
    [enc] = encode_rows(tokenizer, [_multi()])
    prompt, target = enc
    [ex], stats = build_examples([enc], len(target) + 2, train_on_inputs=False)
    assert stats.target_truncated == 0 and stats.prompt_truncated == 1
    assert ex.input_ids == prompt[-2:] + target
    assert ex.labels[2:] == [t if m else IGNORE for t, m in zip(target, enc.mask, strict=True)]  # type: ignore[arg-type]
    [ex], stats = build_examples([enc], 8, train_on_inputs=False)
    assert stats.target_truncated == 1 and len(ex) == 8
    assert ex.labels[0] == IGNORE and ex.labels[1:] == [
        t if m else IGNORE
        for t, m in zip(target[:7], enc.mask[:7], strict=True)  # type: ignore[index]
    ]


def test_native_tools_template_gets_tools_and_parsed_arguments(tokenizer: Any, restore_template: Any) -> None:
    tokenizer.chat_template = TOOLS_TEMPLATE
    assert template_supports_tools(TOOLS_TEMPLATE) and not template_supports_tools("{{ messages }}")
    row = Conversation(
        [
            {"role": "user", "content": "1+2?"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "content": "3", "tool_call_id": "c1"},
            {"role": "assistant", "content": "3"},
        ],
        [TOOL],
    )
    [enc] = encode_rows(tokenizer, [row])
    assert tokenizer.decode(enc[0]) == "<s><|system|>\nadd;</s>\n<|user|>\n1+2?</s>\n<|assistant|>\n"
    assert _loss_text(tokenizer, enc) == ['<call>add {"a": 1, "b": 2}</call></s>', "3</s>"]
    assert tokenizer.decode(encode_prompt(tokenizer, row)) == (
        '<s><|system|>\nadd;</s>\n<|user|>\n1+2?</s>\n<|assistant|>\n<call>add {"a": 1, "b": 2}</call></s>\n'
        "<|tool|>\n3</s>\n<|assistant|>\n"
    )


def test_named_templates_prefer_tool_use_for_tool_rows(tokenizer: Any, restore_template: Any) -> None:
    tokenizer.chat_template = {"default": tokenizer.chat_template, "tool_use": TOOLS_TEMPLATE}
    row = Conversation(
        [{"role": "user", "content": "1+2?"}, {"role": "assistant", "content": None, "tool_calls": [CALL]}],
        [TOOL],
    )
    [enc] = encode_rows(tokenizer, [row])
    assert _loss_text(tokenizer, enc) == ['<call>add {"a": 1, "b": 2}</call></s>']
    [plain] = encode_rows(
        tokenizer, [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]
    )
    assert tokenizer.decode(plain[0]) == "<s><|user|>\nq</s>\n<|assistant|>\n"


def test_fallback_merges_consecutive_tool_results(tokenizer: Any) -> None:
    second = {**CALL, "id": "c2", "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'}}
    row = Conversation(
        [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "1+2 and 2+2?"},
            {"role": "assistant", "content": "Adding.", "tool_calls": [CALL, second]},
            {"role": "tool", "content": "3", "tool_call_id": "c1"},
            {"role": "tool", "content": "4", "tool_call_id": "c2"},
            {"role": "assistant", "content": "3 and 4"},
        ],
        [TOOL],
    )
    [enc] = encode_rows(tokenizer, [row])
    call = '<tool_call>\n{{"name": "add", "arguments": {{"a": {}, "b": 2}}}}\n</tool_call>'
    assert _loss_text(tokenizer, enc) == [f"Adding.\n{call.format(1)}\n{call.format(2)}</s>", "3 and 4</s>"]
    text = tokenizer.decode(enc[0] + enc[1])
    assert text.startswith("<s><|system|>\nUse tools.\n\n# Tools\n")
    assert f"<tools>\n{json.dumps(TOOL)}\n</tools></s>" in text
    assert "<|user|>\n<tool_response>\n3\n</tool_response>\n<tool_response>\n4\n</tool_response></s>" in text


def test_template_that_rewrites_history_is_refused(tokenizer: Any, restore_template: Any) -> None:
    # Renders only the last message: earlier turns are not a prefix of later renderings.
    tokenizer.chat_template = "{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}"
    with pytest.raises(DataError, match="renders earlier turns differently"):
        encode_rows(tokenizer, [_multi()])


def test_text_rows_and_encode_prompt_fallback(tokenizer: Any, restore_template: Any) -> None:
    [enc] = encode_rows(
        tokenizer, [Conversation([{"role": "assistant", "content": "plain words"}], text=True)]
    )
    assert enc[0] == [tokenizer.bos_token_id] and enc.mask is None
    assert tokenizer.decode(enc[1]) == "plain words</s>"
    tokenizer.chat_template = None
    assert tokenizer.decode(encode_prompt(tokenizer, _multi())) == (
        "<s>### User:\nhi\n\n### Assistant:\nhello</s>\n\n### User:\ntwo plus two\n\n### Assistant:\nfive</s>"
        "\n\n### User:\nagain\n\n### Assistant:\n"
    )


def test_reader_accepts_new_fields_and_rejects_bad_ones(tmp_path: Path) -> None:
    good = {
        "messages": [
            {"role": "user", "content": "1+2?", "name": "ann"},
            {"role": "assistant", "content": None, "tool_calls": [CALL], "weight": 0},
            {"role": "tool", "content": "3", "tool_call_id": "c1"},
            {"role": "assistant", "content": "3"},
        ],
        "tools": [TOOL],
        "label": None,
    }
    (tmp_path / "a.jsonl").write_text(
        json.dumps(good) + "\n" + json.dumps({"text": "doc", "label": None}) + "\n"
    )
    [chat, text] = read_channel(tmp_path)
    assert chat.tools == [TOOL] and chat[0]["name"] == "ann" and chat[1]["weight"] == 0 and not chat.is_text
    assert text.is_text and text == [{"role": "assistant", "content": "doc"}]
    bad_cases = [
        ({"role": "user", "content": "x", "weight": 0}, "weight must be 0 or 1, on an assistant message"),
        ({"role": "assistant", "content": "x", "weight": 2}, "weight must be 0 or 1"),
        (
            {"role": "user", "content": None, "tool_calls": [CALL]},
            "tool_calls must be a non-empty list on an assistant",
        ),
        ({"role": "assistant", "content": None}, r"messages\[0\] must be"),
        (
            {"role": "assistant", "content": None, "tool_calls": [{"function": {}}]},
            "need a function with a name",
        ),
    ]
    for message, match in bad_cases:
        (tmp_path / "a.jsonl").write_text(
            json.dumps({"messages": [message, {"role": "assistant", "content": "a"}]})
        )
        with pytest.raises(DataError, match=match):
            read_channel(tmp_path)
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": ""}))
    with pytest.raises(DataError, match="'text' must be a non-empty string"):
        read_channel(tmp_path)


def test_jobs_on_text_rows_and_on_tool_chats(tmp_path: Path, tiny_model: Path, tokenizer: Any) -> None:
    """The real entry: text rows are packed by default; tool chats train the call and the
    weight-1 replies only (the count of loss tokens per row is exact)."""
    from tests.training.support import run_entry, write_root

    docs = [
        {"text": f"Document {i}: the quick brown fox jumps over the lazy dog.", "label": None}
        for i in range(24)
    ]
    tool_chat = {
        "messages": [
            {"role": "user", "content": "1+2?"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "content": "3", "tool_call_id": "c1"},
            {"role": "assistant", "content": "3", "weight": 0},
            {"role": "user", "content": "thanks"},
            {"role": "assistant", "content": "You are welcome."},
        ],
        "tools": [TOOL],
        "label": None,
    }
    configs = []
    for name, rows in (("text", docs), ("tools", [tool_chat] * 8)):
        root = write_root(
            tmp_path / name, {"base_model": str(tiny_model), "max_steps": 2}, n_train=0, n_val=0
        )
        train = root / "input" / "data" / "train"
        train.mkdir(parents=True)
        (train / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        proc = run_entry(root)
        assert proc.returncode == 0, proc.stderr[-3000:]
        configs.append(json.loads((root / "model" / "fastuner_config.json").read_text()))
    text, tools = configs
    assert text["packing"] is True and "packing" in text["defaulted"]
    assert tools["packing"] is False
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call></s>'
    per_row = len(tokenizer(call, add_special_tokens=False)["input_ids"]) + len(
        tokenizer("You are welcome.</s>", add_special_tokens=False)["input_ids"]
    )
    stats = tools["data"]["train"]
    assert stats["loss_tokens"] == stats["rows"] * per_row and stats["rows"] == 7  # 1 of 8 held out
