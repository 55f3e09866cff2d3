"""Writes ``<name>.status.json`` beside a drop, so a user with only S3 access sees what happened."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from api.domain.drops import DropState, DropStatus
from api.services.drops.keys import DropKey, Location
from api.storage.base import ObjectStore


class StatusWriter:
    def __init__(self, store: ObjectStore, location: Location, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.location = location
        self.clock = clock

    def write(self, drop: DropKey, etag: str, state: DropState, message: str, **fields: Any) -> DropStatus:
        doc = DropStatus(
            state=state,
            object=self.location.bucket_key(drop.key),
            etag=etag,
            message=message,
            updated_at=self.clock(),
            **fields,
        )
        self.store.put_bytes(drop.status_key, doc.model_dump_json(indent=2, exclude_none=True).encode())
        return doc

    def read(self, drop: DropKey) -> DropStatus | None:
        try:
            return DropStatus.model_validate_json(self.store.get_bytes(drop.status_key))
        except FileNotFoundError:
            return None
