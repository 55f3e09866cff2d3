"""Drop-and-train on the local store with the scanner: the embedded default's path."""

from __future__ import annotations

import os
import threading
import time

from api.domain.drops import DropRef
from api.domain.errors import BackendError
from api.services.drops.worker import DropWorker
from tests.drops.conftest import MakeWorld
from tests.drops.support import (
    SMOL,
    TENANT,
    World,
    bad_jsonl,
    datasets,
    drop,
    jobs,
    jsonl,
    ledger,
    rows,
    set_job_quota,
    status_of,
)

SIDECAR = {"job": {"base_model": SMOL, "max_steps": 40}}


def test_drop_becomes_dataset_and_job_and_status(world: World) -> None:
    key = drop(world.store, "reviews", jsonl(rows()), sidecar=SIDECAR)

    outcomes = world.ctx.drops.scan_once()

    assert [o.action for o in outcomes] == ["started"]
    (job,) = jobs(world.ctx)
    (ds,) = datasets(world.ctx)
    assert job.tenant_id == TENANT and job.dataset_id == ds.id and job.base_model == SMOL
    assert job.idempotency_key == f"drop-{ledger(world.ctx)[0].id}"
    assert ds.name == "reviews" and ds.tenant_id == TENANT
    assert [s.job_id for s in world.backend.started] == [job.id]
    status = status_of(world.store, key)
    assert status["state"] == "started"
    assert (status["dataset_id"], status["job_id"], status["object"]) == (ds.id, job.id, key)
    assert status["job_status"] == "provisioning"
    (row,) = ledger(world.ctx)
    assert (row.status, row.dataset_id, row.job_id, row.lease_owner) == ("started", ds.id, job.id, None)

    assert world.ctx.drops.scan_once() == []  # finished: not even looked at again
    assert len(jobs(world.ctx)) == 1


def test_sidecar_options_are_honoured(world: World) -> None:
    sidecar = {
        "dataset": {"name": "sentiment v2", "task_type": "classification", "split": "0.7,0.2,0.1", "seed": 7},
        "job": {
            "base_model": SMOL,
            "max_steps": 12,
            "lora_r": 4,
            "learning_rate": 0.001,
            "hyperparameters": {"target_s": 0.02},
        },
    }
    drop(world.store, "sent", jsonl(rows(label=True)), sidecar=sidecar)

    world.ctx.drops.scan_once()

    (ds,) = datasets(world.ctx)
    (job,) = jobs(world.ctx)
    assert (ds.name, ds.task_type, ds.seed) == ("sentiment v2", "classification", 7)
    assert ds.ratios == {"train": 0.7, "validation": 0.2, "test": 0.1}
    hp = job.hyperparameters
    assert (hp["max_steps"], hp["lora_r"], hp["learning_rate"], hp["target_s"]) == (
        "12",
        "4",
        "0.001",
        "0.02",
    )


def test_default_base_model_from_settings(make_world: MakeWorld) -> None:
    world = make_world(drop_default_base_model=SMOL)
    drop(world.store, "plain", jsonl(rows()))
    assert [o.action for o in world.ctx.drops.scan_once()] == ["started"]
    assert jobs(world.ctx)[0].base_model == SMOL


def test_bad_file_is_rejected_with_line_numbers_and_leaves_nothing(world: World) -> None:
    key = drop(world.store, "broken", bad_jsonl(), sidecar=SIDECAR)

    assert [o.action for o in world.ctx.drops.scan_once()] == ["rejected"]

    status = status_of(world.store, key)
    assert status["state"] == "rejected" and "failed validation" in status["message"]
    lines = {g["code"]: g["lines"] for g in status["report"]["errors"]}
    assert 5 in next(v for c, v in lines.items() if "json" in c)
    assert any(9 in v for v in lines.values())
    assert jobs(world.ctx) == [] and datasets(world.ctx) == [] and world.backend.started == []
    assert [i.key for i in world.store.list(f"{TENANT}/")] == []  # no orphan dataset objects
    assert ledger(world.ctx)[0].status == "rejected"
    assert world.ctx.drops.scan_once() == []  # final


