"""Shared fixtures: isolated settings, databases (SQLite and, when available, PostgreSQL), stores, app."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.retries.standard import ExponentialBackoff

from tests.support.aws import forget_hooks

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
# The per-tenant rate limit (api/ratelimit.py) has its own tests (tests/security/test_rate_limit.py);
# elsewhere tests fire requests far faster than a client would (the OpenAPI fuzzer: 1000+), so the
# limiter stays on but out of reach. Servers started as subprocesses inherit it.
os.environ.setdefault("FASTUNER_RATE_LIMIT", "1000/second")

PG_URL = os.environ.get("FASTUNER_TEST_POSTGRES_URL")


def _fresh_postgres(base_url: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = "ft_" + uuid.uuid4().hex[:12]
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every test using this runs on SQLite and on a real PostgreSQL (a fresh database each)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fastuner.db'}"
        return
    if not PG_URL:
        pytest.skip("FASTUNER_TEST_POSTGRES_URL not set (scripts/test.sh starts PostgreSQL)")
    yield from _fresh_postgres(PG_URL)


@pytest.fixture
def settings_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    from api.settings import Settings

    def make(**overrides: object) -> Settings:
        base: dict[str, object] = {
            "home": tmp_path / "home",
            "database_url": f"sqlite:///{tmp_path / 'home' / 'fastuner.db'}",
            "log_json": False,
        }
        base.update(overrides)
        return Settings(**base)  # type: ignore[arg-type]

    return make


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """botocore's retry delays recorded and skipped (they are seconds long under throttling)."""
    delays: list[int] = []

    def delay_amount(self: Any, context: Any) -> int:
        delays.append(context.attempt_number)
        return 0

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", delay_amount)
    return delays


@pytest.fixture(autouse=True)
def _forget_aws_hooks() -> Iterator[None]:
    """botocore handlers a test registered through ``tests.support.aws.hook`` end with it."""
    yield
    forget_hooks()
