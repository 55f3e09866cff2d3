"""Dedup: canonical, field-separated record digests; first occurrence wins; content hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from api.domain.datasets import DatasetOptions, ValidationLimits
from api.services.datasets.dedup import _first_occurrences_exact, first_occurrences
from api.services.datasets.pipeline import process
from api.services.datasets.records import encode_pair_unescaped, encode_record


def _options(**kw: Any) -> DatasetOptions:
    return DatasetOptions(
        name="t",
        limits=ValidationLimits(min_unique_rows=1),
        split={"train": 1.0, "validation": 0.0, "test": 0.0},
        **kw,
    )


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_field_separation(tmp_path: Path) -> None:
    rows = [{"input": "ab", "target": "c"}, {"input": "a", "target": "bc"}]
    report = process(_write(tmp_path / "d.jsonl", rows), _options()).report
    assert report.unique_rows == 2 and report.duplicates_dropped == 0


def test_roles_and_label_are_part_of_the_record(tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {
            "messages": [
                {"role": "system", "content": "x"},
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": "y"},
            ]
        },
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "label": "l"},
    ]
    report = process(_write(tmp_path / "d.jsonl", rows), _options()).report
    assert report.unique_rows == 3


def test_duplicates_dropped_keep_first_occurrence(tmp_path: Path) -> None:
    rows = [
        {"input": "q1", "target": "a1"},
        {"input": "q2", "target": "a2"},
        {"input": "q1", "target": "a1", "extra": "ignored"},  # same normalised record
        {"target": "a2", "input": "q2"},  # key order does not matter
        {"input": "q3", "target": "a3"},
    ]
    out = tmp_path / "out"
    res = process(_write(tmp_path / "d.jsonl", rows), _options(), out)
    assert res.report.duplicates_dropped == 2
    (dup,) = [g for g in res.report.warnings if g.code == "duplicate"]
    assert dup.lines == [3, 4] and dup.count == 2
    users = [json.loads(x)["messages"][0]["content"] for x in (out / "train.jsonl").read_text().splitlines()]
    assert users == ["q1", "q2", "q3"]


def test_escaped_and_raw_text_are_the_same_record(tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    # "A\u00e9" written with escapes, then raw; the fast path (no backslash) and the escaping
    # path must produce the same canonical bytes.
    src.write_text(
        '{"input": "\\u0041\\u00e9", "target": "b"}\n{"input": "Aé", "target": "b"}\n', encoding="utf-8"
    )
    report = process(src, _options()).report
    assert report.unique_rows == 1 and report.duplicates_dropped == 1


safe_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters='"\\'),
    min_size=1,
    max_size=20,
).filter(lambda s: all(ord(c) >= 0x20 for c in s))


@settings(max_examples=80, deadline=None)
@given(safe_text, safe_text, st.one_of(st.none(), safe_text))
def test_fast_pair_encoding_matches_reference(user: str, assistant: str, label: str | None) -> None:
    assert encode_pair_unescaped(user, assistant, label) == encode_record(
        [("user", user), ("assistant", assistant)], label
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), safe_text), min_size=1, max_size=4),
    st.one_of(st.none(), safe_text),
)
def test_unescaped_encoding_matches_reference(messages: list[tuple[str, str]], label: str | None) -> None:
    assert encode_record(messages, label, escape=False) == encode_record(messages, label)


def test_escaped_and_raw_chat_are_the_same_record(tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    raw = '{"messages": [{"role": "user", "content": "Aé"}, {"role": "assistant", "content": "b"}]}'
    esc = (
        '{"messages": [{"role": "user", "content": "\\u0041\\u00e9"}, {"role": "assistant", "content": "b"}]}'
    )
    src.write_text(raw + "\n" + esc + "\n", encoding="utf-8")
    report = process(src, _options()).report
    assert report.unique_rows == 1 and report.duplicates_dropped == 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=6), min_size=1, max_size=4), st.one_of(st.none(), st.text(max_size=4)))
def test_encoding_round_trips_as_json(parts: list[str], label: str | None) -> None:
    messages = [("user", p) for p in parts[:-1]] + [("assistant", parts[-1])]
    decoded = json.loads(encode_record(messages, label))
    assert decoded == {"messages": [{"role": r, "content": c} for r, c in messages], "label": label}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 15), max_size=60), st.booleans())
def test_first_occurrences_matches_python(keys: list[int], prefix_collision: bool) -> None:
    # Build 16-byte digests from small ints; optionally make every first word equal to force
    # the exact 128-bit path.
    words = np.array([[0 if prefix_collision else k, k * 7 + 1] for k in keys], dtype="<u8").reshape(-1, 2)
    got = first_occurrences(words.tobytes())
    seen: set[int] = set()
    want = []
    for k in keys:
        want.append(k not in seen)
        seen.add(k)
    assert got.tolist() == want
    assert _first_occurrences_exact(words).tolist() == want


def test_content_sha256_is_defined_and_stable(tmp_path: Path) -> None:
    rows = [{"input": "q1", "target": "a1"}, {"input": "q2", "target": "a2"}, {"input": "q1", "target": "a1"}]
    a = process(_write(tmp_path / "a.jsonl", rows), _options()).report
    b = process(_write(tmp_path / "b.jsonl", rows[:2]), _options(seed=7)).report
    c = process(_write(tmp_path / "c.jsonl", rows[1::-1]), _options()).report
    assert a.content_sha256 == b.content_sha256  # same unique content, seed does not matter
    assert a.content_sha256 != c.content_sha256  # order matters
    digests = b"".join(
        hashlib.sha256(encode_record([("user", q), ("assistant", t)], None).encode()).digest()[:16]
        for q, t in (("q1", "a1"), ("q2", "a2"))
    )
    assert a.content_sha256 == hashlib.sha256(b"fastuner-dataset-v1\n" + digests).hexdigest()
