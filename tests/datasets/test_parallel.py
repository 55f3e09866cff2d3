"""Scanning in parts (worker processes) gives exactly the sequential result."""

from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.domain.datasets import DatasetOptions, ValidationLimits
from api.domain.enums import DatasetFormat, TaskType
from api.services.datasets.parallel import PartJob, part_count, plan_ranges, scan_part
from api.services.datasets.pipeline import PipelineResult, run
from api.services.datasets.validate import ScanResult


def _options(**kw: Any) -> DatasetOptions:
    return DatasetOptions(name="t", limits=ValidationLimits(min_unique_rows=1, max_errors_shown=3), **kw)


def _in_process(jobs: list[PartJob]) -> Iterable[ScanResult]:
    return [scan_part(job) for job in jobs]


def _same(a: PipelineResult, b: PipelineResult) -> None:
    assert a.report == b.report
    assert {k: (v.rows, v.sha256, v.bytes) for k, v in a.splits.items()} == {
        k: (v.rows, v.sha256, v.bytes) for k, v in b.splits.items()
    }


LINES = [
    json.dumps({"input": "q1", "target": "a1"}),
    json.dumps({"input": "q2", "target": "a2", "label": "x"}),
    json.dumps({"input": "q3", "target": "a3", "label": "y"}),
    json.dumps({"prompt": "p", "completion": "c"}),
    json.dumps({"prompt": "p2", "completion": "c2", "label": "y"}),
    json.dumps({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}),
    json.dumps({"input": "x" * 50, "target": "t"}),
    json.dumps({"input": "é\\n", "target": "t\\u0041"}),
    json.dumps({"foo": 1}),
    "[1]",
    "{bad",
    "",
    "   ",
    json.dumps({"input": "", "target": "t"}),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.sampled_from(LINES), min_size=1, max_size=30),
    st.integers(2, 5),
    st.sampled_from([TaskType.GENERATION, TaskType.CLASSIFICATION]),
    st.booleans(),
    st.sampled_from([None, DatasetFormat.INPUT_TARGET]),
)
def test_parts_match_sequential(
    tmp_path: Path, lines: list[str], parts: int, task: TaskType, crlf: bool, fmt: DatasetFormat | None
) -> None:
    src = tmp_path / "d.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + ("\r\n" if crlf else "\n").join(lines).encode())
    options = _options(task_type=task, format=fmt)
    seq = run(src, options, tmp_path / "seq")
    par = run(src, options, tmp_path / "par", parts=parts, run_rest=_in_process)
    _same(seq, par)
    dry = run(src, options, None, parts=parts, run_rest=_in_process)
    assert dry.report == seq.report and dry.splits == {}


def test_later_part_detecting_another_format_is_rescanned(tmp_path: Path) -> None:
    rows = [{"input": f"q{i}", "target": "a"} for i in range(10)]
    rows += [{"prompt": f"p{i}", "completion": "c"} for i in range(10)]
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    seq = run(src, _options(), None)
    par = run(src, _options(), None, parts=2, run_rest=_in_process)
    assert seq.report.format is DatasetFormat.INPUT_TARGET
    assert [g.code for g in seq.report.errors] == ["format_mismatch"]
    _same(seq, par)


def test_worker_subprocesses(tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    rows = [{"input": f"q{i % 150}", "target": "a", "label": "ab"[i % 2]} for i in range(300)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    options = _options(task_type=TaskType.CLASSIFICATION)
    seq = run(src, options, tmp_path / "seq")
    par = run(src, options, tmp_path / "par", parts=3)  # real worker processes
    _same(seq, par)
    assert sorted(p.name for p in (tmp_path / "par").iterdir()) == [
        "test.jsonl",
        "train.jsonl",
        "validation.jsonl",
    ]


def test_plan_ranges_cover_the_file_at_line_starts(tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    data = b"".join(b"x" * (i % 7) + b"\n" for i in range(100)) + b"tail"
    src.write_bytes(data)
    for parts in range(1, 8):
        ranges = plan_ranges(src, parts)
        assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
        for (_, end), (start, _) in pairwise(ranges):
            assert end == start and data[start - 1 : start] == b"\n"
    assert part_count(10) == 1
    assert part_count(1 << 30, cpus=8) == 4 and part_count(1 << 30, cpus=4) == 3
    assert part_count(1 << 30, cpus=2) == 1 and part_count(10, cpus=8) == 1
