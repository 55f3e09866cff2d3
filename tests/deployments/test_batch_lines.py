"""Batch inference reads its file a line at a time: a long or non-UTF-8 line is that line's error."""

from __future__ import annotations

import io

from api.routes.deployments import batch_lines


class _Reads(io.BytesIO):
    """Records the largest single read asked of it."""

    largest = 0

    def readline(self, size: int | None = -1) -> bytes:
        line = super().readline(size)
        self.largest = max(self.largest, len(line))
        return line


def _lines(data: bytes, max_line: int = 16) -> list[tuple[int, str]]:
    return [
        (n, t if isinstance(t, str) else f"error: {t}") for n, t in batch_lines(io.BytesIO(data), max_line)
    ]


def test_blank_lines_are_skipped_but_counted() -> None:
    assert _lines(b"one\n\n  \ntwo\nthree") == [(1, "one\n"), (4, "two\n"), (5, "three")]


def test_a_long_line_is_an_error_and_the_next_lines_run() -> None:
    data = b"short\n" + b"x" * 1000 + b"\nafter\n"
    assert _lines(data) == [(1, "short\n"), (2, "error: line is longer than 16 bytes"), (3, "after\n")]


def test_a_line_of_exactly_the_limit_is_fine() -> None:
    assert _lines(b"y" * 15 + b"\n") == [(1, "y" * 15 + "\n")]


def test_a_line_that_is_not_utf8_is_an_error() -> None:
    assert _lines(b"ok\n\xff\xfe\nok2\n") == [(1, "ok\n"), (2, "error: line is not UTF-8"), (3, "ok2\n")]


def test_the_file_is_never_read_whole() -> None:
    fh = _Reads(b"a\n" + b"z" * (1 << 20) + b"\nb\n")
    assert [n for n, _ in batch_lines(fh, 1024)] == [1, 2, 3]
    assert fh.largest <= 1 << 16
