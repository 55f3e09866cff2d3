"""Adapters: list, get, and download as a .tar.gz of the PEFT folder."""

from __future__ import annotations

import io
import tarfile
import tempfile
from collections.abc import Iterator

from api.db import models
from api.db.repositories import adapters as repo
from api.db.session import Database
from api.domain.errors import NotFound
from api.domain.finetune import Adapter
from api.storage.base import ObjectStore

CHUNK = 1 << 20


class AdapterService:
    def __init__(self, db: Database, store: ObjectStore) -> None:
        self.db = db
        self.store = store

    def get(self, tenant_id: str, adapter_id: str) -> Adapter:
        with self.db.session() as session:
            return to_model(repo.require(session, tenant_id, adapter_id))

    def list_page(
        self, tenant_id: str, *, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[Adapter], str | None]:
        with self.db.session() as session:
            rows, next_cursor = repo.list_page(session, tenant_id, limit=limit, cursor=cursor)
            return [to_model(r) for r in rows], next_cursor

    def archive(self, tenant_id: str, adapter_id: str) -> Iterator[bytes]:
        """The adapter folder as a gzip'd tar stream (members relative to the folder)."""
        adapter = self.get(tenant_id, adapter_id)
        prefix = self.store.key_from_uri(adapter.uri).rstrip("/") + "/"
        infos = list(self.store.list(prefix))
        if not infos:
            raise NotFound(f"adapter {adapter_id} has no stored files")
        return self._stream(prefix, [i.key for i in infos])

    def _stream(self, prefix: str, keys: list[str]) -> Iterator[bytes]:
        # Spool to a temporary file (bounded memory), then stream it out in chunks.
        with tempfile.TemporaryFile() as spool:
            with tarfile.open(fileobj=spool, mode="w:gz") as tar:
                for key in keys:
                    data = self.store.get_bytes(key)
                    info = tarfile.TarInfo(name=key[len(prefix) :])
                    info.size = len(data)
                    info.mode = 0o644
                    tar.addfile(info, io.BytesIO(data))
            spool.seek(0)
            while chunk := spool.read(CHUNK):
                yield chunk


def to_model(row: models.AdapterRow) -> Adapter:
    return Adapter.model_validate(row, from_attributes=True)
