"""The exact object version a drop names: its etag, whether it has settled, and a checked download.

S3 lists etags; the local store does not, so for it the etag is the MD5 of the content (what
:class:`~api.storage.local.LocalStore` returns on put), cached by size and mtime. A file copied
into the local store appears while it is still being written, so it counts only once its mtime
is ``settle_seconds`` old (S3 objects appear whole).

A symbolic link in the local store is never read: it is listed as an ``unsafe`` object (with a
stable pseudo-etag) so the handler can reject it with a reason instead of ignoring it silently.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from api.domain.errors import UnsafePath
from api.storage.base import ObjectStore
from api.storage.local import LocalStore, file_etag


@dataclass(frozen=True)
class Seen:
    key: str
    etag: str
    settled: bool = True
    unsafe: str | None = None  # why it must never be read (a symbolic link); None: a plain object


class Objects:
    def __init__(self, store: ObjectStore, *, settle_seconds: float = 0.0) -> None:
        self.store = store
        self.settle_seconds = settle_seconds
        self._md5: dict[str, tuple[int, int, str]] = {}  # key -> (size, mtime_ns, md5)

    def list(self, prefix: str, want: Callable[[str], bool]) -> Iterator[Seen]:
        """The objects under ``prefix`` whose key ``want`` accepts (only those are hashed)."""
        for info in self.store.list(prefix):
            if not want(info.key):
                continue
            seen = self._seen(info.key, info.etag)
            if seen is not None:
                yield seen
        if isinstance(self.store, LocalStore):
            for key in self.store.unsafe_keys(prefix):
                if want(key):
                    yield _unsafe(key)

    def current(self, key: str) -> Seen | None:
        """The object now at ``key`` (None if there is none)."""
        for info in self.store.list(key):
            if info.key == key:
                return self._seen(key, info.etag)
        if isinstance(self.store, LocalStore) and key in self.store.unsafe_keys(key):
            return _unsafe(key)
        return None

    def fetch(self, key: str, etag: str, dest: Path) -> bool:
        """Download ``key`` into ``dest`` iff the content is the version with ``etag``.

        S3: the etag is checked before and after the download (an overwrite in between shows as a
        changed etag); local: the downloaded bytes themselves are hashed.
        """
        before = self.current(key)
        if before is None or before.etag != etag:
            return False
        self.store.download_file(key, dest)
        if isinstance(self.store, LocalStore):
            return file_etag(dest) == etag
        after = self.current(key)
        return after is not None and after.etag == etag

    def _seen(self, key: str, etag: str | None) -> Seen | None:
        if etag is not None:
            return Seen(key, etag)
        if not isinstance(self.store, LocalStore):
            return Seen(key, _md5_stream(self.store, key))
        try:
            st = self.store.stat(key)  # never through a link
            cached = self._md5.get(key)
            if cached is None or cached[:2] != (st.st_size, st.st_mtime_ns):
                cached = (st.st_size, st.st_mtime_ns, _md5_stream(self.store, key))
        except FileNotFoundError:
            return None
        except UnsafePath:  # replaced by a link since it was listed
            return _unsafe(key)
        self._md5[key] = cached
        settled = time.time() - st.st_mtime >= self.settle_seconds
        return Seen(key, cached[2], settled)


def _unsafe(key: str) -> Seen:
    """A link at ``key``: its pseudo-etag is stable, so it is rejected once, not on every scan."""
    etag = "symlink-" + hashlib.md5(key.encode(), usedforsecurity=False).hexdigest()
    return Seen(key, etag, True, f"{key} is a symbolic link; drops must be plain files")


def _md5_stream(store: ObjectStore, key: str) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with store.open_read(key) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
