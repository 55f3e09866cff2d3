from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from scu.data import (
    IGNORE,
    DataError,
    build_examples,
    collate,
    encode_rows,
    pack,
    rank_batches,
    read_channel,
    split_holdout,
)

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "four"},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    from scu.modeling import load_tokenizer

    return load_tokenizer(str(tiny_model))


def test_chat_template_prompt_and_masked_target(tokenizer: Any) -> None:
    [(prompt, target)] = encode_rows(tokenizer, [CHAT])
    rendered = tokenizer.apply_chat_template(CHAT[:-1], add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(prompt) == rendered
    assert target[-1] == tokenizer.eos_token_id and tokenizer.decode(target[:-1]) == "four"
    [ex], stats = build_examples([(prompt, target)], 512, train_on_inputs=False)
    assert ex.labels == [IGNORE] * len(prompt) + target
    assert stats.loss_tokens == len(target)
    [ex2], _ = build_examples([(prompt, target)], 512, train_on_inputs=True)
    assert ex2.labels == ex2.input_ids


def test_fallback_format_without_template(tokenizer: Any) -> None:
    template = tokenizer.chat_template
    tokenizer.chat_template = None
    try:
        [(prompt, _)] = encode_rows(tokenizer, [CHAT])
    finally:
        tokenizer.chat_template = template
    text = tokenizer.decode(prompt[1:])
    assert prompt[0] == tokenizer.bos_token_id
    assert text == "### System:\nBe brief.\n\n### User:\nWhat is two plus two?\n\n### Assistant:\n"


def test_truncation_keeps_rows_and_targets() -> None:
    encoded = [(list(range(100, 150)), [1, 2, 3]), (list(range(10)), list(range(200, 240))), ([5], [6])]
    examples, stats = build_examples(encoded, 16, train_on_inputs=False)
    assert len(examples) == 3  # never dropped
    assert all(len(ex) <= 16 for ex in examples)
    assert examples[0].input_ids[-3:] == [1, 2, 3] and examples[0].input_ids[0] == 137  # prompt cut from left
    assert examples[1].input_ids[0] == 9 and examples[1].input_ids[1:] == list(range(200, 215))
    assert stats.prompt_truncated == 1 and stats.target_truncated == 1


def test_pack_and_collate() -> None:
    encoded = [([1, 2], [3, 4]), ([5], [6, 7, 8]), ([9], [10])]
    examples, _ = build_examples(encoded, 64, train_on_inputs=False)
    packed = pack(examples, 3)
    assert [len(p) for p in packed] == [3, 3, 3, 1]
    assert sum(len(p) for p in packed) == sum(len(e) for e in examples)
    batch = collate(examples, pad_id=0)
    assert batch["input_ids"].shape == (3, 4)
    assert batch["attention_mask"].sum().item() == 10
    assert batch["labels"][2].tolist() == [IGNORE, 10, IGNORE, IGNORE]


def test_rank_batches_cover_data_and_are_reproducible() -> None:
    single = rank_batches(10, 3, seed=1, epoch=0)
    assert sorted(i for b in single for i in b) == list(range(10))
    assert single == rank_batches(10, 3, seed=1, epoch=0) and single != rank_batches(10, 3, seed=1, epoch=1)
    r0, r1 = rank_batches(11, 2, 1, 0, 0, 2), rank_batches(11, 2, 1, 0, 1, 2)
    assert len(r0) == len(r1)
    assert {i for b in r0 + r1 for i in b} == set(range(11))


def test_read_channel_validates_with_line_numbers(tmp_path: Path) -> None:
    (tmp_path / "b.jsonl").write_text(json.dumps({"messages": CHAT, "label": "x", "extra": 1}) + "\n\n")
    (tmp_path / "a.jsonl").write_text(json.dumps({"messages": CHAT[:1] + CHAT[2:]}) + "\n")
    assert len(read_channel(tmp_path)) == 2
    (tmp_path / "c.jsonl").write_text(json.dumps({"messages": CHAT[:2]}) + "\n")
    with pytest.raises(DataError, match=r"c\.jsonl line 1: the last message must be the assistant"):
        read_channel(tmp_path)
    (tmp_path / "c.jsonl").write_text("{oops\n")
    with pytest.raises(DataError, match=r"c\.jsonl line 1: not valid JSON"):
        read_channel(tmp_path)
    assert read_channel(tmp_path / "missing") == []


def test_split_holdout() -> None:
    rows = [[{"role": "assistant", "content": str(i)}] for i in range(40)]
    train, val = split_holdout(rows, 0.1, seed=3)
    assert len(val) == 4 and len(train) == 36 and split_holdout(rows, 0.1, seed=3) == (train, val)
