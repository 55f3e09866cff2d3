"""The process-wide service container the routes depend on."""

from __future__ import annotations

from dataclasses import dataclass

from api.backends.base import ComputeBackend
from api.backends.factory import make_backend
from api.db.session import Database
from api.services.adapters import AdapterService
from api.services.datasets.service import DatasetService
from api.services.finetune.reconciler import Reconciler
from api.services.finetune.service import FineTuneService
from api.settings import Settings
from api.storage.base import ObjectStore
from api.storage.factory import make_store


@dataclass
class AppContext:
    settings: Settings
    db: Database
    store: ObjectStore
    backend: ComputeBackend
    datasets: DatasetService
    finetune: FineTuneService
    reconciler: Reconciler
    adapters: AdapterService

    @classmethod
    def build(
        cls, settings: Settings, *, store: ObjectStore | None = None, backend: ComputeBackend | None = None
    ) -> AppContext:
        db = Database(settings.resolved_database_url)
        db.migrate()
        store = store or make_store(settings)
        backend = backend or make_backend(settings, store)
        datasets = DatasetService(db, store, settings)
        return cls(
            settings=settings,
            db=db,
            store=store,
            backend=backend,
            datasets=datasets,
            finetune=FineTuneService(db, datasets, backend, settings),
            reconciler=Reconciler(db, store, backend, settings),
            adapters=AdapterService(db, store),
        )

    def close(self) -> None:
        self.db.dispose()
