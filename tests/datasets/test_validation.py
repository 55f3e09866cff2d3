"""Validation: every error and warning class, line numbers, limits, and no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.domain.datasets import DatasetOptions, ValidationLimits, ValidationReport
from api.domain.enums import DatasetFormat, TaskType
from api.services.datasets.pipeline import process


def _options(min_rows: int = 1, **kw: Any) -> DatasetOptions:
    limits = kw.pop("limits", {})
    return DatasetOptions(name="t", limits=ValidationLimits(min_unique_rows=min_rows, **limits), **kw)


def _report(tmp_path: Path, lines: list[str | bytes], **kw: Any) -> ValidationReport:
    src = tmp_path / "d.jsonl"
    src.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return process(src, _options(**kw)).report


def _j(obj: Any) -> str:
    return json.dumps(obj)


GOOD = _j({"input": "question", "target": "answer"})


def _codes(groups: list[Any]) -> dict[str, list[int]]:
    return {g.code: g.lines for g in groups}


def test_clean_file_is_ok(tmp_path: Path) -> None:
    report = _report(tmp_path, [GOOD, _j({"input": "q2", "target": "a2"})])
    assert report.ok
    assert report.errors == [] and report.warnings == []
    assert (report.total_lines, report.valid_rows, report.unique_rows) == (2, 2, 2)


def test_each_error_class_with_line_numbers(tmp_path: Path) -> None:
    lines: list[str | bytes] = [
        GOOD,  # 1
        "{not json",  # 2 invalid_json
        b'{"input": "caf\xe9", "target": "x"}',  # 3 invalid_utf8 (latin-1 byte)
        "[1, 2]",  # 4 not_object
        _j({"input": "only input"}),  # 5 missing_field
        _j({"input": 3, "target": "x"}),  # 6 wrong_type
        _j({"input": "   ", "target": "x"}),  # 7 empty_text
        _j({"input": "x" * 101, "target": "x"}),  # 8 input_too_long
        _j({"input": "x", "target": "y" * 51}),  # 9 target_too_long
        _j({"prompt": "p", "completion": "c"}),  # 10 format_mismatch
        _j({"input": "x", "target": "y", "label": 5}),  # 11 wrong_type (label)
        '{"input": "\\ud800", "target": "x"}',  # 12 lone surrogate -> invalid_utf8
        "",  # 13 blank_line (warning)
        GOOD,  # 14 duplicate (warning)
        _j({"input": "x" * 95, "target": "y"}),  # 15 near_limit (warning)
    ]
    report = _report(tmp_path, lines, limits={"max_input_chars": 100, "max_target_chars": 50})
    assert not report.ok
    assert _codes(report.errors) == {
        "invalid_utf8": [3, 12],
        "invalid_json": [2],
        "not_object": [4],
        "missing_field": [5],
        "format_mismatch": [10],
        "wrong_type": [6, 11],
        "empty_text": [7],
        "input_too_long": [8],
        "target_too_long": [9],
    }
    assert _codes(report.warnings) == {"blank_line": [13], "duplicate": [14], "near_limit": [15]}
    assert (report.total_lines, report.valid_rows, report.unique_rows, report.duplicates_dropped) == (
        15,
        3,
        2,
        1,
    )
    assert report.split_counts == {}
    for group in report.errors + report.warnings:
        assert group.count == len(group.lines)
        assert group.message


def test_chat_errors(tmp_path: Path) -> None:
    def chat(*msgs: Any) -> str:
        return _j({"messages": list(msgs)})

    u = {"role": "user", "content": "hi"}
    a = {"role": "assistant", "content": "hello"}
    lines: list[str | bytes] = [
        chat(u, a),  # 1 ok, detects chat
        chat(u, {"role": "robot", "content": "x"}, a),  # 2 invalid_role (tool is a role now)
        chat(u),  # 3 last not assistant
        chat({"role": "system", "content": "s"}, a),  # 4 no user message
        chat(),  # 5 empty messages
        _j({"messages": "hi"}),  # 6 wrong_type
        chat(u, "oops", a),  # 7 wrong_type
        chat(u, {"role": "assistant"}),  # 8 missing_field
        chat(u, {"role": "assistant", "content": ""}),  # 9 empty_text
        chat(u, {"role": "assistant", "content": ["parts"]}),  # 10 wrong_type
    ]
    report = _report(tmp_path, lines)
    assert report.format is DatasetFormat.CHAT
    assert _codes(report.errors) == {
        "invalid_role": [2],
        "invalid_conversation": [3, 4, 5],
        "wrong_type": [6, 7, 10],
        "missing_field": [8],
        "empty_text": [9],
    }


def test_too_few_rows_counts_unique_rows(tmp_path: Path) -> None:
    report = _report(tmp_path, [GOOD, GOOD, GOOD], min_rows=2)
    assert not report.ok
    assert [g.code for g in report.errors] == ["too_few_rows"]
    assert report.errors[0].count == 1 and report.errors[0].lines == []
    assert report.unique_rows == 1 and report.duplicates_dropped == 2


def test_empty_file(tmp_path: Path) -> None:
    report = _report(tmp_path, [])
    assert not report.ok
    assert report.format is None and report.total_lines == 0
    assert [g.code for g in report.errors] == ["too_few_rows"]
    assert report.char_length is None and report.content_sha256 is None


def test_missing_label_for_classification(tmp_path: Path) -> None:
    lines: list[str | bytes] = [
        _j({"input": "a", "target": "b", "label": "pos"}),
        _j({"input": "c", "target": "d"}),  # 2: the file carries labels, this row has none
        _j({"input": "e", "target": "f", "label": None}),  # 3
        _j({"input": "g", "target": "h", "label": "  "}),  # 4 blank label -> empty_text
    ]
    report = _report(tmp_path, lines, task_type=TaskType.CLASSIFICATION)
    assert _codes(report.errors) == {"missing_label": [2, 3], "empty_text": [4]}
    # Not classification: a row without a label is fine.
    assert _report(tmp_path, lines[:3]).ok


def test_blank_lines_and_crlf_and_bom(tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    src.write_bytes(
        b"\xef\xbb\xbf" + GOOD.encode() + b"\r\n\r\n   \n" + _j({"input": "q", "target": "a"}).encode()
    )
    report = process(src, _options()).report
    assert report.ok
    assert report.total_lines == 4
    assert _codes(report.warnings) == {"blank_line": [2, 3]}
    assert report.valid_rows == 2


def test_max_errors_shown_caps_lines_not_count(tmp_path: Path) -> None:
    report = _report(tmp_path, ["nope"] * 30 + [GOOD], limits={"max_errors_shown": 5})
    (group,) = report.errors
    assert group.code == "invalid_json" and group.count == 30 and group.lines == [1, 2, 3, 4, 5]


def test_overlong_line_is_skipped_without_parsing(tmp_path: Path) -> None:
    # Longer than a read block (4 MiB) and than any row within the limits could be.
    huge = _j({"input": "x" * 5_000_000, "target": "y"})
    report = _report(tmp_path, [GOOD, huge, GOOD.replace("question", "q2")], limits={"max_input_chars": 10})
    assert _codes(report.errors) == {"line_too_long": [2]}
    assert report.total_lines == 3 and report.valid_rows == 2


def test_trailing_data_and_whitespace(tmp_path: Path) -> None:
    lines: list[str | bytes] = [
        "  " + GOOD + " \t ",
        GOOD.replace("question", "q2") + " x",
        GOOD.replace("question", "q3") + "\x0b",  # not JSON whitespace
    ]
    report = _report(tmp_path, lines)
    assert _codes(report.errors) == {"invalid_json": [2, 3]}
    assert report.valid_rows == 1


def test_stats_and_token_estimate(tmp_path: Path) -> None:
    lines: list[str | bytes] = [_j({"input": "a" * n, "target": "bbbb"}) for n in (4, 8, 12, 16)]
    report = _report(tmp_path, lines)
    assert report.char_length is not None and report.token_length is not None
    assert report.char_length.model_dump() == {"min": 8, "max": 20, "mean": 14.0, "p50": 12, "p95": 20}
    # 1 token per 4 ASCII chars, per message, rounded up.
    assert (report.token_length.min, report.token_length.max) == (2, 5)
    cjk = _report(tmp_path, [_j({"input": "日本語", "target": "はい"})])
    assert cjk.token_length is not None and cjk.token_length.max == 5


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=60), max_size=8))
def test_arbitrary_bytes_never_raise(tmp_path: Path, lines: list[bytes]) -> None:
    src = tmp_path / "fuzz.jsonl"
    src.write_bytes(b"\n".join(lines))
    report = process(src, _options()).report
    total = sum(g.count for g in report.errors if g.code != "too_few_rows")
    blank = sum(g.count for g in report.warnings if g.code == "blank_line")
    assert total + blank + report.valid_rows == report.total_lines


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["input", "target", "label", "messages", "prompt", "x"]),
            st.one_of(
                st.none(), st.integers(), st.text(max_size=5), st.lists(st.text(max_size=3), max_size=2)
            ),
            max_size=4,
        ),
        max_size=6,
    )
)
def test_arbitrary_objects_never_raise(tmp_path: Path, rows: list[dict[str, Any]]) -> None:
    src = tmp_path / "fuzz.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report = process(src, _options(task_type=TaskType.CLASSIFICATION)).report
    assert report.valid_rows + sum(g.count for g in report.errors if g.code != "too_few_rows") == len(rows)
