"""Where adapters come from: an S3 prefix (downloaded into a local cache) or a local directory.

An adapter ``adp_x`` lives at ``<prefix>/adp_x/`` as an unpacked PEFT folder
(``adapter_config.json`` + ``adapter_model.safetensors``). Adapters are immutable once written, so a
completed download in the cache is reused (also across restarts). Torch-free.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlparse

from loraserve.config import valid_adapter_id
from loraserve.errors import AdapterFetchFailed, AdapterInvalid, AdapterNotFound, BadRequest
from loraserve.logs import log_event

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ADAPTER_CONFIG = "adapter_config.json"
_MISSING_CODES = {"NoSuchBucket", "NoSuchKey", "404", "NotFound"}


class AdapterSource(Protocol):
    """Resolves an adapter id to a local PEFT folder.

    ``fetch(id, pin=True)`` also pins the local copy (a cache never deletes it) until ``unpin(id)``;
    ``invalidate(id)`` drops a cached copy found to be corrupt, so the next fetch downloads it again.
    """

    description: str

    def fetch(self, adapter_id: str, pin: bool = False) -> Path: ...

    def unpin(self, adapter_id: str) -> None: ...

    def invalidate(self, adapter_id: str) -> None: ...


def folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def _check_id(adapter_id: str) -> None:
    if not valid_adapter_id(adapter_id):
        raise BadRequest(
            f"invalid adapter id {adapter_id!r}: use 1-128 letters, digits, '_' or '-'",
            code="invalid_adapter_id",
        )


def _check_folder(adapter_id: str, folder: Path) -> Path:
    if not (folder / ADAPTER_CONFIG).is_file():
        raise AdapterInvalid(f"adapter {adapter_id!r} has no {ADAPTER_CONFIG}", code="adapter_invalid")
    return folder


class NoSource:
    """No ``FASTUNER_ADAPTER_PREFIX``: only the base model is served."""

    description = "none"

    def fetch(self, adapter_id: str, pin: bool = False) -> Path:
        _check_id(adapter_id)
        raise AdapterNotFound(
            f"adapter {adapter_id!r} not found: this server has no adapter prefix (FASTUNER_ADAPTER_PREFIX)"
        )

    def unpin(self, adapter_id: str) -> None:
        pass

    def invalidate(self, adapter_id: str) -> None:
        pass


class LocalSource:
    """``file:///abs/dir`` or a plain directory: adapters are loaded in place."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root)

    def fetch(self, adapter_id: str, pin: bool = False) -> Path:
        _check_id(adapter_id)
        folder = self.root / adapter_id
        if not folder.is_dir():
            raise AdapterNotFound(f"adapter {adapter_id!r} not found under {self.root}")
        return _check_folder(adapter_id, folder)

    def unpin(self, adapter_id: str) -> None:
        pass  # loaded in place: nothing is ever deleted

    def invalidate(self, adapter_id: str) -> None:
        pass  # never delete the user's own files


def s3_client() -> S3Client:
    import boto3
    from botocore.config import Config

    client: S3Client = boto3.client(
        "s3", config=Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10)
    )
    return client


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> (``bucket``, ``a/b``)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.strip("/")


def download_s3_prefix(
    client: Any, bucket: str, key_prefix: str, dest: Path, *, recursive: bool = True
) -> int:
    """Download every object under ``key_prefix/`` into ``dest`` (atomically: via a sibling temp dir).

    Returns the number of files written; 0 means nothing was there (``dest`` is then not created).
    Keys that would escape ``dest`` are skipped.
    """
    prefix = f"{key_prefix.strip('/')}/" if key_prefix.strip("/") else ""
    keys: list[tuple[str, PurePosixPath]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            rel = PurePosixPath(key[len(prefix) :])
            if key.endswith("/") or not rel.parts or ".." in rel.parts:
                continue
            if not recursive and len(rel.parts) > 1:
                continue
            keys.append((key, rel))
    if not keys:
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for key, rel in keys:
            target = tmp.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(target))
        if dest.exists():  # someone else finished first; theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.replace(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(keys)


# Folders in the cache dir that are not adapters (the base model's download lives under "base").
_NOT_ADAPTERS = {"base", "_base"}


