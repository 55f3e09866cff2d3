"""Stream a JSONL file as blocks of decoded lines, in bounded memory.

The file is read as bytes in fixed-size blocks and cut at newlines. A block is decoded as
UTF-8 in one call; only when that fails are its lines decoded one by one, so each invalid
line is reported on its own. A line longer than ``max_line_bytes`` is skipped without being
held in memory. A UTF-8 byte order mark at the start of the file is dropped.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path
from typing import Final

BLOCK_BYTES: Final = 1 << 22

# Placeholders for lines that could not be read. A real line never contains "\n" (lines are
# cut at it), so these cannot collide with data, and they are whitespace, which lets the
# scanner test for them only inside its blank-line branch.
INVALID_UTF8_LINE: Final = "\n"
TOO_LONG_LINE: Final = "\n\n"


def _decode(body: bytes) -> list[str]:
    try:
        return body.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        pass
    out: list[str] = []
    for raw in body.split(b"\n"):
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(INVALID_UTF8_LINE)
    return out


def iter_line_blocks(
    path: Path,
    max_line_bytes: int,
    block_bytes: int = BLOCK_BYTES,
    start: int = 0,
    end: int | None = None,
) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(number of the first line, lines)``; line numbers start at 1.

    ``start``/``end``: read only that byte range (``start`` at a line start, ``end`` just
    after a newline or at the end of the file); line numbers count from ``start``.

    An undecodable line comes as :data:`INVALID_UTF8_LINE`, a skipped overlong one as
    :data:`TOO_LONG_LINE`.
    Lines keep a trailing ``\\r`` if the file has CRLF endings (JSON treats it as
    whitespace). A final newline does not start an extra empty line.
    """
    lineno = 1
    carry = b""
    skipping = False  # inside a line longer than max_line_bytes, discarding bytes
    first = start == 0
    left = -1 if end is None else end - start
    with path.open("rb") as f:
        f.seek(start)
        while left != 0:
            chunk = f.read(block_bytes if left < 0 else min(block_bytes, left))
            if not chunk:
                break
            if left > 0:
                left -= len(chunk)
            if first:
                first = False
                if chunk.startswith(codecs.BOM_UTF8):
                    chunk = chunk[len(codecs.BOM_UTF8) :]
            if skipping:
                cut = chunk.find(b"\n")
                if cut < 0:
                    continue
                yield lineno, [TOO_LONG_LINE]
                lineno += 1
                skipping = False
                chunk = chunk[cut + 1 :]
            data = carry + chunk if carry else chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                if len(data) > max_line_bytes:
                    skipping, carry = True, b""
                else:
                    carry = data
                continue
            carry = data[cut + 1 :]
            lines = _decode(data[:cut])
            yield lineno, lines
            lineno += len(lines)
            if len(carry) > max_line_bytes:
                skipping, carry = True, b""
    if skipping:
        yield lineno, [TOO_LONG_LINE]
    elif carry:
        yield lineno, _decode(carry)
