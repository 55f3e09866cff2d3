"""Drop-and-train on AWS (moto): S3 → event notification → SQS → ``fastuner worker`` → SageMaker job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from api.services.drops.handler import DropHandler
from api.services.finetune.service import job_name_for
from tests.drops.sqs_support import AwsDrops, make_aws_drops, s3_event
from tests.drops.support import SMOL, TENANT, bad_jsonl, datasets, jobs, jsonl, ledger, rows
from tests.e2e.sagemaker_support import BUCKET, REGION, SageMakerEnv, mocked_aws

SIDECAR = json.dumps({"job": {"base_model": SMOL, "instance_type": "ml.g5.xlarge", "max_steps": 40}}).encode()


@pytest.fixture
def aws() -> Iterator[None]:
    with mocked_aws():
        yield


@pytest.fixture
def env(aws: None, tmp_path: Path) -> Iterator[AwsDrops]:
    e = make_aws_drops(tmp_path / "home")
    yield e
    e.ctx.close()


def status(key: str, prefix: str = "") -> dict[str, object]:
    body = (
        boto3.client("s3", region_name=REGION)
        .get_object(Bucket=BUCKET, Key=prefix + key[: -len(".jsonl")] + ".status.json")["Body"]
        .read()
    )
    data: dict[str, object] = json.loads(body)
    return data


def test_drop_end_to_end_through_the_queue(env: AwsDrops) -> None:
    env.put(f"drop/{TENANT}/my reviews+v1.fastuner.json", SIDECAR)
    etag = env.put(f"drop/{TENANT}/my reviews+v1.jsonl", jsonl(rows()))

    summary = env.run_once()

    assert summary.counts() == {"started": 1}
    (job,) = jobs(env.ctx)
    (ds,) = datasets(env.ctx)
    assert (job.dataset_id, job.base_model, job.backend) == (ds.id, SMOL, "sagemaker")
    assert ds.name == "my reviews+v1"
    moto_job = SageMakerEnv.moto_jobs()[job_name_for(job.id)]
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in moto_job.input_data_config
    }
    assert channels["train"] == f"s3://{BUCKET}/{TENANT}/datasets/{ds.id}/train.jsonl"
    st = status(f"drop/{TENANT}/my reviews+v1.jsonl")
    assert (st["state"], st["dataset_id"], st["job_id"], st["etag"]) == ("started", ds.id, job.id, etag)
    assert env.queued() == 0  # the test event and the drop's event are both deleted


def test_duplicate_and_redelivered_events_make_one_job(env: AwsDrops) -> None:
    key = f"drop/{TENANT}/dup.jsonl"
    env.put(f"drop/{TENANT}/dup.fastuner.json", SIDECAR)
    etag = env.put(key, jsonl(rows()))
    for _ in range(3):  # S3 delivers at least once; a duplicate may come in the same batch
        env.sqs.send_message(QueueUrl=env.queue_url, MessageBody=s3_event(key, etag))

    first = env.run_once()
    env.sqs.send_message(QueueUrl=env.queue_url, MessageBody=s3_event(key, etag))  # later redelivery
    env.sqs.send_message(QueueUrl=env.queue_url, MessageBody=s3_event(key, None))  # no etag
    second = env.run_once()

    assert first.counts() == {"started": 1, "skipped": 3}
    assert second.counts() == {"skipped": 2}
    assert len(jobs(env.ctx)) == 1 and len(SageMakerEnv.moto_jobs()) == 1
    assert env.queued() == 0


def test_crash_mid_drop_then_redelivery_makes_one_job(
    aws: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = make_aws_drops(tmp_path / "home", visibility=0, max_receive=10)
    key = f"drop/{TENANT}/crash.jsonl"
    env.put(f"drop/{TENANT}/crash.fastuner.json", SIDECAR)
    env.put(key, jsonl(rows()))

    class Crash(BaseException):
        pass

    real_start = env.ctx.finetune.start

    def start_then_die(*args: object, **kwargs: object) -> object:
        real_start(*args, **kwargs)  # type: ignore[arg-type]
        raise Crash

    monkeypatch.setattr(env.ctx.finetune, "start", start_then_die)
    with pytest.raises(Crash):
        env.run_once()
    monkeypatch.undo()
    (job,) = jobs(env.ctx)
    assert env.queued() >= 1  # the message was not deleted: it comes back

    redelivered = env.run_once()  # the dead worker's lease still runs: the ledger keeps the drop
    assert redelivered.counts() == {"skipped": 1} and env.queued() == 0
    env.clock.advance(env.ctx.settings.drop_lease_seconds + 1)
    after = env.run_once()  # the retry sweep takes over the lapsed lease

    assert after.counts() == {"started": 1} and after.outcomes[0].job_id == job.id
    assert [j.id for j in jobs(env.ctx)] == [job.id] and len(SageMakerEnv.moto_jobs()) == 1
    assert status(key)["job_id"] == job.id
    env.ctx.close()


def test_handler_failure_leaves_the_message_for_redelivery(
    aws: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = make_aws_drops(tmp_path / "home", visibility=0, max_receive=10)
    key = f"drop/{TENANT}/flaky.jsonl"
    env.put(f"drop/{TENANT}/flaky.fastuner.json", SIDECAR)
    env.put(key, jsonl(rows()))
    real = DropHandler.handle
    calls = {"n": 0}

    def flaky(self: DropHandler, ref: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("database went away")
        return real(self, ref)  # type: ignore[arg-type]

    monkeypatch.setattr(DropHandler, "handle", flaky)

    summary = env.run_once()  # first receive fails, the redelivery (visibility 0) succeeds

    assert summary.counts() == {"started": 1}
    assert len(jobs(env.ctx)) == 1 and env.queued() == 0
    env.ctx.close()


def test_bad_file_through_the_queue_is_rejected_without_a_job(env: AwsDrops) -> None:
    key = f"drop/{TENANT}/broken.jsonl"
    env.put(f"drop/{TENANT}/broken.fastuner.json", SIDECAR)
    env.put(key, bad_jsonl())

    assert env.run_once().counts() == {"rejected": 1}

    st = status(key)
    assert st["state"] == "rejected"
    report = st["report"]
    assert isinstance(report, dict)
    assert sorted({line for g in report["errors"] for line in g["lines"]}) == [5, 9]
    assert jobs(env.ctx) == [] and SageMakerEnv.moto_jobs() == {}
    keys = [o["Key"] for o in env.s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert not [k for k in keys if k.startswith(f"{TENANT}/")]  # no orphan dataset objects
    assert env.queued() == 0


def test_poison_message_goes_to_the_dead_letter_queue(aws: None, tmp_path: Path) -> None:
    env = make_aws_drops(tmp_path / "home", visibility=0, max_receive=2)
    env.sqs.send_message(QueueUrl=env.queue_url, MessageBody="this is not an S3 event")
    env.sqs.send_message(QueueUrl=env.queue_url, MessageBody=json.dumps({"Records": [{"no": "name"}]}))

    for _ in range(4):  # the worker never crashes; the queue's redrive policy acts
        env.run_once()

    assert env.queued() == 0 and env.queued(env.dlq_url) == 2
    assert ledger(env.ctx) == []
    env.ctx.close()


def test_events_for_other_buckets_prefixes_and_kinds_are_ignored(env: AwsDrops) -> None:
    for body in (
        s3_event(f"drop/{TENANT}/a.jsonl", "e", bucket="someone-elses-bucket"),
        s3_event(f"drop/{TENANT}/a.jsonl", "e", name="ObjectRemoved:Delete"),
        s3_event(f"drop/{TENANT}/a.status.json", "e"),
        s3_event(f"drop/{TENANT}/gone.jsonl", "e"),
    ):
        env.sqs.send_message(QueueUrl=env.queue_url, MessageBody=body)

    summary = env.run_once()

    assert set(summary.counts()) <= {"ignored"} and env.queued() == 0
    assert ledger(env.ctx) == []


def test_store_prefix_maps_bucket_keys(aws: None, tmp_path: Path) -> None:
    env = make_aws_drops(tmp_path / "home", prefix="plane/")
    env.put(f"plane/drop/{TENANT}/p.fastuner.json", SIDECAR)
    env.put(f"plane/drop/{TENANT}/p.jsonl", jsonl(rows()))
    env.put(f"drop/{TENANT}/outside.jsonl", jsonl(rows()))  # not under the prefix: no event, no drop

    assert env.run_once().counts() == {"started": 1}
    st = status(f"drop/{TENANT}/p.jsonl", prefix="plane/")
    assert st["object"] == f"plane/drop/{TENANT}/p.jsonl"
    assert ledger(env.ctx)[0].key == f"plane/drop/{TENANT}/p.jsonl"
    env.ctx.close()
