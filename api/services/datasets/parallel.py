"""Pass 1 over a large file in line-aligned parts on several processes, merged in file order.

The main process scans the first part itself while worker subprocesses
(:mod:`part_worker`) scan the others. Each
part may decide for itself what a whole-file scan decides at its first suitable row (the
format in auto mode, and for classification whether rows carry a ``label`` field). A part
that decided differently from the file's first decision is scanned again with the file's
decision forced, so the merged result is exactly what one sequential scan gives: rows before
a part's own decision point cannot have depended on it (they had no complete field set, or
none normalised). Line numbers, row indices and label ids are shifted while merging.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Final

import numpy as np

from api.domain.datasets import DatasetOptions
from api.domain.enums import DatasetFormat, TaskType
from api.services.datasets import issues
from api.services.datasets.bgio import BackgroundWriter, ByteSink
from api.services.datasets.validate import NO_LABEL, ScanResult, scan

PARALLEL_MIN_BYTES: Final = 48 << 20
"""Files smaller than this are scanned in one process (worker start-up would not pay)."""
MIN_PART_BYTES: Final = 24 << 20
MAX_PARTS: Final = 4
MIN_CPUS: Final = 4
_SEEK_CHUNK: Final = 1 << 16


@dataclass(frozen=True)
class PartJob:
    """One line-aligned byte range of ``source`` to scan (spooling to ``spool`` when set)."""

    source: Path
    options: DatasetOptions
    start: int
    end: int | None
    spool: Path | None
    fmt: DatasetFormat | None = None
    label_field_mode: bool | None = None


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def part_count(size: int, cpus: int | None = None) -> int:
    """How many parts to scan a file of ``size`` bytes in (1: sequential).

    Parts need idle cores: a worker costs an interpreter start (~0.5 s CPU) and the merge,
    and with fewer than 4 CPUs the main process's I/O thread already uses the second one,
    so small machines scan sequentially. One core is left for the I/O threads.
    """
    cpus = available_cpus() if cpus is None else cpus
    if size < PARALLEL_MIN_BYTES or cpus < MIN_CPUS:
        return 1
    return max(1, min(cpus - 1, MAX_PARTS, size // MIN_PART_BYTES))


def plan_ranges(path: Path, parts: int) -> list[tuple[int, int]]:
    """Split the file into up to ``parts`` byte ranges that start at line starts."""
    size = path.stat().st_size
    cuts = [0]
    with path.open("rb") as f:
        for k in range(1, parts):
            pos = max(size * k // parts, cuts[-1])
            f.seek(pos)
            while True:  # find the next newline without holding a long line in memory
                chunk = f.read(_SEEK_CHUNK)
                if not chunk:
                    pos = size
                    break
                i = chunk.find(b"\n")
                if i >= 0:
                    pos += i + 1
                    break
                pos += len(chunk)
            if cuts[-1] < pos < size:
                cuts.append(pos)
    cuts.append(size)
    return list(pairwise(cuts))


def scan_part(job: PartJob) -> ScanResult:
    """Scan one byte range (worker entry point; also used in-process)."""
    if job.spool is None:
        return _scan_range(job, None)
    with job.spool.open("wb") as f:
        io = BackgroundWriter()
        try:
            return _scan_range(job, io.sink(f))
        finally:
            io.close()


def _scan_range(job: PartJob, sink: ByteSink | None) -> ScanResult:
    return scan(
        job.source,
        job.options,
        sink,
        start=job.start,
        end=job.end,
        fmt=job.fmt,
        label_field_mode=job.label_field_mode,
    )


Runner = Callable[[list[PartJob]], Iterable[ScanResult]]

_ROOT: Final = str(Path(__file__).resolve().parents[3])  # the directory holding ``api``


def _start_worker(job: PartJob) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.services.datasets.part_worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert proc.stdin is not None
    with proc.stdin:
        proc.stdin.write(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
    return proc


def _collect(proc: subprocess.Popen[bytes]) -> ScanResult:
    assert proc.stdout is not None
    with proc.stdout:
        data = proc.stdout.read()
    if proc.wait() != 0:  # its traceback went to our stderr
        raise RuntimeError(f"dataset scan worker failed (exit {proc.returncode})")
    result = pickle.loads(data)
    if not isinstance(result, ScanResult):
        raise RuntimeError("dataset scan worker returned something else than a ScanResult")
    return result


def scan_parallel(jobs: list[PartJob], run_rest: Runner | None = None) -> tuple[ScanResult, list[int]]:
    """Scan ``jobs`` (consecutive ranges of one file); the merged result and rows per part.

    ``run_rest`` runs every job but the first (default: one worker subprocess each) while
    this process scans the first one.
    """
    first = jobs[0]
    rest = jobs[1:]
    if run_rest is None:
        workers = [_start_worker(job) for job in rest]
        try:
            head = scan_part(first)
            results = [head] + [_collect(worker) for worker in workers]
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
    else:
        head = scan_part(first)
        results = [head, *run_rest(rest)]

    options = first.options
    fmt = first.fmt or next((r.format for r in results if r.format is not None), None)
    mode = next((r.label_field_mode for r in results if r.label_field_mode is not None), None)
    decided_at = next((i for i, r in enumerate(results) if r.format is not None), len(results))
    classify = options.task_type is TaskType.CLASSIFICATION
    for i, (job, res) in enumerate(zip(jobs, results, strict=True)):
        format_differs = res.format is not None and res.format is not fmt
        mode_differs = classify and res.label_field_mode is not None and res.label_field_mode is not mode
        # Before its own detection an unforced part words missing_field without the format,
        # which a sequential scan does only up to the file's first detection.
        worded_apart = (
            options.format is None
            and job.fmt is None
            and i > decided_at
            and issues.MISSING_FIELD in res.errors
        )
        if format_differs or mode_differs or worded_apart:
            redo = PartJob(job.source, options, job.start, job.end, job.spool, fmt, mode)
            results[i] = scan_part(redo)
    return merge_results(results, options, fmt, mode), [r.rows for r in results]


def merge_results(
    parts: list[ScanResult], options: DatasetOptions, fmt: DatasetFormat | None, mode: bool | None
) -> ScanResult:
    """Concatenate per-part results (in file order) into one whole-file result."""
    merged = ScanResult.empty(options, fmt, mode)  # as wide as each part's lengths
    names: dict[str, int] = {}
    label_parts: list[np.ndarray] = []
    any_labels = any(p.labels for p in parts)
    for part in parts:
        merged.errors.merge(part.errors, merged.total_lines)
        merged.warnings.merge(part.warnings, merged.total_lines)
        merged.digests += part.digests
        for dst, src in (
            (merged.char_lengths, part.char_lengths),
            (merged.token_lengths, part.token_lengths),
        ):
            dst.extend(src if src.typecode == dst.typecode else array(dst.typecode, src))
        merged.record_lengths.extend(part.record_lengths)
        gaps = np.frombuffer(part.gaps, dtype=np.uint64) + np.uint64(merged.rows)
        merged.gaps.frombytes(gaps.tobytes())
        if any_labels:
            label_parts.append(_remap_labels(part, names, merged.label_names))
        merged.total_lines += part.total_lines
        merged.rows += part.rows
    if any_labels:
        merged.labels.frombytes(np.concatenate(label_parts).astype(np.uint32).tobytes())
    return merged


def _remap_labels(part: ScanResult, names: dict[str, int], merged_names: list[str]) -> np.ndarray:
    if not part.labels:
        return np.full(part.rows, NO_LABEL, dtype=np.uint32)
    table = np.empty(len(part.label_names) + 1, dtype=np.uint32)
    for i, name in enumerate(part.label_names):
        new = names.get(name)
        if new is None:
            new = names[name] = len(merged_names)
            merged_names.append(name)
        table[i] = new
    table[-1] = NO_LABEL
    ids = np.frombuffer(part.labels, dtype=np.uint32)
    return table[np.where(ids == NO_LABEL, len(part.label_names), ids)]
