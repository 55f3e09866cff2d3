"""Migrations and tenant-scoped queries on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError

from api.db import models
from api.db.repositories import datasets as repo
from api.db.session import Database
from api.domain.ids import ID_MAX_LEN, new_id


def _dataset(tenant: str, at: datetime, **kw: object) -> models.DatasetRow:
    values: dict[str, object] = {
        "id": new_id("ds"),
        "tenant_id": tenant,
        "name": "n",
        "format": "chat",
        "task_type": "generation",
        "status": "ready",
        "seed": 1,
        "ratios": {},
        "row_counts": {"train": 1},
        "content_sha256": "0" * 64,
        "manifest_uri": "file:///m",
        "source_bytes": 1,
        "created_at": at,
    }
    values.update(kw)
    return models.DatasetRow(**values)


def test_migrations_create_every_table_and_are_idempotent(db_url: str) -> None:
    db = Database(db_url)
    db.migrate()
    db.migrate()
    tables = set(inspect(db.engine).get_table_names())
    assert set(models.Base.metadata.tables) <= tables
    assert "alembic_version" in tables
    db.dispose()


def test_ids_fit_their_columns(db_url: str) -> None:
    db = Database(db_url)
    db.migrate()
    long_id = "ds_" + "x" * (ID_MAX_LEN - 3)
    with db.session() as s:
        s.add(_dataset("t", datetime.now(UTC), id=long_id))
    with db.session() as s:
        assert repo.get(s, "t", long_id) is not None
    assert len(new_id("dep")) <= ID_MAX_LEN
    db.dispose()


def test_queries_are_tenant_scoped_and_paginate(db_url: str) -> None:
    db = Database(db_url)
    db.migrate()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [_dataset("a", t0 + timedelta(seconds=i)) for i in range(5)]
    with db.session() as s:
        s.add_all([*rows, _dataset("b", t0)])
    with db.session() as s:
        assert repo.get(s, "b", rows[0].id) is None
        first, cursor = repo.list_page(s, "a", limit=3, cursor=None)
        assert [r.id for r in first] == [r.id for r in reversed(rows)][:3]
        rest, end = repo.list_page(s, "a", limit=3, cursor=cursor)
        assert [r.id for r in rest] == [rows[1].id, rows[0].id] and end is None
        assert first[0].created_at.tzinfo is not None
    db.dispose()


def test_failed_unit_of_work_rolls_back(db_url: str) -> None:
    db = Database(db_url)
    db.migrate()
    dup = _dataset("a", datetime.now(UTC))
    with db.session() as s:
        s.add(dup)
    with pytest.raises(IntegrityError), db.session() as s:
        s.add(_dataset("a", datetime.now(UTC), id=new_id("ds")))
        s.flush()
        s.add(_dataset("a", datetime.now(UTC), id=dup.id))
    with db.session() as s:
        assert len(repo.list_page(s, "a", limit=10, cursor=None)[0]) == 1
    db.dispose()
