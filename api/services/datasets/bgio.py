"""Write (and hash) byte blocks on a background thread.

File writes and SHA-256 updates of large buffers release the GIL, so handing them to one
I/O thread lets them overlap with the pure-Python work of the main thread. The queue is
bounded, so at most ``max_pending`` blocks (a few MiB each) wait in memory.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, BinaryIO, Protocol


class ByteSink(Protocol):
    def write(self, data: bytes, /) -> Any: ...


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


_Item = tuple[BinaryIO, _Hasher | None, bytes]


class BackgroundWriter:
    """Queue ``(file, hasher, data)`` writes for one worker thread; ``close()`` re-raises errors."""

    def __init__(self, max_pending: int = 8) -> None:
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dataset-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:  # close()
                return
            if self._error is not None:
                continue  # keep draining so the producer never blocks forever
            f, hasher, data = item
            try:
                f.write(data)
                if hasher is not None:
                    hasher.update(data)
            except BaseException as exc:  # surfaced by close()
                self._error = exc

    def submit(self, f: BinaryIO, hasher: _Hasher | None, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((f, hasher, data))

    def sink(self, f: BinaryIO) -> ByteSink:
        """A ``write()``-able view that queues writes to ``f``."""
        return _QueuedFile(self, f)

    def close(self) -> None:
        """Wait for every queued write; raise the first error a write hit."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error


class _QueuedFile:
    __slots__ = ("_f", "_writer")

    def __init__(self, writer: BackgroundWriter, f: BinaryIO) -> None:
        self._writer = writer
        self._f = f

    def write(self, data: bytes, /) -> int:
        self._writer.submit(self._f, None, data)
        return len(data)
