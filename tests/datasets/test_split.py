"""Split: seeded and byte-reproducible, exact counts, stratified, disjoint, file order kept."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from api.domain.datasets import DatasetOptions, SplitRatios, ValidationLimits
from api.domain.enums import TaskType
from api.services.datasets.pipeline import process
from api.services.datasets.split import assign_splits, split_counts, stratified_counts


def _options(**kw: Any) -> DatasetOptions:
    return DatasetOptions(name="t", limits=ValidationLimits(min_unique_rows=1), **kw)


def _write(path: Path, n: int, labels: list[str] | None = None) -> Path:
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"input": f"question {i}", "target": f"answer {i}"}
        if labels is not None:
            row["label"] = labels[i % len(labels)]
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_byte_identical_across_runs_and_seed_changes_it(tmp_path: Path) -> None:
    src = _write(tmp_path / "d.jsonl", 200)
    a = process(src, _options(seed=1), tmp_path / "a")
    b = process(src, _options(seed=1), tmp_path / "b")
    c = process(src, _options(seed=2), tmp_path / "c")
    for name in ("train", "validation", "test"):
        assert a.splits[name].path.read_bytes() == b.splits[name].path.read_bytes()
        assert a.splits[name].sha256 == b.splits[name].sha256
    assert a.splits["train"].sha256 != c.splits["train"].sha256
    assert a.report.content_sha256 == c.report.content_sha256


def test_outputs_disjoint_complete_in_file_order(tmp_path: Path) -> None:
    src = _write(tmp_path / "d.jsonl", 101)
    res = process(src, _options(seed=3), tmp_path / "out")
    assert res.report.split_counts == {"train": 81, "validation": 10, "test": 10}
    seen: list[int] = []
    for name, out in res.splits.items():
        recs = _read(out.path)
        assert out.rows == len(recs) == res.report.split_counts[name]
        assert out.bytes == out.path.stat().st_size
        ids = [int(r["messages"][0]["content"].split()[1]) for r in recs]
        assert ids == sorted(ids)  # file order within a split
        seen.extend(ids)
    assert sorted(seen) == list(range(101))  # every row once, no overlap
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "test.jsonl",
        "train.jsonl",
        "validation.jsonl",
    ]


def test_exact_counts_largest_remainder() -> None:
    assert split_counts(10, SplitRatios()) == (8, 1, 1)
    assert split_counts(7, SplitRatios(train=0.5, validation=0.25, test=0.25)) == (3, 2, 2)
    assert split_counts(10, SplitRatios(train=0.45, validation=0.45, test=0.1)) == (5, 4, 1)  # tie: earlier
    assert split_counts(3, SplitRatios()) == (1, 1, 1)  # eval splits get one row when possible
    assert split_counts(2, SplitRatios()) == (1, 1, 0)  # not enough rows for both
    assert split_counts(1, SplitRatios()) == (1, 0, 0)
    assert split_counts(5, SplitRatios(train=0.9, validation=0.1, test=0.0)) == (4, 1, 0)
    assert split_counts(5, SplitRatios(train=1.0, validation=0.0, test=0.0)) == (5, 0, 0)


@settings(max_examples=120, deadline=None)
@given(
    st.integers(0, 5000),
    st.floats(0.05, 1.0),
    st.floats(0.0, 1.0),
)
def test_split_counts_properties(n: int, train: float, share: float) -> None:
    rest = 1.0 - train
    ratios = SplitRatios(train=train, validation=rest * share, test=rest - rest * share)
    counts = split_counts(n, ratios)
    assert sum(counts) == n and min(counts) >= 0
    if n:
        assert counts[0] >= 1
    for c, r in zip(counts, ratios.as_tuple(), strict=True):
        assert abs(c - n * r) < 2  # within one row of the exact share (+1 for the minimum rule)
    needed = 1 + sum(1 for r in ratios.as_tuple()[1:] if r > 0)
    if n >= needed + 2:
        assert all(c >= 1 for c, r in zip(counts, ratios.as_tuple(), strict=True) if r > 0)


def test_stratified_by_label(tmp_path: Path) -> None:
    labels = ["a"] * 6 + ["b"] * 3 + ["c"]  # 60% / 30% / 10%
    src = _write(tmp_path / "d.jsonl", 500, labels)
    res = process(src, _options(task_type=TaskType.CLASSIFICATION, seed=11), tmp_path / "out")
    r = res.report
    assert r.ok and r.label_distribution is not None
    assert r.split_counts == {"train": 400, "validation": 50, "test": 50}
    assert r.label_distribution == {
        "train": {"a": 240, "b": 120, "c": 40},
        "validation": {"a": 30, "b": 15, "c": 5},
        "test": {"a": 30, "b": 15, "c": 5},
    }
    for name, out in res.splits.items():
        assert dict(Counter(x["label"] for x in _read(out.path))) == r.label_distribution[name]


def test_stratified_uneven_labels_keep_exact_totals(tmp_path: Path) -> None:
    labels = ["x"] * 7 + ["y"] * 2 + ["z"]
    src = _write(tmp_path / "d.jsonl", 37, labels)
    r = process(src, _options(task_type=TaskType.CLASSIFICATION)).report
    assert r.label_distribution is not None
    assert r.split_counts == {"train": 29, "validation": 4, "test": 4}
    for name, want in r.split_counts.items():
        assert sum(r.label_distribution[name].values()) == want
    totals = Counter(labels[i % len(labels)] for i in range(37))
    for label, total in totals.items():
        assert sum(r.label_distribution[s].get(label, 0) for s in r.split_counts) == total
        # every label within one row of its proportional share in each split
        for s, n in r.split_counts.items():
            assert abs(r.label_distribution[s].get(label, 0) - total * n / 37) < 1.0 + 1e-9


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=8), st.integers(0, 2**32 - 1))
def test_stratified_counts_margins(sizes: list[int], seed: int) -> None:
    totals = split_counts(sum(sizes), SplitRatios(train=0.7, validation=0.2, test=0.1))
    per = stratified_counts(sizes, totals)
    assert [sum(c) for c in per] == sizes
    assert tuple(sum(c[s] for c in per) for s in range(3)) == totals
    groups = np.repeat(np.arange(len(sizes)), sizes).astype(np.intp)
    codes, got_totals = assign_splits(
        int(groups.size), SplitRatios(train=0.7, validation=0.2, test=0.1), seed, groups
    )
    assert got_totals == totals
    assert np.bincount(codes, minlength=3).tolist() == list(totals)


def test_dry_run_fills_counts_and_writes_nothing(tmp_path: Path) -> None:
    src = _write(tmp_path / "d.jsonl", 20)
    before = sorted(tmp_path.iterdir())
    res = process(src, _options())
    assert res.splits == {}
    assert res.report.ok and res.report.split_counts == {"train": 16, "validation": 2, "test": 2}
    assert sorted(tmp_path.iterdir()) == before


def test_not_ok_leaves_no_split_files(tmp_path: Path) -> None:
    src = _write(tmp_path / "d.jsonl", 20)
    with src.open("a", encoding="utf-8") as f:
        f.write("{broken\n")
    out = tmp_path / "out"
    res = process(src, _options(), out)
    assert not res.report.ok and res.splits == {}
    assert list(out.iterdir()) == []


def test_zero_ratio_split_gets_no_file(tmp_path: Path) -> None:
    src = _write(tmp_path / "d.jsonl", 20)
    res = process(src, _options(split=SplitRatios(train=0.9, validation=0.1, test=0.0)), tmp_path / "out")
    assert set(res.splits) == {"train", "validation"}
    assert res.report.split_counts == {"train": 18, "validation": 2, "test": 0}
