"""The sweep: nothing an interrupted upload wrote outlives it.

An upload (a dataset through the API or a drop, an adapter registered by the reconciler) writes
scratch in ``{home}/work`` and then objects in the store, and only then the row that owns them. A
process killed anywhere on the way leaves bytes no row points at. One pass of :meth:`Sweeper.run_once`
removes:

* the scratch of dead processes (owner folders whose lease is free, :mod:`api.services.scratch`),
  and older scratch names once unchanged for the grace;
* partial writes in the store (the local store's ``.tmp-*`` files, S3's incomplete multipart
  uploads) begun before the grace;
* objects under ``{tenant}/datasets/{id}/`` and ``{tenant}/adapters/{id}/`` when no row has that
  id and nothing under the prefix changed for the grace.

Live data is never touched: a prefix whose id has a row (any tenant, any status) is skipped, the
row is looked up again right before a delete, a prefix this process is writing is skipped
(:func:`api.services.scratch.claimed`), and every other write in progress is younger than the
grace. The API runs a pass at startup and every ``sweep_interval_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from sqlalchemy import select, union

from api.db import models
from api.db.session import Database
from api.logging import get_logger
from api.services import scratch
from api.settings import Settings
from api.storage.base import ObjectStore

log = get_logger("sweep")

# Store folders whose objects belong to one row each: {tenant}/{kind}/{id}/...
OWNED_KINDS: dict[str, type[models.DatasetRow] | type[models.AdapterRow]] = {
    "datasets": models.DatasetRow,
    "adapters": models.AdapterRow,
}
_IN_CHUNK = 500


@runtime_checkable
class PartialSweeping(Protocol):
    def sweep_partials(self, older_than: float, prefix: str = "") -> tuple[int, int]: ...


@dataclass
class SweepReport:
    scratch_removed: list[str] = field(default_factory=list)
    scratch_bytes: int = 0
    partials_removed: int = 0
    partial_bytes: int = 0
    prefixes_removed: list[str] = field(default_factory=list)
    object_bytes: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return self.scratch_bytes + self.partial_bytes + self.object_bytes


@dataclass
class _Group:
    objects: int = 0
    bytes: int = 0
    newest: datetime | None = None
    unknown_age: bool = False


class Sweeper:
    def __init__(
        self, db: Database, store: ObjectStore, settings: Settings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.store = store
        self.settings = settings
        self.clock = clock

    def run_once(self) -> SweepReport:
        report = SweepReport()
        grace = self.settings.sweep_grace_seconds
        cutoff = self.clock() - grace
        try:
            swept = scratch.sweep(self.settings.work_dir, grace)
            report.scratch_removed, report.scratch_bytes = swept.removed, swept.bytes
        except Exception as exc:
            log.exception("scratch sweep failed")
            report.errors.append(f"scratch: {exc}")
        if isinstance(self.store, PartialSweeping):
            try:
                report.partials_removed, report.partial_bytes = self.store.sweep_partials(cutoff)
            except Exception as exc:
                log.exception("store partials sweep failed")
                report.errors.append(f"partials: {exc}")
        try:
            tenants = self._tenants()
        except Exception as exc:
            log.exception("sweep could not list tenants")
            report.errors.append(f"tenants: {exc}")
            tenants = []
        for tenant_id in tenants:
            for kind, table in OWNED_KINDS.items():
                try:
                    self._orphans(tenant_id, kind, table, datetime.fromtimestamp(cutoff, UTC), report)
                except Exception as exc:
                    log.exception("orphan sweep failed", extra={"tenant_id": tenant_id, "kind": kind})
                    report.errors.append(f"{tenant_id}/{kind}: {exc}")
        if report.bytes or report.prefixes_removed:
            log.info(
                "sweep removed orphans",
                extra={
                    "scratch": len(report.scratch_removed),
                    "partials": report.partials_removed,
                    "prefixes": report.prefixes_removed,
                    "bytes": report.bytes,
                },
            )
        return report

    def _tenants(self) -> list[str]:
        """Every tenant that could own objects: has a row, a key, a dataset, a job or an adapter."""
        query = union(
            select(models.TenantRow.id),
            select(models.ApiKeyRow.tenant_id),
            select(models.DatasetRow.tenant_id),
            select(models.FineTuneJobRow.tenant_id),
            select(models.AdapterRow.tenant_id),
        )
        with self.db.session() as session:
            return sorted({str(t) for t in session.execute(query).scalars()})

    def _orphans(
        self,
        tenant_id: str,
        kind: str,
        table: type[models.DatasetRow] | type[models.AdapterRow],
        cutoff: datetime,
        report: SweepReport,
    ) -> None:
        base = f"{tenant_id}/{kind}/"
        groups: dict[str, _Group] = {}
        for info in self.store.list(base):
            owner_id = info.key[len(base) :].split("/", 1)[0]
            if not owner_id or "/" not in info.key[len(base) :]:
                continue  # an object directly under {kind}/ belongs to no id: not ours to judge
            group = groups.setdefault(owner_id, _Group())
            group.objects += 1
            group.bytes += info.size
            if info.modified is None:
                group.unknown_age = True
            elif group.newest is None or info.modified > group.newest:
                group.newest = info.modified
        if not groups:
            return
        owned = self._existing(table, groups)
        for owner_id, group in sorted(groups.items()):
            prefix = f"{base}{owner_id}"
            if owner_id in owned or scratch.claimed(prefix):
                continue
            if group.unknown_age or group.newest is None or group.newest >= cutoff:
                continue
            with self.db.session() as session:  # again, right before deleting
                if session.get(table, owner_id) is not None:
                    continue
            self.store.delete_prefix(prefix + "/")
            report.prefixes_removed.append(prefix)
            report.object_bytes += group.bytes
            log.warning(
                "removed objects with no row",
                extra={"prefix": prefix, "objects": group.objects, "bytes": group.bytes},
            )

    def _existing(
        self, table: type[models.DatasetRow] | type[models.AdapterRow], ids: Iterable[str]
    ) -> set[str]:
        wanted = sorted(ids)
        found: set[str] = set()
        with self.db.session() as session:
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                found.update(
                    str(i) for i in session.execute(select(table.id).where(table.id.in_(chunk))).scalars()
                )
        return found
