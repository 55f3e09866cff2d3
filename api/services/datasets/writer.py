"""Pass 2: distribute the spooled record lines into the split files, in file order."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

DROPPED: Final = 255
_BLOCK_BYTES: Final = 1 << 22


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    rows: int
    sha256: str
    bytes: int


class _Sink:
    __slots__ = ("bytes", "f", "hash", "path", "rows", "tmp")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.partial")
        self.f = self.tmp.open("wb")
        self.hash = hashlib.sha256()
        self.rows = 0
        self.bytes = 0

    def write(self, lines: Sequence[bytes]) -> None:
        if not lines:
            return
        data = b"\n".join(lines)
        for piece in (data, b"\n"):
            self.f.write(piece)
            self.hash.update(piece)
        self.rows += len(lines)
        self.bytes += len(data) + 1


def write_splits(
    spool: Path, codes: npt.NDArray[np.uint8], out_dir: Path, names: tuple[str, ...]
) -> dict[str, WrittenFile]:
    """Stream ``spool`` (one record line per row) into ``out_dir/<name>.jsonl``.

    ``codes[i]`` is the split index of spool line ``i`` (``DROPPED`` to skip it). Only splits
    that receive rows get a file. Files are written under temporary names and renamed at the
    end, so a failure leaves no partial split files.
    """
    wanted = sorted({int(c) for c in np.unique(codes)} - {DROPPED})
    sinks = {i: _Sink(out_dir / f"{names[i]}.jsonl") for i in wanted}
    try:
        pos = 0
        carry = b""
        with spool.open("rb") as f:
            while True:
                chunk = f.read(_BLOCK_BYTES)
                if not chunk:
                    break
                data = carry + chunk if carry else chunk
                cut = data.rfind(b"\n")
                if cut < 0:
                    carry = data
                    continue
                carry = data[cut + 1 :]
                lines = data[:cut].split(b"\n")
                block = codes[pos : pos + len(lines)]
                if block.shape[0] != len(lines):
                    raise RuntimeError("spool holds more lines than scanned rows")
                pos += len(lines)
                for i, sink in sinks.items():
                    picked = np.flatnonzero(block == i).tolist()
                    if len(picked) > 1:
                        sink.write(itemgetter(*picked)(lines))
                    elif picked:
                        sink.write([lines[picked[0]]])
        if carry or pos != codes.shape[0]:
            raise RuntimeError(f"spool has {pos} complete lines, expected {codes.shape[0]}")
        out: dict[str, WrittenFile] = {}
        for i, sink in sinks.items():
            sink.f.close()
            sink.tmp.replace(sink.path)
            out[names[i]] = WrittenFile(sink.path, sink.rows, sink.hash.hexdigest(), sink.bytes)
        return out
    finally:
        for sink in sinks.values():
            sink.f.close()
            sink.tmp.unlink(missing_ok=True)