def test_bad_sidecar_is_rejected_before_any_data_is_stored(world: World) -> None:
    key = drop(
        world.store, "x", jsonl(rows()), sidecar={"job": {"base_model": SMOL, "lora_r": 0, "colour": 1}}
    )

    assert [o.action for o in world.ctx.drops.scan_once()] == ["rejected"]

    status = status_of(world.store, key)
    assert any(e.startswith("job.colour") for e in status["errors"])
    assert datasets(world.ctx) == [] and jobs(world.ctx) == []


def test_sidecar_that_is_not_json_is_rejected(world: World) -> None:
    key = drop(world.store, "x", jsonl(rows()), sidecar=b"{base_model: nope")
    world.ctx.drops.scan_once()
    assert status_of(world.store, key)["errors"][0].startswith("not valid JSON")


def test_no_base_model_anywhere_is_rejected(world: World) -> None:
    key = drop(world.store, "x", jsonl(rows()))
    world.ctx.drops.scan_once()
    status = status_of(world.store, key)
    assert status["state"] == "rejected" and "FASTUNER_DROP_DEFAULT_BASE_MODEL" in status["errors"][0]


def test_model_not_allowed_is_rejected_before_the_dataset(world: World) -> None:
    key = drop(world.store, "x", jsonl(rows()), sidecar={"job": {"base_model": "evil/model"}})
    world.ctx.drops.scan_once()
    assert "not allowed" in status_of(world.store, key)["message"]
    assert datasets(world.ctx) == []


def test_unknown_bad_and_nested_tenants_are_rejected(world: World) -> None:
    keys = [
        drop(world.store, "a", jsonl(rows()), tenant="ghost", sidecar=SIDECAR),
        drop(world.store, "a", jsonl(rows()), tenant="Bad_Tenant", sidecar=SIDECAR),
        drop(world.store, "a", jsonl(rows()), tenant=f"{TENANT}/sub", sidecar=SIDECAR),
        drop(world.store, "-weird", jsonl(rows()), sidecar=SIDECAR),
    ]

    outcomes = world.ctx.drops.scan_once()

    assert sorted(o.action for o in outcomes) == ["rejected"] * 4
    messages = [status_of(world.store, k)["message"] for k in keys]
    assert "'ghost' does not exist" in messages[0]
    assert "not a tenant id" in messages[1]
    assert "sub-folders" in messages[2]
    assert "not a usable file name" in messages[3]
    assert jobs(world.ctx) == [] and datasets(world.ctx) == []


def test_status_and_sidecar_objects_never_trigger(world: World) -> None:
    world.store.put_bytes(f"drop/{TENANT}/a.fastuner.json", b"{}")
    world.store.put_bytes(f"drop/{TENANT}/a.status.json", b"{}")
    world.store.put_bytes(f"drop/{TENANT}/notes.txt", b"hi")
    assert world.ctx.drops.scan_once() == []
    handled = world.ctx.drops.handler.handle(DropRef(f"drop/{TENANT}/a.status.json"))
    assert handled.action == "ignored"
    assert ledger(world.ctx) == []


def test_quota_exceeded_is_pending_then_retried(world: World) -> None:
    set_job_quota(world, 0)
    key = drop(world.store, "q", jsonl(rows()), sidecar=SIDECAR)

    assert [o.action for o in world.ctx.drops.scan_once()] == ["pending"]
    status = status_of(world.store, key)
    assert status["state"] == "pending" and "max_concurrent_jobs" in status["message"]
    assert status["retry_after"] and status["dataset_id"]
    assert jobs(world.ctx) == []
    assert world.ctx.drops.scan_once() == []  # not due yet: nothing happens

    set_job_quota(world, None)
    world.clock.advance(61)
    assert [o.action for o in world.ctx.drops.sweep_once()] == ["started"]
    assert len(jobs(world.ctx)) == 1 and len(datasets(world.ctx)) == 1  # the dataset was reused
    assert status_of(world.store, key)["dataset_id"] == status["dataset_id"]
    assert ledger(world.ctx)[0].attempts == 2


