"""Exactly one job per object version: duplicates, racing workers, crashes and redelivery.

The race tests run on SQLite and, with FASTUNER_TEST_POSTGRES_URL set, on PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from api.domain.drops import DropRef
from api.services.drops import Outcome
from tests.drops.conftest import MakeWorld
from tests.drops.support import (
    SMOL,
    World,
    datasets,
    drop,
    jobs,
    jsonl,
    ledger,
    rows,
    set_job_quota,
    status_of,
)
from tests.support.threads import race

SIDECAR = {"job": {"base_model": SMOL, "max_steps": 40}}
WORKERS = 4


Hook = Callable[[], None]


def nothing() -> None:
    return None


class Crash(BaseException):
    """A worker dying mid-drop (not an Exception: nothing in the worker may catch it)."""


class Gated:
    """A FineTuneService whose ``start`` runs ``before`` and ``after`` hooks around the real one."""

    def __init__(self, inner: Any, before: Hook = nothing, after: Hook = nothing) -> None:
        self._inner, self._before, self._after = inner, before, after

    def start(self, *args: Any, **kwargs: Any) -> Any:
        self._before()
        result = self._inner.start(*args, **kwargs)
        self._after()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _worker_with(world: World, **hooks: Callable[[], None]) -> Any:
    service = world.worker()
    service.handler.finetune = Gated(world.ctx.finetune, **hooks)
    return service


def test_duplicate_events_make_one_job(world: World) -> None:
    key = drop(world.store, "dup", jsonl(rows()), sidecar=SIDECAR)
    etag = world.ctx.drops.objects.current(key)
    assert etag is not None
    handler = world.ctx.drops.handler

    actions = [handler.handle(DropRef(key, etag.etag)).action for _ in range(3)]
    actions += [o.action for o in world.ctx.drops.scan_once()]
    actions.append(handler.handle(DropRef(key)).action)  # an event without an etag

    assert actions == ["started", "skipped", "skipped", "skipped"]
    assert len(jobs(world.ctx)) == 1 and len(datasets(world.ctx)) == 1 and len(ledger(world.ctx)) == 1


def test_racing_workers_make_one_job(db_url: str, make_world: MakeWorld) -> None:
    world = make_world(db_url)
    key = drop(world.store, "race", jsonl(rows()), sidecar=SIDECAR)
    seen = world.ctx.drops.objects.current(key)
    assert seen is not None
    workers = [world.worker() for _ in range(WORKERS)]

    outcomes = race([lambda w=w: w.handler.handle(DropRef(key, seen.etag)) for w in workers])

    assert sorted(o.action for o in outcomes) == ["skipped"] * (WORKERS - 1) + ["started"]
    assert len(jobs(world.ctx)) == 1 and len(datasets(world.ctx)) == 1
    assert len(world.backend.started) == 1


def test_racing_scanners_and_sweeps_on_a_due_retry_make_one_job(db_url: str, make_world: MakeWorld) -> None:
    world = make_world(db_url)
    set_job_quota(world, 0)
    drop(world.store, "retry", jsonl(rows()), sidecar=SIDECAR)
    assert [o.action for o in world.ctx.drops.scan_once()] == ["pending"]
    set_job_quota(world, None)
    world.clock.advance(61)
    workers = [world.worker() for _ in range(WORKERS)]

    calls: list[Callable[[], list[Outcome]]] = [w.scan_once for w in workers[:2]]
    calls += [w.sweep_once for w in workers[2:]]
    results = race(calls)

    actions = [o.action for r in results for o in r]
    assert actions.count("started") == 1 and set(actions) <= {"started", "skipped"}
    assert len(jobs(world.ctx)) == 1 and len(world.backend.started) == 1
    assert len(datasets(world.ctx)) == 1


def test_crash_after_the_job_then_redelivery_makes_one_job(world: World) -> None:
    key = drop(world.store, "crash", jsonl(rows()), sidecar=SIDECAR)

    def die() -> None:
        raise Crash

    doomed = _worker_with(world, after=die)
    with pytest.raises(Crash):
        doomed.scan_once()
    (job,) = jobs(world.ctx)
    (row,) = ledger(world.ctx)
    assert row.status == "processing" and row.job_id is None  # died before recording the job

    # Redelivered while the dead worker's lease still runs: nobody takes it yet.
    assert [o.action for o in world.ctx.drops.scan_once()] == []
    assert world.ctx.drops.handler.handle(DropRef(key)).action == "skipped"
    assert world.ctx.drops.sweep_once() == []

    world.clock.advance(world.settings.drop_lease_seconds + 1)
    outcomes = world.ctx.drops.sweep_once()

    assert [(o.action, o.job_id) for o in outcomes] == [("started", job.id)]
    assert [j.id for j in jobs(world.ctx)] == [job.id] and len(datasets(world.ctx)) == 1
    assert status_of(world.store, key)["job_id"] == job.id
    assert ledger(world.ctx)[0].attempts == 2
    assert len(world.backend.started) == 1


def test_crash_after_the_dataset_reuses_it(world: World) -> None:
    drop(world.store, "crash2", jsonl(rows()), sidecar=SIDECAR)

    def die() -> None:
        raise Crash

    with pytest.raises(Crash):
        _worker_with(world, before=die).scan_once()
    (ds,) = datasets(world.ctx)
    assert jobs(world.ctx) == []

    world.clock.advance(world.settings.drop_lease_seconds + 1)
    assert [o.action for o in world.ctx.drops.scan_once()] == ["started"]
    assert [d.id for d in datasets(world.ctx)] == [ds.id]
    assert jobs(world.ctx)[0].dataset_id == ds.id


def test_a_slow_worker_overtaken_after_its_lease_still_makes_one_job(
    db_url: str, make_world: MakeWorld
) -> None:
    """The lease is an optimisation; the dataset id and the idempotency key make it exactly once."""
    world = make_world(db_url)
    key = drop(world.store, "slow", jsonl(rows()), sidecar=SIDECAR)
    entered, release = threading.Event(), threading.Event()

    def stall() -> None:
        entered.set()
        assert release.wait(30)

    slow = _worker_with(world, before=stall)
    result: list[Outcome] = []
    thread = threading.Thread(target=lambda: result.append(slow.handler.handle(DropRef(key))))
    thread.start()
    assert entered.wait(30)  # the slow worker has its dataset and is about to start the job
    world.clock.advance(world.settings.drop_lease_seconds + 1)
    fast = world.worker().handler.handle(DropRef(key))
    release.set()
    thread.join(30)

    assert fast.action == "started" and result[0].action == "started"
    assert fast.job_id == result[0].job_id and fast.dataset_id == result[0].dataset_id
    assert len(jobs(world.ctx)) == 1 and len(datasets(world.ctx)) == 1
    assert len(world.backend.started) == 1
    assert ledger(world.ctx)[0].status == "started"
