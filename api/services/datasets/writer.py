"""Pass 2: distribute the spooled record lines into the split files, in file order.

The spool holds one record line per valid row and pass 1 recorded each line's length, so
this pass never looks for newlines or parses anything: it reads row-aligned blocks, finds
runs of consecutive rows bound for the same split with NumPy, and writes each split's runs
as zero-copy slices of the block.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

import numpy as np
import numpy.typing as npt

from api.services.datasets.bgio import BackgroundWriter

DROPPED: Final = 255
_BLOCK_BYTES: Final = 1 << 22


@dataclass(frozen=True)
class WrittenFile:
    """One split file written: its path, rows, SHA-256 and size in bytes."""

    path: Path
    rows: int
    sha256: str
    bytes: int


class _Sink:
    __slots__ = ("bytes", "f", "hash", "io", "path", "rows", "tmp")

    def __init__(self, path: Path, rows: int, io: BackgroundWriter) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.partial")
        self.f: BinaryIO = self.tmp.open("wb")
        self.hash = hashlib.sha256()
        self.rows = rows
        self.bytes = 0
        self.io = io

    def write(self, data: bytes) -> None:
        self.io.submit(self.f, self.hash, data)  # written and hashed on the I/O thread
        self.bytes += len(data)


def write_splits(
    spools: Sequence[tuple[Path, int]],
    codes: npt.NDArray[np.uint8],
    record_lengths: npt.NDArray[np.uint64],
    out_dir: Path,
    names: tuple[str, ...],
) -> dict[str, WrittenFile]:
    """Stream the spool files (``(path, rows)``, in file order) into ``out_dir/<name>.jsonl``.

    ``codes[i]`` is the split index of spooled row ``i`` (``DROPPED`` to skip it) and
    ``record_lengths[i]`` its line length without the newline. Only splits that receive rows
    get a file. Files are written under temporary names and renamed at the end, so a failure
    leaves no partial split files.
    """
    n = int(codes.shape[0])
    if record_lengths.shape[0] != n or sum(rows for _, rows in spools) != n:
        raise ValueError("one record length and one spooled line per row are needed")
    per_split = np.bincount(codes, minlength=DROPPED + 1)
    io = BackgroundWriter()
    sinks = {
        i: _Sink(out_dir / f"{name}.jsonl", int(per_split[i]), io)
        for i, name in enumerate(names)
        if per_split[i] > 0
    }
    try:
        first = 0
        for path, rows in spools:
            _copy_spool(path, codes[first : first + rows], record_lengths[first : first + rows], sinks)
            first += rows
        io.close()
        out: dict[str, WrittenFile] = {}
        for i, sink in sinks.items():
            sink.f.close()
            sink.tmp.replace(sink.path)
            out[names[i]] = WrittenFile(sink.path, sink.rows, sink.hash.hexdigest(), sink.bytes)
        return out
    finally:
        try:
            io.close()
        finally:
            for sink in sinks.values():
                sink.f.close()
                sink.tmp.unlink(missing_ok=True)


def _copy_spool(
    spool: Path,
    codes: npt.NDArray[np.uint8],
    record_lengths: npt.NDArray[np.uint64],
    sinks: dict[int, _Sink],
) -> None:
    n = int(codes.shape[0])
    ends = np.cumsum(record_lengths.astype(np.int64) + 1)  # byte offset after each line
    total = int(ends[-1]) if n else 0
    if spool.stat().st_size != total:
        raise RuntimeError(f"spool {spool.name} is {spool.stat().st_size} bytes, expected {total}")
    with spool.open("rb") as f:
        row = 0
        offset = 0
        while row < n:
            stop = max(int(np.searchsorted(ends, offset + _BLOCK_BYTES, side="right")), row + 1)
            data = f.read(int(ends[stop - 1]) - offset)
            view = memoryview(data)
            block = codes[row:stop]
            rel_end = ends[row:stop] - offset
            # runs of consecutive rows going to the same split
            change = np.flatnonzero(block[1:] != block[:-1]) + 1
            run_first = np.concatenate(([0], change))
            run_last = np.concatenate((change, [stop - row])) - 1
            run_code = block[run_first]
            run_start = np.where(run_first > 0, rel_end[run_first - 1], 0)
            run_stop = rel_end[run_last]
            for i, sink in sinks.items():
                pick = run_code == i
                if not pick.any():
                    continue
                starts = run_start[pick].tolist()
                stops = run_stop[pick].tolist()
                if len(starts) == 1:
                    sink.write(data[starts[0] : stops[0]])
                else:
                    sink.write(b"".join([view[a:b] for a, b in zip(starts, stops, strict=True)]))
            view.release()
            offset = int(ends[stop - 1])
            row = stop
