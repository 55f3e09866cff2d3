"""Scratch space with an owner, so that no crash leaves scratch behind for good.

A process that needs scratch (an upload being spooled, a dataset being split, a drop being read)
gets its own folder ``{work}/scratch/{pid}-{random}/`` holding a ``.lease`` file on which it keeps
an exclusive ``flock`` for as long as it lives; every per-upload folder or file goes inside. The
kernel releases the lock when the process dies, however it dies (``kill -9`` included), so
:func:`sweep` knows for certain which folders are orphans: those whose lease it can lock. A live
owner's folder is never touched, whatever its age, and a dead owner's is removed at once.

The lease descriptor is close-on-exec: a training run spawned by the API does not keep it alive.
The folder is created under a ``.new-*`` name and renamed into place once locked, so a sweep never
sees an owner folder without a held lease (a ``.new-*`` left by a crash is removed after the
grace). Older scratch names directly under ``{work}`` (``upload-*``, ``ds_*``, ``drop-*`` from
before owner folders, and the reconciler's ``ft_*-*`` registration folders) are removed once
nothing in them changed for the grace.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from api.logging import get_logger

log = get_logger("scratch")

SCRATCH = "scratch"
LEASE = ".lease"
_NEW = ".new-"
# Scratch names directly under {work} that only crashed processes leave behind (by age).
_LEGACY = re.compile(r"^(upload-.*|ds_[a-z0-9]+(-.*)?|drop-.*|ft_[a-z0-9]+-.*)$")


@dataclass
class _Owner:
    path: Path
    fd: int


_lock = threading.Lock()
_owners: dict[tuple[int, Path], _Owner] = {}


def owner_dir(work_dir: Path) -> Path:
    """This process's scratch folder under ``work_dir`` (created, and its lease taken, on first use)."""
    work = work_dir.expanduser().absolute()
    key = (os.getpid(), work)
    with _lock:
        owner = _owners.get(key)
        if owner is not None and owner.path.is_dir():
            return owner.path
        root = work / SCRATCH
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        token = f"{os.getpid()}-{secrets.token_hex(6)}"
        staging = root / f"{_NEW}{token}"
        staging.mkdir(mode=0o700)
        fd = os.open(staging / LEASE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        final = root / token
        staging.rename(final)
        if owner is not None:  # our folder was removed from under us: start a new one
            os.close(owner.fd)
        _owners[key] = _Owner(final, fd)
        return final


@contextmanager
def directory(work_dir: Path, prefix: str) -> Iterator[Path]:
    """A fresh folder inside this process's scratch, removed on exit (and by :func:`sweep` after a crash)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=owner_dir(work_dir)))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


_claims: dict[str, int] = {}


@contextmanager
def claim(key_prefix: str) -> Iterator[None]:
    """Mark a store prefix as being written by this process: :func:`claimed` is true meanwhile.

    The store sweep skips claimed prefixes whatever its grace, so a write in progress in this
    process is never taken for a crash leftover (other processes are covered by the grace).
    """
    with _lock:
        _claims[key_prefix] = _claims.get(key_prefix, 0) + 1
    try:
        yield
    finally:
        with _lock:
            _claims[key_prefix] -= 1
            if not _claims[key_prefix]:
                del _claims[key_prefix]


def claimed(key_prefix: str) -> bool:
    with _lock:
        return key_prefix in _claims


@dataclass
class SweepResult:
    removed: list[str]
    bytes: int


def sweep(work_dir: Path, grace_seconds: float) -> SweepResult:
    """Remove the scratch of dead owners, and crash leftovers older than ``grace_seconds``."""
    work = work_dir.expanduser()
    result = SweepResult([], 0)
    if not work.is_dir():
        return result
    cutoff = time.time() - grace_seconds
    root = work / SCRATCH
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            if entry.name.startswith(_NEW):
                if _newest_mtime(entry) < cutoff:
                    _remove(entry, result)
            elif entry.is_dir() and not entry.is_symlink():
                _sweep_owner(entry, cutoff, result)
            elif _newest_mtime(entry) < cutoff:  # nothing else belongs here
                _remove(entry, result)
    for entry in sorted(work.iterdir()):
        if _LEGACY.match(entry.name) and _newest_mtime(entry) < cutoff:
            _remove(entry, result)
    if result.removed:
        log.info("scratch swept", extra={"removed": len(result.removed), "bytes": result.bytes})
    return result


def _sweep_owner(folder: Path, cutoff: float, result: SweepResult) -> None:
    try:
        fd = os.open(folder / LEASE, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:  # not made by owner_dir (or half removed): by age
        if _newest_mtime(folder) < cutoff:
            _remove(folder, result)
        return
    except OSError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # the owner is alive (this process included)
        _remove(folder, result)
    finally:
        os.close(fd)


def _remove(path: Path, result: SweepResult) -> None:
    size = _size(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            path.unlink()
    if not path.exists() and not path.is_symlink():
        result.removed.append(str(path))
        result.bytes += size


def _walk(path: Path) -> Iterator[os.stat_result]:
    """lstat of ``path`` and of everything below it (links are not followed)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    yield st
    if stat.S_ISDIR(st.st_mode):
        for top, dirs, files in os.walk(path, followlinks=False):
            for name in (*dirs, *files):
                with suppress(FileNotFoundError):
                    yield (Path(top) / name).lstat()


def _size(path: Path) -> int:
    return sum(st.st_size for st in _walk(path) if stat.S_ISREG(st.st_mode))


def _newest_mtime(path: Path) -> float:
    return max((st.st_mtime for st in _walk(path)), default=0.0)
