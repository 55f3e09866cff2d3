"""Drop keys: ``drop/{tenant}/<name>.jsonl`` in the store, and where a bucket key lands in it.

Only ``.jsonl`` objects directly under ``drop/`` are drops; the sidecar (``<name>.fastuner.json``)
and the outcome (``<name>.status.json``) sit beside them and never trigger anything. The name is
used as the dataset's display name only; every id derives from our own ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from api.domain.tenants import is_tenant_id
from api.storage.base import ObjectStore, check_key
from api.storage.s3 import S3Store

ROOT: Final = "drop/"
SUFFIX: Final = ".jsonl"
SIDECAR_SUFFIX: Final = ".fastuner.json"
STATUS_SUFFIX: Final = ".status.json"
NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9 ._+-]{0,99}$"
_NAME_RE: Final = re.compile(NAME_PATTERN)
LOCAL_BUCKET: Final = "local"


@dataclass(frozen=True)
class DropKey:
    """A drop candidate; ``problem`` says why it must be rejected (None: fine)."""

    key: str
    tenant_id: str  # "" when the tenant segment is not a valid tenant id
    name: str
    problem: str | None = None

    @property
    def stem(self) -> str:
        return self.key[: -len(SUFFIX)]

    @property
    def sidecar_key(self) -> str:
        return self.stem + SIDECAR_SUFFIX

    @property
    def status_key(self) -> str:
        return self.stem + STATUS_SUFFIX


def is_candidate(key: str) -> bool:
    """Whether an object under the store could be a drop (everything else is ignored silently)."""
    return key.startswith(ROOT) and key.endswith(SUFFIX) and len(key) > len(ROOT) + len(SUFFIX)


def parse(key: str) -> DropKey | None:
    """The drop a store key names, or None when it is no drop at all (or not a usable key)."""
    if not is_candidate(key):
        return None
    try:
        check_key(key)
    except ValueError:
        return None  # "drop//x.jsonl", "drop/../x.jsonl": nowhere safe to write a status
    parts = key[len(ROOT) :].split("/")
    tenant = parts[0] if is_tenant_id(parts[0]) else ""
    name = parts[-1][: -len(SUFFIX)]
    problem = None
    if len(parts) != 2:
        problem = f"drops go directly under drop/{{tenant}}/, not in sub-folders: {key}"
    elif not tenant:
        problem = (
            f"{parts[0]!r} is not a tenant id (1-40 characters of a-z, 0-9 and '-', starting and "
            "ending with a letter or digit)"
        )
    elif not _NAME_RE.fullmatch(name):
        problem = (
            f"{parts[-1]!r} is not a usable file name: up to 100 characters of letters, digits, "
            "space, '.', '_', '+' and '-', starting with a letter or digit"
        )
    return DropKey(key=key, tenant_id=tenant, name=name, problem=problem)


@dataclass(frozen=True)
class Location:
    """Maps bucket keys (what S3 events carry) to store keys, for the store's bucket and prefix."""

    bucket: str
    prefix: str = ""

    @classmethod
    def of(cls, store: ObjectStore) -> Location:
        if isinstance(store, S3Store):
            return cls(store.bucket, store.prefix)
        return cls(LOCAL_BUCKET)

    def store_key(self, bucket: str, bucket_key: str) -> str | None:
        """The store key of an object, or None for another bucket or outside the prefix."""
        if bucket != self.bucket or not bucket_key.startswith(self.prefix):
            return None
        return bucket_key[len(self.prefix) :]

    def bucket_key(self, store_key: str) -> str:
        return self.prefix + store_key
