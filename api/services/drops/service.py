"""The drop-and-train service: the handler and its sources, wired to one store and database."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from api.db.models import utcnow
from api.db.session import Database
from api.services.datasets.service import DatasetService
from api.services.drops.handler import DropHandler, Outcome
from api.services.drops.keys import Location
from api.services.drops.ledger import Ledger
from api.services.drops.objects import Objects
from api.services.drops.sources import QueueSource, Scanner, Sweeper
from api.services.drops.status import StatusWriter
from api.services.finetune.service import FineTuneService
from api.settings import Settings
from api.storage.base import ObjectStore

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient


class DropService:
    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        datasets: DatasetService,
        finetune: FineTuneService,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.settings = settings
        self.location = Location.of(store)
        self.objects = Objects(store, settle_seconds=settings.drop_settle_seconds)
        self.ledger = Ledger(
            db,
            clock=clock,
            lease=timedelta(seconds=settings.drop_lease_seconds),
            retry_base=timedelta(seconds=settings.drop_retry_seconds),
            max_attempts=settings.drop_max_attempts,
        )
        self.handler = DropHandler(
            db=db,
            datasets=datasets,
            finetune=finetune,
            settings=settings,
            location=self.location,
            objects=self.objects,
            ledger=self.ledger,
            status=StatusWriter(store, self.location, clock),
        )
        self.scanner = Scanner(self.handler, self.objects, self.location, db, clock)
        self.sweeper = Sweeper(self.handler, self.location, db, clock)

    def scan_once(self) -> list[Outcome]:
        """One scanner pass over ``drop/`` plus the due retries (the API's background loop)."""
        return self.scanner.scan_once() + self.sweeper.sweep_once()

    def sweep_once(self) -> list[Outcome]:
        return self.sweeper.sweep_once()

    def queue(self, queue_url: str | None = None, *, client: SQSClient | None = None) -> QueueSource:
        url = queue_url or self.settings.drop_queue_url
        if not url:
            raise ValueError("no drop queue: set FASTUNER_DROP_QUEUE_URL")
        return QueueSource(self.handler, self.location, url, region=self.settings.aws_region, client=client)