def test_transient_backend_error_retries_into_the_same_job(world: World) -> None:
    world.backend.fail_next = BackendError("SageMaker is throttling")
    key = drop(world.store, "t", jsonl(rows()), sidecar=SIDECAR)

    assert [o.action for o in world.ctx.drops.scan_once()] == ["pending"]
    assert "will retry" in status_of(world.store, key)["message"]
    world.clock.advance(61)
    # The job row exists (its launch failed): the retry gets it back by idempotency key.
    outcomes = world.ctx.drops.scan_once()
    assert [o.action for o in outcomes] == ["failed"]
    (job,) = jobs(world.ctx)
    assert status_of(world.store, key)["job_id"] == job.id
    assert "launch failed" in status_of(world.store, key)["message"]


def test_retries_give_up_after_max_attempts(make_world: MakeWorld) -> None:
    world = make_world(drop_max_attempts=2)
    set_job_quota(world, 0)
    key = drop(world.store, "q", jsonl(rows()), sidecar=SIDECAR)
    assert [o.action for o in world.ctx.drops.scan_once()] == ["pending"]
    world.clock.advance(3600)
    assert [o.action for o in world.ctx.drops.scan_once()] == ["failed"]
    assert "gave up after 2 attempts" in status_of(world.store, key)["message"]


def test_each_version_of_an_object_is_one_drop(world: World) -> None:
    key = drop(world.store, "v", jsonl(rows()), sidecar=SIDECAR)
    world.ctx.drops.scan_once()
    old_etag = ledger(world.ctx)[0].etag
    drop(world.store, "v", jsonl(rows(130)), sidecar=SIDECAR)  # overwritten with new content

    # A late event for the old version is stale: the object now has other content.
    stale = world.ctx.drops.handler.handle(DropRef(key, old_etag))
    assert stale.action == "ignored"
    assert [o.action for o in world.ctx.drops.scan_once()] == ["started"]
    assert len(jobs(world.ctx)) == 2 and len(ledger(world.ctx)) == 2


def test_out_of_order_event_for_an_overwritten_version_is_ignored(world: World) -> None:
    key = drop(world.store, "v", jsonl(rows()), sidecar=SIDECAR)
    first = world.ctx.drops.objects.current(key)
    assert first is not None
    drop(world.store, "v", jsonl(rows(130)), sidecar=SIDECAR)

    assert world.ctx.drops.handler.handle(DropRef(key, first.etag)).action == "ignored"
    assert ledger(world.ctx) == [] and jobs(world.ctx) == []


def test_a_file_still_being_copied_waits_until_it_settles(make_world: MakeWorld) -> None:
    world = make_world(drop_settle_seconds=30)
    drop(world.store, "s", jsonl(rows()), sidecar=SIDECAR)
    assert world.ctx.drops.scan_once() == []
    path = world.settings.resolved_store_root / f"drop/{TENANT}/s.jsonl"
    old = time.time() - 60
    os.utime(path, (old, old))
    assert [o.action for o in world.ctx.drops.scan_once()] == ["started"]


def test_worker_loop_stops_when_asked(world: World) -> None:
    drop(world.store, "loop", jsonl(rows()), sidecar=SIDECAR)
    stop = threading.Event()
    worker = DropWorker(world.ctx.drops, source="scan", interval=0.01)
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 20
    while not jobs(world.ctx):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    stop.set()
    thread.join(10)
    assert not thread.is_alive() and len(jobs(world.ctx)) == 1
