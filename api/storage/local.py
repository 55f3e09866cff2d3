"""A local directory as object store (the embedded default).

No symbolic links, ever: every access walks the key from the root one folder at a time, each
opened relative to its parent's descriptor with ``O_NOFOLLOW``, so a link anywhere below the
root (at the key itself or at any folder on the way) is an :class:`~api.domain.errors.UnsafePath`
naming the key instead of a read of whatever the link points at. Listings skip links (and
anything else that is not a plain file) with a warning; :meth:`LocalStore.unsafe_keys` names
them for callers that must report them (the drop scanner rejects a linked drop).

Writes go to a ``.tmp-*`` file beside the destination and are renamed over it (atomic); a
process killed mid-write leaves only the ``.tmp-*`` file, which listings never show and
:meth:`LocalStore.sweep_partials` removes once it is old enough.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Literal

from api import faults
from api.domain.errors import UnsafePath
from api.logging import get_logger
from api.storage.base import ObjectInfo, check_key

log = get_logger("storage")

TMP_PREFIX = ".tmp-"
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC  # NONBLOCK: never hang on a FIFO
_CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC

Kind = Literal["file", "partial", "unsafe"]


@dataclass(frozen=True)
class _Entry:
    key: str
    kind: Kind  # a plain file, a .tmp-* partial write, or a link / FIFO / device (never followed)
    size: int
    mtime: float


_Entries = list[_Entry]
_Keys = list[str]


STORE_SCHEME = "store://"


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def uri(self, key: str) -> str:
        """``store://{key}``: relative to the store, so API responses never show server paths."""
        return STORE_SCHEME + check_key(key)

    def file_uri(self, key: str) -> str:
        """``file:///abs/path`` of the object, for processes on this host (the local inference server)."""
        return self._path(key).as_uri()

    def key_from_uri(self, uri: str) -> str:
        if uri.startswith(STORE_SCHEME):
            return check_key(uri[len(STORE_SCHEME) :])
        prefix = self.root.as_uri() + "/"  # rows written before store:// URIs
        if not uri.startswith(prefix):
            raise ValueError(f"{uri} is not an object of this store")
        return check_key(uri[len(prefix) :])

    # -- walking without following links -------------------------------------------------------
    @contextmanager
    def _dir(self, parts: Sequence[str], key: str, *, create: bool = False) -> Iterator[int]:
        """A descriptor of the folder ``root/parts...``, each step opened with ``O_NOFOLLOW``."""
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for i, part in enumerate(parts):
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise FileNotFoundError(key) from None
                    with suppress(FileExistsError):
                        os.mkdir(part, dir_fd=fd)
                    try:
                        nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    except OSError as exc:
                        raise _classify(exc, fd, part, key, "/".join(parts[: i + 1])) from exc
                except OSError as exc:
                    raise _classify(exc, fd, part, key, "/".join(parts[: i + 1])) from exc
                os.close(fd)
                fd = nxt
            yield fd
        finally:
            os.close(fd)

    def _open_fd(self, key: str) -> int:
        """A read descriptor of the plain file at ``key`` (FileNotFoundError, UnsafePath)."""
        parts = check_key(key).split("/")
        with self._dir(parts[:-1], key) as dfd:
            try:
                fd = os.open(parts[-1], _READ_FLAGS, dir_fd=dfd)
            except OSError as exc:
                raise _classify(exc, dfd, parts[-1], key, key) from exc
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            if stat.S_ISDIR(st.st_mode):
                raise FileNotFoundError(key)
            raise UnsafePath(f"store key {key!r} is not a plain file", details={"key": key})
        os.set_blocking(fd, True)
        return fd

    # -- writes ---------------------------------------------------------------------------------
    def _atomic_write(self, key: str, writer: Callable[[BinaryIO], object]) -> ObjectInfo:
        parts = check_key(key).split("/")
        with self._dir(parts[:-1], key, create=True) as dfd:
            tmp = f"{TMP_PREFIX}{secrets.token_hex(8)}"
            fd = os.open(tmp, _CREATE_FLAGS, 0o600, dir_fd=dfd)
            try:
                h = hashlib.md5(usedforsecurity=False)
                with os.fdopen(fd, "w+b") as fh:
                    writer(fh)
                    fh.flush()
                    size = fh.tell()
                    fh.seek(0)
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
                faults.point("store.before_rename")  # crash tests: a partial write left behind
                # Replaces a link at the destination itself, never what it points at.
                os.replace(tmp, parts[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                with suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
        return ObjectInfo(key=key, size=size, etag=h.hexdigest())

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        def write(fh: BinaryIO) -> None:
            with path.open("rb") as src:
                shutil.copyfileobj(src, fh, 1 << 20)

        return self._atomic_write(key, write)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return self._atomic_write(key, lambda fh: fh.write(data))

    # -- reads ----------------------------------------------------------------------------------
    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as fh:
            return fh.read()

    def open_read(self, key: str) -> BinaryIO:
        return os.fdopen(self._open_fd(key), "rb")

    def download_file(self, key: str, path: Path) -> None:
        with self.open_read(key) as src:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)

    def exists(self, key: str) -> bool:
        try:
            os.close(self._open_fd(key))
        except FileNotFoundError:
            return False
        return True

    def stat(self, key: str) -> os.stat_result:
        """The plain file's own stat (never a link's target); FileNotFoundError, UnsafePath."""
        fd = self._open_fd(key)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        for entry in self._entries(prefix):
            if entry.kind == "file":
                yield ObjectInfo(
                    key=entry.key, size=entry.size, modified=datetime.fromtimestamp(entry.mtime, UTC)
                )
            elif entry.kind == "unsafe":
                log.warning("skipping a symbolic link or special file in the store", extra={"key": entry.key})

    def unsafe_keys(self, prefix: str) -> _Keys:
        """Keys under ``prefix`` that are symbolic links (or FIFOs, devices): never listed, never read."""
        return [e.key for e in self._entries(prefix) if e.kind == "unsafe"]

    def _entries(self, prefix: str) -> _Entries:
        """Everything under ``prefix`` (sorted by key), found without following any link."""
        # A prefix may end inside a file name ("a/b" lists "a/b.json" and "a/b/c").
        folder = prefix.rstrip("/") if prefix.endswith("/") else prefix.rpartition("/")[0]
        parts = check_key(folder).split("/") if folder else []
        out: _Entries = []
        try:
            with self._dir(parts, prefix) as fd:
                self._scan(fd, folder + "/" if folder else "", prefix, out)
        except FileNotFoundError:
            return []
        except UnsafePath:
            log.warning("not listing a prefix that goes through a symbolic link", extra={"key": prefix})
            return []
        out.sort(key=lambda e: e.key)
        return out

    def _scan(self, fd: int, base: str, prefix: str, out: _Entries) -> None:
        with os.scandir(fd) as it:
            entries = list(it)
        for entry in entries:
            key = base + entry.name
            if not (key.startswith(prefix) or prefix.startswith(key + "/")):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                try:
                    sub = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError:  # replaced by a link meanwhile
                    out.append(_Entry(key, "unsafe", 0, st.st_mtime))
                    continue
                try:
                    self._scan(sub, key + "/", prefix, out)
                finally:
                    os.close(sub)
            elif not key.startswith(prefix):
                continue
            elif stat.S_ISREG(st.st_mode):
                kind: Kind = "partial" if entry.name.startswith(TMP_PREFIX) else "file"
                out.append(_Entry(key, kind, st.st_size, st.st_mtime))
            else:
                out.append(_Entry(key, "unsafe", 0, st.st_mtime))

    # -- deletes --------------------------------------------------------------------------------
    def delete(self, key: str) -> None:
        parts = check_key(key).split("/")
        try:
            with self._dir(parts[:-1], key) as dfd, suppress(FileNotFoundError):
                os.unlink(parts[-1], dir_fd=dfd)  # a link is removed, never what it points at
        except FileNotFoundError:
            return
        self._prune(parts[:-1])

    def delete_prefix(self, prefix: str) -> int:
        """Every object under ``prefix``, and any link or partial write there too."""
        entries = self._entries(prefix)
        for entry in entries:
            self.delete(entry.key)
        return sum(1 for e in entries if e.kind == "file")

    def sweep_partials(self, older_than: float, prefix: str = "") -> tuple[int, int]:
        """Remove ``.tmp-*`` partial writes last modified before ``older_than`` (epoch seconds).

        Returns (files, bytes) removed. A write in progress keeps its mtime fresh, so a grace of a
        few minutes keeps live writes.
        """
        files = size = 0
        for entry in self._entries(prefix):
            if entry.kind == "partial" and entry.mtime < older_than:
                self.delete(entry.key)
                files += 1
                size += entry.size
        return files, size

    def _prune(self, parts: Sequence[str]) -> None:
        """Remove the now-empty folders on the way up (``rmdir`` removes empty folders only)."""
        for depth in range(len(parts), 0, -1):
            try:
                with self._dir(parts[: depth - 1], "/".join(parts)) as dfd:
                    os.rmdir(parts[depth - 1], dir_fd=dfd)
            except (OSError, UnsafePath):
                return


def _classify(exc: OSError, dir_fd: int, name: str, key: str, where: str) -> Exception:
    """The error for a failed no-follow open of ``name``: UnsafePath for a link, else not found."""
    is_link = exc.errno == errno.ELOOP
    if not is_link:
        with suppress(OSError):
            is_link = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    if is_link:
        what = "is" if where == key else f"goes through {where!r}, which is"
        return UnsafePath(f"store key {key!r} {what} a symbolic link", details={"key": key})
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return FileNotFoundError(key)
    return exc


def file_etag(path: Path) -> str:
    """The MD5 hex digest of a file: what S3 gives as the ETag of a single-part upload."""
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