class S3Source:
    """``s3://bucket/prefix``: ``<prefix>/<id>/`` is downloaded into ``cache_dir/<id>/`` on first use.

    The downloaded folders are an LRU under ``budget_bytes`` (None = unbounded): after each download
    the least recently used folders are deleted until the cache fits, except pinned ones (adapters of
    queued or running requests) and the one just fetched. Last use survives restarts via the mtime.
    """

    def __init__(
        self, uri: str, cache_dir: Path, client: Any | None = None, budget_bytes: int | None = None
    ) -> None:
        self.bucket, self.key_prefix = split_s3_uri(uri)
        self.cache_dir = cache_dir
        self.description = uri
        self.budget_bytes = budget_bytes
        self.evictions = 0
        self._client = client
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._pins: Counter[str] = Counter()
        self._used: dict[str, float] = {}

    def unpin(self, adapter_id: str) -> None:
        with self._locks_guard:
            self._pins[adapter_id] -= 1
            if self._pins[adapter_id] <= 0:
                del self._pins[adapter_id]

    def pinned(self) -> set[str]:
        with self._locks_guard:
            return set(self._pins)

    def invalidate(self, adapter_id: str) -> None:
        _check_id(adapter_id)
        with self._lock_for(adapter_id):
            shutil.rmtree(self.cache_dir / adapter_id, ignore_errors=True)
        log_event("adapter_cache_invalidated", adapter=adapter_id)

    def _touch(self, adapter_id: str, pin: bool) -> None:
        with self._locks_guard:
            self._used[adapter_id] = time.time()
            if pin:
                self._pins[adapter_id] += 1

    def cached(self) -> dict[str, int]:
        """Cached adapter folders and their sizes in bytes."""
        if not self.cache_dir.is_dir():
            return {}
        return {
            p.name: folder_bytes(p)
            for p in self.cache_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name not in _NOT_ADAPTERS
        }

    def prune(self, keep: str | None = None) -> list[str]:
        """Delete least recently used folders until the cache fits ``budget_bytes``; returns their ids."""
        if self.budget_bytes is None:
            return []
        sizes = self.cached()
        total = sum(sizes.values())
        if total <= self.budget_bytes:
            return []

        def last_used(adapter_id: str) -> float:
            if adapter_id in self._used:
                return self._used[adapter_id]
            try:
                return (self.cache_dir / adapter_id).stat().st_mtime
            except OSError:
                return 0.0

        evicted: list[str] = []
        for adapter_id in sorted(sizes, key=last_used):
            if total <= self.budget_bytes:
                break
            if adapter_id == keep or adapter_id in self.pinned():
                continue
            lock = self._lock_for(adapter_id)
            if not lock.acquire(blocking=False):  # being fetched right now: in use
                continue
            try:
                if adapter_id in self.pinned():
                    continue
                shutil.rmtree(self.cache_dir / adapter_id, ignore_errors=True)
            finally:
                lock.release()
            total -= sizes[adapter_id]
            self.evictions += 1
            evicted.append(adapter_id)
            self._used.pop(adapter_id, None)
            log_event(
                "adapter_cache_evicted",
                adapter=adapter_id,
                bytes=sizes[adapter_id],
                cache_bytes=total,
                budget_bytes=self.budget_bytes,
            )
        if total > self.budget_bytes:
            log_event(
                "adapter_cache_over_budget",
                logging.WARNING,
                cache_bytes=total,
                budget_bytes=self.budget_bytes,
                pinned=sorted(self.pinned()),
            )
        return evicted

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client()
        return self._client

    def _lock_for(self, adapter_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(adapter_id, threading.Lock())

    def fetch(self, adapter_id: str, pin: bool = False) -> Path:
        _check_id(adapter_id)
        path = self._fetch(adapter_id, pin)
        self.prune(keep=adapter_id)
        return path

    def _fetch(self, adapter_id: str, pin: bool) -> Path:
        dest = self.cache_dir / adapter_id
        with self._lock_for(adapter_id):
            if (dest / ADAPTER_CONFIG).is_file():
                self._touch(adapter_id, pin)
                with contextlib.suppress(OSError):
                    os.utime(dest)
                return dest
            if dest.exists():  # a stale, incomplete copy from an older layout: fetch again
                shutil.rmtree(dest, ignore_errors=True)
            key_prefix = f"{self.key_prefix}/{adapter_id}" if self.key_prefix else adapter_id
            try:
                count = download_s3_prefix(self.client, self.bucket, key_prefix, dest, recursive=False)
            except Exception as exc:
                code = _client_error_code(exc)
                if code in _MISSING_CODES:
                    raise AdapterNotFound(
                        f"adapter {adapter_id!r} not found under {self.description} ({code})"
                    ) from exc
                raise AdapterFetchFailed(
                    f"could not download adapter {adapter_id!r} from {self.description}: {exc}"
                ) from exc
            if count == 0:
                raise AdapterNotFound(f"adapter {adapter_id!r} not found under {self.description}")
            _check_folder(adapter_id, dest)
            self._touch(adapter_id, pin)
            return dest


def _client_error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def make_source(
    prefix: str | None, cache_dir: Path, client: Any | None = None, budget_bytes: int | None = None
) -> AdapterSource:
    """The source for ``FASTUNER_ADAPTER_PREFIX``: ``s3://...``, ``file:///...`` or a directory."""
    if not prefix:
        return NoSource()
    if prefix.startswith("s3://"):
        return S3Source(prefix, cache_dir, client, budget_bytes)
    if prefix.startswith("file://"):
        return LocalSource(Path(unquote(urlparse(prefix).path)))
    if "://" in prefix:
        raise ValueError(f"unsupported adapter prefix {prefix!r}: use s3://, file:// or a directory")
    return LocalSource(Path(prefix))


def resolve_base_model(base_model: str, cache_dir: Path, client: Any | None = None) -> str:
    """A local path or hub id as-is; ``file://`` as a path; ``s3://`` downloaded into the cache."""
    if base_model.startswith("file://"):
        return unquote(urlparse(base_model).path)
    if not base_model.startswith("s3://"):
        return base_model
    bucket, key_prefix = split_s3_uri(base_model)
    dest = cache_dir / "_base" / (key_prefix.replace("/", "__") or bucket)
    if (dest / "config.json").is_file():
        return str(dest)
    if download_s3_prefix(client or s3_client(), bucket, key_prefix, dest) == 0:
        raise FileNotFoundError(f"no base model under {base_model}")
    return str(dest)
