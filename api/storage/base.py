"""The ObjectStore protocol every storage backend implements."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from api.logging import get_logger

log = get_logger("storage")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str | None = None
    modified: datetime | None = None  # last write (UTC), where the store knows it


@runtime_checkable
class ObjectStore(Protocol):
    """Keys are ``/``-separated relative paths (``tenant/datasets/ds_x/train.jsonl``)."""

    def uri(self, key: str) -> str:
        """A URI for the object: ``s3://bucket/key``, or ``store://key`` for the local store (never a
        server path: these URIs appear in API responses)."""
        ...

    def key_from_uri(self, uri: str) -> str:
        """Inverse of :meth:`uri`; raises ValueError for a URI of another store."""
        ...

    def put_file(self, key: str, path: Path) -> ObjectInfo: ...

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo: ...

    def get_bytes(self, key: str) -> bytes: ...

    def open_read(self, key: str) -> BinaryIO:
        """A streaming reader; the caller closes it."""
        ...

    def download_file(self, key: str, path: Path) -> None: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def delete(self, key: str) -> None:
        """Delete one object; deleting a missing key is not an error."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many were deleted."""
        ...


def upload_dir(store: ObjectStore, local_dir: Path, prefix: str) -> list[ObjectInfo]:
    """Upload every plain file below ``local_dir`` under ``prefix`` (keys keep the relative layout).

    Symbolic links (to files or folders) and special files are skipped with a warning, never
    followed: what is uploaded (an adapter, then served and archived) holds only the folder's own
    files.
    """
    out: list[ObjectInfo] = []
    for path in plain_files(local_dir):
        rel = path.relative_to(local_dir).as_posix()
        out.append(store.put_file(f"{prefix.rstrip('/')}/{rel}", path))
    return out


def plain_files(local_dir: Path) -> list[Path]:
    """The plain files below ``local_dir`` (sorted), walked without following links; links skipped."""
    found: list[Path] = []
    for top, dirs, files in os.walk(local_dir, followlinks=False):
        for name in [*dirs, *files]:
            path = Path(top) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                log.warning("skipping a symbolic link or special file", extra={"path": str(path)})
            elif stat.S_ISREG(mode):
                found.append(path)
    return sorted(found)


def download_prefix(store: ObjectStore, prefix: str, local_dir: Path) -> list[Path]:
    """Download every object under ``prefix`` into ``local_dir`` keeping the relative layout."""
    base = prefix.rstrip("/") + "/"
    paths: list[Path] = []
    for info in store.list(base):
        rel = info.key[len(base) :]
        if not rel or ".." in Path(rel).parts:
            continue
        dest = local_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        store.download_file(info.key, dest)
        paths.append(dest)
    return paths


def check_key(key: str) -> str:
    """Reject keys that could escape a prefix or a local root."""
    if not key or key.startswith("/") or "\\" in key:
        raise ValueError(f"invalid object key: {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid object key: {key!r}")
    return key
