"""The process-wide service container the routes depend on."""

from __future__ import annotations

from dataclasses import dataclass, field

from api.backends.base import ComputeBackend
from api.backends.endpoints import EndpointBackend
from api.backends.factory import make_backend, make_endpoint_backend
from api.db.session import Database
from api.services.adapters import AdapterService
from api.services.auth import AuthService
from api.services.datasets.service import DatasetService
from api.services.deployments import DeploymentService
from api.services.drops import DropService
from api.services.finetune.reconciler import Reconciler
from api.services.finetune.service import FineTuneService
from api.services.janitor import Janitor
from api.services.tenants import TenantService
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
    endpoints: EndpointBackend
    deployments: DeploymentService
    janitor: Janitor
    auth: AuthService
    tenants: TenantService
    drops: DropService = field(init=False)

    def __post_init__(self) -> None:
        self.drops = DropService(self.db, self.store, self.datasets, self.finetune, self.settings)

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        store: ObjectStore | None = None,
        backend: ComputeBackend | None = None,
        endpoints: EndpointBackend | None = None,
    ) -> AppContext:
        db = Database(settings.resolved_database_url)
        if settings.auto_migrate:
            db.migrate()
        store = store or make_store(settings)
        backend = backend or make_backend(settings, store)
        endpoints = endpoints or make_endpoint_backend(settings, store)
        datasets = DatasetService(db, store, settings)
        tenants = TenantService(db, settings)
        return cls(
            settings=settings,
            db=db,
            store=store,
            backend=backend,
            datasets=datasets,
            finetune=FineTuneService(db, datasets, backend, settings, tenants),
            reconciler=Reconciler(db, store, backend, settings),
            adapters=AdapterService(db, store),
            endpoints=endpoints,
            deployments=DeploymentService(db, endpoints, settings, tenants),
            janitor=Janitor(db, endpoints, settings),
            auth=AuthService(db),
            tenants=tenants,
        )

    def close(self) -> None:
        self.db.dispose()
