from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from api.context import AppContext
from api.settings import Settings
from tests.drops.support import Clock, RecordingBackend, World, add_tenant

MakeWorld = Callable[..., World]


@pytest.fixture(autouse=True)
def _every_log_record_is_built(caplog: pytest.LogCaptureFixture) -> None:
    """Log calls at every level really run (a bad ``extra`` key fails the test, not production)."""
    caplog.set_level(logging.DEBUG, logger="fastuner")


@pytest.fixture
def make_world(tmp_path: Path) -> Iterator[MakeWorld]:
    worlds: list[World] = []

    def make(database_url: str | None = None, **overrides: Any) -> World:
        home = tmp_path / f"home{len(worlds)}"
        values: dict[str, Any] = {
            "home": home,
            "database_url": database_url or f"sqlite:///{home / 'fastuner.db'}",
            "store_root": tmp_path / "store",
            "log_json": False,
            "background_tasks": False,
            "drop_settle_seconds": 0,
        }
        values.update(overrides)
        settings = Settings(**values)
        backend = RecordingBackend()
        ctx = AppContext.build(settings, backend=backend)
        world = World(settings, ctx, backend, Clock())
        ctx.drops = world.worker()  # the app's own drop service, on the test's clock
        add_tenant(ctx)
        worlds.append(world)
        return world

    yield make
    for w in worlds:
        w.ctx.close()


@pytest.fixture
def world(make_world: MakeWorld) -> World:
    return make_world()
