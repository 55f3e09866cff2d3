"""Where drops come from; all three feed the one :class:`~api.services.drops.handler.DropHandler`.

* :class:`QueueSource`: S3 event notifications on SQS (the AWS path), long-polled.
* :class:`Scanner`: lists ``drop/`` (the local store, or buckets without notifications).
* :class:`Sweeper`: the ledger's own retries: pending drops that are due, and drops whose worker
  died (lapsed lease). Because of it an SQS message can be deleted as soon as the ledger knows
  the drop, so a long quota wait never ends in the dead-letter queue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from api.db.repositories import drops as repo
from api.db.session import Database
from api.domain.drops import DropRef
from api.logging import get_logger
from api.services.drops import keys
from api.services.drops.events import MalformedMessage, parse_message
from api.services.drops.handler import DropHandler, Outcome
from api.services.drops.keys import Location
from api.services.drops.objects import Objects

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

log = get_logger("drops")
SQS_CONFIG = Config(retries={"mode": "standard", "max_attempts": 8})


class Scanner:
    def __init__(
        self,
        handler: DropHandler,
        objects: Objects,
        location: Location,
        db: Database,
        clock: Callable[[], datetime],
    ) -> None:
        self.handler = handler
        self.objects = objects
        self.location = location
        self.db = db
        self.clock = clock

    def scan_once(self) -> list[Outcome]:
        """Hand every settled ``drop/**.jsonl`` object the ledger has no say on to the handler."""
        seen = [s for s in self.objects.list(keys.ROOT, keys.is_candidate) if s.settled]
        with self.db.session() as session:
            done = repo.settled_identities(
                session, self.location.bucket, [self.location.bucket_key(s.key) for s in seen], self.clock()
            )
        outcomes = []
        for obj in seen:
            if (self.location.bucket_key(obj.key), obj.etag) in done:
                continue
            try:
                outcomes.append(self.handler.handle(DropRef(obj.key, obj.etag)))
            except Exception:  # one broken object must not stop the others
                log.exception("drop scan failed for one object", extra={"drop_key": obj.key})
        return outcomes


class Sweeper:
    def __init__(
        self, handler: DropHandler, location: Location, db: Database, clock: Callable[[], datetime]
    ) -> None:
        self.handler = handler
        self.location = location
        self.db = db
        self.clock = clock

    def sweep_once(self, limit: int = 100) -> list[Outcome]:
        with self.db.session() as session:
            due = repo.due(session, self.location.bucket, self.clock(), limit)
            rows = [(r.id, r.key, r.etag, r.version_id) for r in due]
        outcomes = []
        for row_id, bucket_key, etag, version_id in rows:
            key = self.location.store_key(self.location.bucket, bucket_key)
            if key is None:
                continue  # another prefix of the same bucket: not ours
            try:
                outcome = self.handler.handle(DropRef(key, etag, version_id))
                if outcome.action == "ignored":  # the version is gone: nothing left to retry
                    with self.db.session() as session:
                        repo.forget(session, row_id, self.clock())
                outcomes.append(outcome)
            except Exception:
                log.exception("drop retry failed", extra={"drop_key": key})
        return outcomes


@dataclass
class Polled:
    message_ids: set[str] = field(default_factory=set)
    outcomes: list[Outcome] = field(default_factory=list)


class QueueSource:
    """One receive of up to 10 messages per :meth:`poll`.

    A message is deleted once every object it announces is handled (the ledger then owns any
    retry); one that is not an S3 notification stays, so the queue's redrive policy moves it to
    the dead-letter queue after ``maxReceiveCount`` receives; one whose handling raised (the
    database is down, say) stays and comes back after the visibility timeout.
    """

    def __init__(
        self,
        handler: DropHandler,
        location: Location,
        queue_url: str,
        *,
        region: str | None = None,
        client: SQSClient | None = None,
    ) -> None:
        self.handler = handler
        self.location = location
        self.queue_url = queue_url
        self.client: SQSClient = client or boto3.client("sqs", region_name=region, config=SQS_CONFIG)

    def poll(self, wait_seconds: int) -> Polled:
        resp = self.client.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        polled = Polled()
        for message in resp.get("Messages", []):
            polled.message_ids.add(message.get("MessageId", ""))
            polled.outcomes += self._one(message)
        return polled

    def _one(self, message: MessageTypeDef) -> list[Outcome]:
        extra = {
            "message_id": message.get("MessageId"),
            "receive_count": message.get("Attributes", {}).get("ApproximateReceiveCount"),
        }
        try:
            announced = parse_message(message.get("Body", ""))
        except MalformedMessage as exc:
            extra["error"] = str(exc)
            log.error("drop message is not an S3 notification; left for the dead-letter queue", extra=extra)
            return []
        outcomes = []
        try:
            for obj in announced:
                key = self.location.store_key(obj.bucket, obj.key)
                if key is None:
                    outcomes.append(Outcome("ignored", obj.key, f"not in this store ({obj.bucket})"))
                    continue
                outcomes.append(self.handler.handle(DropRef(key, obj.etag, obj.version_id)))
        except Exception:
            log.exception("drop message failed; it comes back after the visibility timeout", extra=extra)
            return outcomes
        try:
            self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        except (ClientError, BotoCoreError):  # e.g. the visibility timeout ran out meanwhile
            log.warning("could not delete a handled drop message", extra=extra, exc_info=True)
        return outcomes
