"""Dataset use-cases: create (validate → split → store → row), list, get, preview, delete."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import faults
from api.db import models
from api.db.repositories import datasets as repo
from api.db.session import Database
from api.domain.datasets import (
    SPLIT_NAMES,
    Dataset,
    DatasetOptions,
    Manifest,
    SplitFile,
    SplitRatios,
    ValidationReport,
)
from api.domain.enums import DatasetFormat, DatasetStatus, TaskType
from api.domain.errors import BadRequest, Conflict, NotFound, StorageError, ValidationFailed
from api.domain.ids import has_prefix, new_id
from api.logging import get_logger
from api.services import scratch
from api.services.datasets.pipeline import PipelineResult, process
from api.settings import Settings
from api.storage.base import ObjectStore

log = get_logger("datasets")

MAX_PREVIEW_ROWS = 100


def dataset_prefix(tenant_id: str, dataset_id: str) -> str:
    return f"{tenant_id}/datasets/{dataset_id}"


def split_key(tenant_id: str, dataset_id: str, split: str) -> str:
    return f"{dataset_prefix(tenant_id, dataset_id)}/{split}.jsonl"


@dataclass(frozen=True)
class _Upload:
    """A validated upload on its way into the store."""

    tenant_id: str
    dataset_id: str
    source: Path
    options: DatasetOptions
    result: PipelineResult
    filename: str | None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def prefix(self) -> str:
        return dataset_prefix(self.tenant_id, self.dataset_id)

    def manifest(self, splits: dict[str, SplitFile]) -> Manifest:
        report = self.result.report
        assert report.format is not None and report.content_sha256 is not None
        return Manifest(
            dataset_id=self.dataset_id,
            name=self.options.name,
            tenant_id=self.tenant_id,
            format=report.format,
            task_type=self.options.task_type,
            seed=self.options.seed,
            ratios=self.options.split,
            content_sha256=report.content_sha256,
            source_filename=self.filename,
            source_bytes=self.source.stat().st_size,
            splits=splits,
            report=report,
            created_at=self.created_at,
        )

    def row(self, manifest: Manifest, manifest_uri: str) -> models.DatasetRow:
        return models.DatasetRow(
            id=self.dataset_id,
            tenant_id=self.tenant_id,
            name=manifest.name,
            format=manifest.format.value,
            task_type=manifest.task_type.value,
            status=DatasetStatus.READY.value,
            seed=manifest.seed,
            ratios=manifest.ratios.model_dump(),
            row_counts={name: s.rows for name, s in manifest.splits.items()},
            content_sha256=manifest.content_sha256,
            manifest_uri=manifest_uri,
            source_bytes=manifest.source_bytes,
            created_at=self.created_at,
        )


class DatasetService:
    def __init__(self, db: Database, store: ObjectStore, settings: Settings) -> None:
        self.db = db
        self.store = store
        self.settings = settings

    # -- validation ---------------------------------------------------------------------------
    def validate(self, source: Path, options: DatasetOptions) -> ValidationReport:
        """Dry run: the full report, nothing stored."""
        return process(source, options, None).report

    # -- create -------------------------------------------------------------------------------
    def create(
        self,
        tenant_id: str,
        source: Path,
        options: DatasetOptions,
        *,
        filename: str | None = None,
        dataset_id: str | None = None,
    ) -> Dataset:
        """Validate, split and store; the row is written only after every object is in the store.

        Any failure removes what was written, so neither objects nor a row are left behind.
        ``dataset_id`` (allocated by a caller that may retry, e.g. a drop) makes the call
        idempotent: if that dataset exists, it is returned as it is.
        """
        if dataset_id is not None:
            if not has_prefix(dataset_id, "ds"):
                raise ValueError(f"not a dataset id: {dataset_id!r}")
            existing = self._find(tenant_id, dataset_id)
            if existing is not None:
                return existing
        dataset_id = dataset_id or new_id("ds")
        faults.point("dataset.before_process")
        # Split files go to this process's owned scratch and the objects under a claimed prefix:
        # after a crash the sweep removes both (api.services.sweep); meanwhile it leaves them be.
        with (
            scratch.claim(dataset_prefix(tenant_id, dataset_id)),
            scratch.directory(self.settings.work_dir, f"{dataset_id}-") as out_dir,
        ):
            result = process(source, options, out_dir)
            faults.point("dataset.after_split")
            if not result.report.ok:
                raise ValidationFailed(_failure_summary(result.report), details=result.report.model_dump())
            return self._store(_Upload(tenant_id, dataset_id, source, options, result, filename))

    def _store(self, up: _Upload) -> Dataset:
        try:
            manifest = self._put_objects(up)
        except Exception as exc:
            self._cleanup(up.prefix)
            log.error("storing dataset failed", extra={"dataset_id": up.dataset_id, "error": str(exc)})
            raise StorageError(f"could not store dataset {up.dataset_id}: {exc}") from exc
        faults.point("dataset.before_row")
        row = up.row(manifest, self.store.uri(f"{up.prefix}/manifest.json"))
        try:
            with self.db.session() as session:
                session.add(row)
        except IntegrityError:
            # A concurrent create of the same pre-allocated id won: the objects are its (splits are
            # byte-for-byte reproducible), so they stay.
            existing = self._find(up.tenant_id, up.dataset_id)
            if existing is None:
                self._cleanup(up.prefix)
                raise
            return existing
        except BaseException:
            self._cleanup(up.prefix)
            raise
        log.info("dataset stored", extra={"dataset_id": up.dataset_id, "rows": row.row_counts})
        return to_model(row)

    def _put_objects(self, up: _Upload) -> Manifest:
        """Split files first, the manifest last: a manifest means the dataset is whole."""
        splits: dict[str, SplitFile] = {}
        for name, out in up.result.splits.items():
            key = split_key(up.tenant_id, up.dataset_id, name)
            self.store.put_file(key, out.path)
            faults.point("dataset.after_first_object")
            splits[name] = SplitFile(
                uri=self.store.uri(key), rows=out.rows, sha256=out.sha256, bytes=out.bytes
            )
        manifest = up.manifest(splits)
        self.store.put_bytes(f"{up.prefix}/manifest.json", manifest.model_dump_json(indent=2).encode())
        return manifest

    def _cleanup(self, prefix: str) -> None:
        try:
            self.store.delete_prefix(prefix + "/")
        except Exception:  # never mask the original error
            log.exception("cleanup of %s failed", prefix)

    # -- read ---------------------------------------------------------------------------------
    def get(self, tenant_id: str, dataset_id: str) -> Dataset:
        with self.db.session() as session:
            return to_model(self._row(session, tenant_id, dataset_id))

    def list_page(
        self, tenant_id: str, *, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[Dataset], str | None]:
        with self.db.session() as session:
            rows, next_cursor = repo.list_page(session, tenant_id, limit=limit, cursor=cursor)
            return [to_model(r) for r in rows], next_cursor

    def manifest(self, tenant_id: str, dataset_id: str) -> Manifest:
        ds = self.get(tenant_id, dataset_id)
        raw = self.store.get_bytes(self.store.key_from_uri(ds.manifest_uri))
        return Manifest.model_validate_json(raw)

    def preview(
        self, tenant_id: str, dataset_id: str, *, split: str = "train", limit: int = 10
    ) -> list[dict[str, Any]]:
        if split not in SPLIT_NAMES:
            raise BadRequest(f"split must be one of {', '.join(SPLIT_NAMES)}")
        if not 1 <= limit <= MAX_PREVIEW_ROWS:
            raise BadRequest(f"limit must be between 1 and {MAX_PREVIEW_ROWS}")
        ds = self.get(tenant_id, dataset_id)
        if ds.row_counts.get(split, 0) == 0:
            return []
        rows: list[dict[str, Any]] = []
        with self.store.open_read(split_key(tenant_id, dataset_id, split)) as fh:
            for line in fh:
                if len(rows) >= limit:
                    break
                rows.append(json.loads(line))
        return rows

    # -- delete -------------------------------------------------------------------------------
    def delete(self, tenant_id: str, dataset_id: str) -> None:
        with self.db.session() as session:
            row = self._row(session, tenant_id, dataset_id)
            active = repo.active_jobs_using(session, tenant_id, dataset_id)
            if active:
                raise Conflict(
                    f"dataset {dataset_id} is used by running job(s) {', '.join(active)}; cancel them first",
                    details={"jobs": active},
                )
            row.status = DatasetStatus.DELETING.value
        # Objects first: a failure here leaves a 'deleting' row that a retried DELETE finishes.
        try:
            self.store.delete_prefix(dataset_prefix(tenant_id, dataset_id) + "/")
        except Exception as exc:
            raise StorageError(f"could not delete objects of {dataset_id}: {exc}") from exc
        with self.db.session() as session:
            row = self._row(session, tenant_id, dataset_id)
            if repo.any_jobs_using(session, tenant_id, dataset_id):
                row.status = DatasetStatus.DELETED.value  # keep lineage for past jobs
            else:
                session.delete(row)
        log.info("dataset deleted", extra={"dataset_id": dataset_id})

    def _find(self, tenant_id: str, dataset_id: str) -> Dataset | None:
        with self.db.session() as session:
            row = repo.get(session, tenant_id, dataset_id)
            return to_model(row) if row is not None and row.status == DatasetStatus.READY.value else None

    def _row(self, session: Session, tenant_id: str, dataset_id: str) -> models.DatasetRow:
        row = repo.get(session, tenant_id, dataset_id)
        if row is None or row.status == DatasetStatus.DELETED.value:
            raise NotFound(f"dataset {dataset_id} not found")
        return row


def to_model(row: models.DatasetRow) -> Dataset:
    return Dataset(
        id=row.id,
        name=row.name,
        format=DatasetFormat(row.format),
        task_type=TaskType(row.task_type),
        status=DatasetStatus(row.status),
        seed=row.seed,
        ratios=SplitRatios.model_validate(row.ratios),
        row_counts=dict(row.row_counts),
        content_sha256=row.content_sha256,
        manifest_uri=row.manifest_uri,
        source_bytes=row.source_bytes,
        created_at=row.created_at,
    )


def _failure_summary(report: ValidationReport) -> str:
    parts = [f"{g.count} × {g.code}" for g in report.errors]
    return "dataset failed validation: " + ("; ".join(parts) if parts else "no usable rows")
