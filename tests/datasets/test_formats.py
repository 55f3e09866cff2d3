"""Formats: auto-detection, forcing, and normalisation to the training-record shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from api.domain.datasets import DatasetOptions, ValidationLimits
from api.domain.enums import DatasetFormat, TaskType
from api.services.datasets.formats import NORMALISERS, SPECS, detect_format
from api.services.datasets.pipeline import process


def _options(**kw: Any) -> DatasetOptions:
    return DatasetOptions(name="t", limits=ValidationLimits(min_unique_rows=1), **kw)


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _records(out: Path) -> list[dict[str, Any]]:
    recs: list[dict[str, Any]] = []
    for name in ("train", "validation", "test"):
        p = out / f"{name}.jsonl"
        if p.exists():
            recs.extend(json.loads(line) for line in p.read_text(encoding="utf-8").splitlines())
    return recs


SAMPLES: dict[DatasetFormat, tuple[dict[str, Any], list[dict[str, str]]]] = {
    DatasetFormat.INPUT_TARGET: (
        {"input": "What is 2+2?", "target": "4"},
        [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
    ),
    DatasetFormat.PROMPT_COMPLETION: (
        {"prompt": "Say hi", "completion": "hi"},
        [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
    ),
    DatasetFormat.INSTRUCTION: (
        {"instruction": "Translate to French", "input": "cat", "output": "chat"},
        [{"role": "user", "content": "Translate to French\n\ncat"}, {"role": "assistant", "content": "chat"}],
    ),
    DatasetFormat.CHAT: (
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi."},
            ]
        },
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi."},
        ],
    ),
}


SAMPLES[DatasetFormat.SHAREGPT] = (
    {"conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi."}]},
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi."}],
)


@pytest.mark.parametrize("fmt", [f for f in DatasetFormat if f is not DatasetFormat.TEXT])
@pytest.mark.parametrize("forced", [False, True])
def test_each_format_normalises(tmp_path: Path, fmt: DatasetFormat, forced: bool) -> None:
    row, messages = SAMPLES[fmt]
    src = _write(tmp_path / "d.jsonl", [row])
    res = process(src, _options(format=fmt if forced else None), tmp_path / "out")
    assert res.report.ok, res.report.errors
    assert res.report.format is fmt
    assert _records(tmp_path / "out") == [{"messages": messages, "label": None}]


@pytest.mark.parametrize("forced", [False, True])
def test_text_format_normalises(tmp_path: Path, forced: bool) -> None:
    src = _write(tmp_path / "d.jsonl", [{"text": "Once upon a time.", "meta": 1}])
    res = process(src, _options(format=DatasetFormat.TEXT if forced else None), tmp_path / "out")
    assert res.report.ok, res.report.errors
    assert res.report.format is DatasetFormat.TEXT
    assert _records(tmp_path / "out") == [{"text": "Once upon a time.", "label": None}]


def test_records_are_compact_json_lines(tmp_path: Path) -> None:
    src = _write(tmp_path / "d.jsonl", [{"input": 'say "é"\n', "target": "ok", "label": "x"}])
    res = process(src, _options(), tmp_path / "out")
    raw = res.splits["train"].path.read_bytes()
    expected = json.dumps(
        {
            "messages": [{"role": "user", "content": 'say "é"\n'}, {"role": "assistant", "content": "ok"}],
            "label": "x",
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    assert raw == expected.encode() + b"\n"


def test_instruction_without_or_blank_input(tmp_path: Path) -> None:
    rows = [
        {"instruction": "A", "output": "1"},
        {"instruction": "B", "input": "", "output": "2"},
        {"instruction": "C", "input": None, "output": "3"},
    ]
    src = _write(tmp_path / "d.jsonl", rows)
    res = process(src, _options(split={"train": 1.0, "validation": 0.0, "test": 0.0}), tmp_path / "out")
    assert res.report.ok
    users = [r["messages"][0]["content"] for r in _records(tmp_path / "out")]
    assert users == ["A", "B", "C"]


def test_detection_order_prefers_instruction_over_input_target() -> None:
    assert detect_format({"instruction": "x", "input": "y", "output": "z"}) is DatasetFormat.INSTRUCTION
    assert detect_format({"input": "y", "target": "z"}) is DatasetFormat.INPUT_TARGET
    assert detect_format({"messages": []}) is DatasetFormat.CHAT
    assert detect_format({"prompt": "p", "completion": "c"}) is DatasetFormat.PROMPT_COMPLETION
    assert detect_format({"input": "only"}) is None


def test_detection_uses_first_valid_object(tmp_path: Path) -> None:
    rows: list[Any] = [
        [1, 2],
        {"foo": "bar"},
        {"prompt": "p", "completion": "c"},
        {"input": "i", "target": "t"},
    ]
    src = _write(tmp_path / "d.jsonl", rows)
    report = process(src, _options()).report
    assert report.format is DatasetFormat.PROMPT_COMPLETION
    codes = {g.code: g.lines for g in report.errors}
    assert codes == {"not_object": [1], "missing_field": [2], "format_mismatch": [4]}


def test_forced_format_reports_other_formats_as_mismatch(tmp_path: Path) -> None:
    src = _write(tmp_path / "d.jsonl", [{"input": "i", "target": "t"}])
    report = process(src, _options(format=DatasetFormat.CHAT)).report
    assert not report.ok
    assert [g.code for g in report.errors] == ["format_mismatch", "too_few_rows"]


def test_label_is_kept_and_classification_defaults_to_target(tmp_path: Path) -> None:
    src = _write(tmp_path / "d.jsonl", [{"input": "good film", "target": "positive"}])
    res = process(src, _options(task_type=TaskType.CLASSIFICATION), tmp_path / "out")
    assert res.report.ok
    assert _records(tmp_path / "out")[0]["label"] == "positive"
    src2 = _write(tmp_path / "e.jsonl", [{"input": "good film", "target": "I liked it", "label": " pos "}])
    process(src2, _options(), tmp_path / "out2")
    assert _records(tmp_path / "out2")[0]["label"] == "pos"


def test_every_dataset_format_is_registered_once() -> None:
    """The registry is the one place a format is added: each DatasetFormat has one spec."""
    assert [spec.format for spec in SPECS] == list(dict.fromkeys(spec.format for spec in SPECS))
    assert {spec.format for spec in SPECS} == set(DatasetFormat)
    assert set(NORMALISERS) == set(DatasetFormat)
