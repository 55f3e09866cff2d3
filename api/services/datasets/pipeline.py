"""The dataset pipeline: validate + dedup + split (+ write), streamed, storage-free.

* Pass 1 (:mod:`validate`, reading through :mod:`reader`) parses each line once, checks it,
  normalises it to the training record (:mod:`formats`, :mod:`records`) and keeps 24-40
  bytes of facts per valid row in flat arrays (16-byte SHA-256 prefix, lengths, label id).
  With an output directory it also spools each record line to a hidden file in ``out_dir``
  (written on a background thread, :mod:`bgio`).
* Dedup (:mod:`dedup`, first occurrence wins), length stats (:mod:`stats`) and the seeded,
  exact-count, optionally stratified split (:mod:`split`) work on those arrays only.
* Pass 2 (:mod:`writer`) streams the spool into ``train/validation/test.jsonl`` in file
  order without parsing JSON again, hashing each file as it goes.

Output record (one compact JSON line)::

    {"messages":[{"role":"user","content":"..."},{"role":"assistant","content":"..."}],"label":null}

Memory: the per-row arrays (24-40 MB per million rows; the stats are exact, computed from
them) plus fixed-size read/write buffers; no row text is kept. Issue codes are listed in :mod:`issues`.
"""

from __future__ import annotations

import uuid
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from api.domain.datasets import SPLIT_NAMES, DatasetOptions, ValidationReport
from api.domain.enums import TaskType
from api.services.datasets import issues
from api.services.datasets.dedup import first_occurrences
from api.services.datasets.parallel import PartJob, Runner, part_count, plan_ranges, scan_parallel, scan_part
from api.services.datasets.records import DIGEST_BYTES, content_sha256
from api.services.datasets.split import assign_splits
from api.services.datasets.stats import length_stats
from api.services.datasets.validate import NO_LABEL, ScanResult
from api.services.datasets.writer import DROPPED, WrittenFile, write_splits

__all__ = ["PipelineResult", "SplitOutput", "process"]


SplitOutput = WrittenFile
"""One written split file: path, rows, sha256 and size in bytes."""


@dataclass(frozen=True)
class PipelineResult:
    report: ValidationReport  # report.ok False => nothing usable; never raises for bad data
    splits: dict[str, SplitOutput]  # empty on dry run or when not ok; train always when ok


def process(source: Path, options: DatasetOptions, out_dir: Path | None = None) -> PipelineResult:
    """Validate, dedup and split ``source`` (JSONL); write the splits to ``out_dir`` if given.

    ``out_dir=None`` is a dry run: nothing is written. With ``out_dir``, the split files
    ``{train,validation,test}.jsonl`` (those with rows) are written only when the report is
    ok. Bad data never raises; it is described in the report. I/O errors do raise.
    Large files are scanned in parts on several processes (:mod:`parallel`); the result is
    the same as a sequential scan.
    """
    return run(source, options, out_dir, parts=part_count(source.stat().st_size))


def run(
    source: Path,
    options: DatasetOptions,
    out_dir: Path | None,
    *,
    parts: int = 1,
    run_rest: Runner | None = None,
) -> PipelineResult:
    """:func:`process` with the number of parts (and how to run parts 2..n) chosen."""
    ranges: list[tuple[int, int | None]] = [(0, None)]
    if parts > 1:
        ranges = list(plan_ranges(source, parts))
    spools: list[Path | None] = [None] * len(ranges)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex
        spools = [out_dir / f".spool-{tag}-{i}.jsonl" for i in range(len(ranges))]
    try:
        jobs = [
            PartJob(source, options, start, end, spool)
            for (start, end), spool in zip(ranges, spools, strict=True)
        ]
        if len(jobs) == 1:
            result = scan_part(jobs[0])
            part_rows = [result.rows]
        else:
            result, part_rows = scan_parallel(jobs, run_rest)
        spooled = [(p, n) for p, n in zip(spools, part_rows, strict=True) if p is not None]
        return _finish(result, options, spooled, out_dir)
    finally:
        for spool in spools:
            if spool is not None:
                spool.unlink(missing_ok=True)


def _finish(
    result: ScanResult, options: DatasetOptions, spools: list[tuple[Path, int]], out_dir: Path | None
) -> PipelineResult:
    n_valid = result.valid_rows
    first = first_occurrences(result.digests)
    unique_idx = np.flatnonzero(first)
    n_unique = int(unique_idx.size)
    if n_unique < n_valid:
        dup_rows = np.flatnonzero(~first)[: options.limits.max_errors_shown]
        result.warnings.add_many(issues.DUPLICATE, n_valid - n_unique, result.line_numbers(dup_rows))
    if n_unique < options.limits.min_unique_rows:
        result.errors.add(
            issues.TOO_FEW_ROWS, None, f"{n_unique} unique valid rows, need {options.limits.min_unique_rows}"
        )
    ok = not result.errors
    digests = np.frombuffer(result.digests, dtype=np.uint8).reshape(-1, DIGEST_BYTES)
    chars = _as_numpy(result.char_lengths)[unique_idx]
    tokens = _as_numpy(result.token_lengths)[unique_idx]

    split_counts: dict[str, int] = {}
    label_distribution: dict[str, dict[str, int]] | None = None
    codes: npt.NDArray[np.uint8] | None = None
    if ok:
        labels = result.label_ids()[unique_idx]
        stratify = options.task_type is TaskType.CLASSIFICATION and not bool((labels == NO_LABEL).any())
        groups = labels.astype(np.intp) if stratify else None
        codes, totals = assign_splits(n_unique, options.split, options.seed, groups)
        split_counts = dict(zip(SPLIT_NAMES, totals, strict=True))
        if stratify:
            label_distribution = _label_distribution(labels, codes, result.label_names)

    report = ValidationReport(
        ok=ok,
        format=result.format,
        total_lines=result.total_lines,
        valid_rows=n_valid,
        unique_rows=n_unique,
        duplicates_dropped=n_valid - n_unique,
        errors=result.errors.groups(),
        warnings=result.warnings.groups(),
        split_counts=split_counts,
        label_distribution=label_distribution,
        char_length=length_stats(chars),
        token_length=length_stats(tokens),
        content_sha256=content_sha256(digests[unique_idx].tobytes()) if n_unique else None,
    )
    splits: dict[str, SplitOutput] = {}
    if ok and codes is not None and spools and out_dir is not None:
        per_row = np.full(n_valid, DROPPED, dtype=np.uint8)
        per_row[unique_idx] = codes
        lengths = np.frombuffer(result.record_lengths, dtype=np.uint64)
        splits = write_splits(spools, per_row, lengths, out_dir, SPLIT_NAMES)
    return PipelineResult(report=report, splits=splits)


def _as_numpy(values: array[int]) -> npt.NDArray[np.uint64] | npt.NDArray[np.uint32]:
    if values.itemsize == 8:
        return np.frombuffer(values, dtype=np.uint64)
    return np.frombuffer(values, dtype=np.uint32)


def _label_distribution(
    labels: npt.NDArray[np.uint32], codes: npt.NDArray[np.uint8], names: list[str]
) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for i, split in enumerate(SPLIT_NAMES):
        ids, counts = np.unique(labels[codes == i], return_counts=True)
        out[split] = {names[int(k)]: int(c) for k, c in zip(ids, counts, strict=True)}
    return out
