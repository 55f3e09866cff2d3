"""The process-wide service container the routes depend on."""

from __future__ import annotations

from dataclasses import dataclass

from api.db.session import Database
from api.services.datasets.service import DatasetService
from api.settings import Settings
from api.storage.base import ObjectStore
from api.storage.factory import make_store


@dataclass
class AppContext:
    settings: Settings
    db: Database
    store: ObjectStore
    datasets: DatasetService

    @classmethod
    def build(cls, settings: Settings, *, store: ObjectStore | None = None) -> AppContext:
        db = Database(settings.resolved_database_url)
        db.migrate()
        store = store or make_store(settings)
        return cls(
            settings=settings,
            db=db,
            store=store,
            datasets=DatasetService(db, store, settings),
        )

    def close(self) -> None:
        self.db.dispose()
