"""The public entry point: process() results, written files, dry runs and clean-up."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.domain.datasets import DatasetOptions, ValidationLimits
from api.services.datasets.pipeline import PipelineResult, SplitOutput, process


def _options(**kw: Any) -> DatasetOptions:
    return DatasetOptions(name="t", limits=ValidationLimits(min_unique_rows=1), **kw)


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_split_outputs_describe_the_files(tmp_path: Path) -> None:
    src = _write(tmp_path / "d.jsonl", [{"input": f"q{i}", "target": f"a{i}"} for i in range(50)])
    out = tmp_path / "nested" / "out"  # created if missing
    res = process(src, _options(), out)
    assert isinstance(res, PipelineResult)
    assert set(res.splits) == {"train", "validation", "test"}
    for name, split in res.splits.items():
        assert isinstance(split, SplitOutput)
        data = split.path.read_bytes()
        assert split.path == out / f"{name}.jsonl"
        assert split.sha256 == hashlib.sha256(data).hexdigest()
        assert split.bytes == len(data)
        assert split.rows == data.count(b"\n") == res.report.split_counts[name]
    # no spool or partial files left behind
    assert sorted(p.name for p in out.iterdir()) == ["test.jsonl", "train.jsonl", "validation.jsonl"]
    json.loads(res.report.model_dump_json())  # the report serialises


def test_dry_run_and_real_run_agree(tmp_path: Path) -> None:
    src = _write(tmp_path / "d.jsonl", [{"input": f"q{i % 40}", "target": "a"} for i in range(60)])
    dry = process(src, _options())
    real = process(src, _options(), tmp_path / "out")
    assert dry.splits == {}
    assert dry.report == real.report
    assert real.report.duplicates_dropped == 20


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8)), min_size=1, max_size=40
    ),
    st.integers(0, 2**32 - 1),
)
def test_splits_partition_the_unique_rows(tmp_path: Path, pairs: list[tuple[str, str]], seed: int) -> None:
    pairs = [(a, b) for a, b in pairs if a.strip() and b.strip()]
    src = _write(tmp_path / "p.jsonl", [{"input": a, "target": b} for a, b in pairs])
    out = tmp_path / f"out{seed}"
    res = process(src, _options(seed=seed), out)
    unique = list(dict.fromkeys(pairs))
    if not unique:
        assert not res.report.ok and res.splits == {}
        return
    assert res.report.ok, res.report.errors
    assert res.report.unique_rows == len(unique)
    got: list[tuple[str, str]] = []
    for split in res.splits.values():
        for line in split.path.read_text(encoding="utf-8").split("\n")[:-1]:  # JSONL: \n only
            msgs = json.loads(line)["messages"]
            got.append((msgs[0]["content"], msgs[1]["content"]))
    assert sorted(got) == sorted(unique)  # each unique row exactly once across the splits
    assert "train" in res.splits
