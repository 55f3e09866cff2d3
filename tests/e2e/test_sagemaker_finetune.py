"""Issue #4 on the ``sagemaker`` backend, through the REST API, against moto.

Everything goes through HTTP (``TestClient``) plus ``POST /v0/finetune/reconcile``; the test
plays SageMaker's part by moving moto's training job through its states, writing its CloudWatch
log lines and uploading its ``model.tar.gz`` where SageMaker would. Covered: the exact
``CreateTrainingJob`` request (on-demand and spot), every status mapping as the API shows it,
metrics from the log, adapter registration from the archive (nothing half-registered without a
usable one; retried for a grace period, then the job fails), cancel through the stop seam,
throttling and idempotent start, and preflight refusals before any compute.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from scu.metrics_format import METRIC_DEFINITIONS, format_eval_line, parse_line

from api.services.finetune.reconciler import REGISTER_GRACE
from api.services.finetune.service import job_name_for
from tests.e2e.sagemaker_support import (
    BUCKET,
    IMAGE_URI,
    ROLE_ARN,
    SMOL,
    TENANT,
    SageMakerEnv,
    leftover_scratch,
    mocked_aws,
    sagemaker_settings,
)
from tests.support.aws import aws_error, inject
from tests.support.engine_lines import train_line as engine_train_line


@pytest.fixture
def aws() -> Iterator[None]:
    with mocked_aws():
        yield


@pytest.fixture
def env(aws: None, tmp_path: Path) -> Iterator[SageMakerEnv]:
    with SageMakerEnv(sagemaker_settings(tmp_path / "home")) as e:
        yield e


def train_line(step: int, loss_bpt: float, *, unreachable: int = 0, lam: float = 1.02) -> str:
    return engine_train_line(step, loss_bpt, unreachable=unreachable, lam=lam, steps_per_epoch=40)


def parsed(line: str) -> dict[str, float]:
    record = parse_line(line)
    assert record is not None
    return {k: v for k, v in record.items() if k != "step"}


EVAL = {
    "tokens": 4096,
    "base": {"bpt": 4.91, "perplexity": 30.1},
    "adapter": {"bpt": 3.87, "perplexity": 14.6},
    "steps": 40,
    "scu": True,
}
ADAPTER_FILES = {
    "adapter_config.json": json.dumps(
        {"peft_type": "LORA", "r": 16, "base_model_name_or_path": SMOL}
    ).encode(),
    "adapter_model.safetensors": b"\x00" * 64,
    "eval.json": json.dumps(EVAL).encode(),
    "fastuner_config.json": json.dumps({"lora_r": 16, "target_s": 0.01}).encode(),
    "metrics.jsonl": b"".join(
        json.dumps({"step": s, "loss_bpt": 3.6 - s / 100, "lambda": 1.0, "unreachable": 0}).encode() + b"\n"
        for s in (10, 20, 30, 40)
    ),
}


def messages(events: list[dict[str, Any]]) -> list[str]:
    return [e["message"] for e in events]


# -- launch: the exact CreateTrainingJob request ------------------------------------------------
def channel(name: str, uri: str) -> dict[str, Any]:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": uri,
                "S3DataDistributionType": "FullyReplicated",
            }
        },
        "ContentType": "application/jsonlines",
        "CompressionType": "None",
        "InputMode": "File",
    }


@pytest.mark.parametrize("spot", [False, True], ids=["on-demand", "spot"])
def test_start_sends_exactly_the_training_job_request(env: SageMakerEnv, spot: bool) -> None:
    ds = env.upload_dataset()
    hyperparameters = {"log_every": 5, "train_on_inputs": True, "target_s": 0.02}
    options = {"epochs": 2, "lora_r": 16, "learning_rate": 2e-4, "max_runtime_seconds": 7200}
    resp = env.start(ds["id"], spot=spot, hyperparameters=hyperparameters, **options)
    assert resp.status_code == 201, resp.text
    job = resp.json()
    ft, name = job["id"], job_name_for(job["id"])
    assert job["backend"] == "sagemaker" and job["backend_job_name"] == name
    assert job["status"] == "provisioning" and job["spot"] is spot

    [request] = env.calls.of("CreateTrainingJob")
    data = f"s3://{BUCKET}/{TENANT}/datasets/{ds['id']}"
    jobs = f"s3://{BUCKET}/{TENANT}/jobs/{ft}"
    stopping = {"MaxRuntimeInSeconds": 7200, **({"MaxWaitTimeInSeconds": 14400} if spot else {})}
    assert request == {
        "TrainingJobName": name,
        "AlgorithmSpecification": {
            "TrainingImage": IMAGE_URI,
            "TrainingInputMode": "File",
            "MetricDefinitions": METRIC_DEFINITIONS,
        },
        "RoleArn": ROLE_ARN,
        "HyperParameters": {
            "log_every": "5",
            "train_on_inputs": "true",
            "target_s": "0.02",
            "base_model": SMOL,
            "method": "lora",
            "epochs": "2.0",
            "learning_rate": "0.0002",
            "lora_r": "16",
            "task_type": "generation",  # from the dataset: how the engine scores its task metrics
        },
        "InputDataConfig": [
            channel("train", f"{data}/train.jsonl"),
            channel("validation", f"{data}/validation.jsonl"),
            channel("test", f"{data}/test.jsonl"),  # the rows of the task metrics
        ],
        "OutputDataConfig": {"S3OutputPath": f"{jobs}/output"},
        "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": spot,
        "CheckpointConfig": {"S3Uri": f"{jobs}/checkpoints", "LocalPath": "/opt/ml/checkpoints"},
        "Tags": [
            {"Key": "fastuner:tenant", "Value": TENANT},
            {"Key": "fastuner:job", "Value": ft},
            {"Key": "fastuner:managed", "Value": "true"},
        ],
    }
    assert all(isinstance(v, str) for v in request["HyperParameters"].values())
    # Each channel prefix selects exactly its split object, nothing else in the bucket.
    for ch in request["InputDataConfig"]:
        key = ch["DataSource"]["S3DataSource"]["S3Uri"].removeprefix(f"s3://{BUCKET}/")
        assert env.keys(key) == [key]
    # What SageMaker (moto) holds agrees, and its model artifact lands where the backend reads it.
    desc = env.backend.sagemaker.describe_training_job(TrainingJobName=name)
    assert desc["EnableManagedSpotTraining"] is spot
    assert desc["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{BUCKET}/{env.model_key(ft)}"
    # The estimate the job was priced with: spot at a discount.
    assert job["estimate"]["spot"] is spot and job["cost_estimate_usd"] > 0
    assert job["estimate"]["hourly_usd"] == (round(1.408 * 0.35, 4) if spot else 1.408)
    assert messages(env.events(ft)) == ["job launching", "launching → provisioning"]


# -- status mapping, metrics, adapter registration ------------------------------------------
def test_running_job_streams_metrics_then_completes_with_an_adapter(env: SageMakerEnv) -> None:
    ds = env.upload_dataset()
    ft = env.started(ds["id"])["id"]

    report = env.reconcile()  # InProgress / Starting, no log yet
    assert report["errors"] == [] and report["metrics_ingested"] == 0
    job = env.job(ft)
    assert (job["status"], job["secondary_status"]) == ("provisioning", "Starting")
    assert env.metrics(ft) == []

    started = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    env.set_state(ft, "InProgress", "Training", training_start_time=started)
    lines = [train_line(10, 2.5), train_line(20, 2.4)]
    env.log(ft, ["Invoking script with the following command: train", lines[0], "a warning", lines[1]])
    report = env.reconcile()
    assert report["transitions"] == [f"{ft}: provisioning → running"] and report["metrics_ingested"] == 2
    job = env.job(ft)
    assert (job["status"], job["secondary_status"]) == ("running", "Training")
    assert job["started_at"].startswith("2026-11-23T10:00:00")
    assert env.metrics(ft) == [
        {"step": 10, "values": parsed(lines[0])},
        {"step": 20, "values": parsed(lines[1])},
    ]
    assert job["latest_metrics"] == {"step": 20.0, **parsed(lines[1])}

    # More lines arrive (and the evaluation line, which has no step): only new steps are added.
    more = [train_line(30, 2.3), train_line(40, 2.2)]
    env.log(ft, [*more, format_eval_line({"tokens": 4096, "base_bpt": 4.91, "adapter_bpt": 3.87})])
    assert env.reconcile()["metrics_ingested"] == 2
    assert env.reconcile()["metrics_ingested"] == 0  # nothing new: nothing twice
    assert [p["step"] for p in env.metrics(ft)] == [10, 20, 30, 40]
    assert env.metrics(ft, after=30) == [{"step": 40, "values": parsed(more[1])}]
    tail = env.client.get(f"/v0/finetune/{ft}/logs", params={"tail": 3}).json()
    assert tail[-1].startswith("[scu-eval]") and tail[0] == more[0]

    # Completed: SageMaker leaves /opt/ml/model as {S3OutputPath}/{name}/output/model.tar.gz.
    ended = datetime(2026, 11, 23, 10, 42, tzinfo=UTC)
    env.put_model(ft, ADAPTER_FILES)
    env.set_state(ft, "Completed", "Completed", training_end_time=ended, billable_time_in_seconds=2520)
    report = env.reconcile()
    adp = "adp_" + ft.removeprefix("ft_")
    assert report["errors"] == [] and report["adapters_registered"] == [adp]
    job = env.job(ft)
    assert (job["status"], job["adapter_id"], job["billable_seconds"]) == ("completed", adp, 2520)
    assert job["ended_at"].startswith("2026-11-23T10:42:00")
    assert messages(env.events(ft)) == [
        "job launching",
        "launching → provisioning",
        "provisioning → running",
        "running → completed",
        f"adapter {adp} registered",
    ]

    adapter = env.client.get(f"/v0/adapters/{adp}").json()
    assert adapter["job_id"] == ft and adapter["dataset_id"] == ds["id"]
    assert adapter["dataset_sha256"] == ds["content_sha256"] and adapter["base_model"] == SMOL
    assert adapter["eval_metrics"] == EVAL
    assert adapter["config"] == {"lora_r": 16, "target_s": 0.01}
    assert adapter["uri"] == f"s3://{BUCKET}/{TENANT}/adapters/{adp}"
    prefix = f"{TENANT}/adapters/{adp}/"
    assert env.keys(prefix) == sorted(prefix + name for name in ADAPTER_FILES)
    assert {k: env.store.get_bytes(prefix + k) for k in ADAPTER_FILES} == ADAPTER_FILES
    assert [a["id"] for a in env.client.get("/v0/adapters").json()["items"]] == [adp]

    nothing = {
        "checked": 0,
        "transitions": [],
        "metrics_ingested": 0,
        "adapters_registered": [],
        "errors": [],
    }
    assert env.reconcile() == nothing  # a finished job is left alone
    download = env.client.get(f"/v0/adapters/{adp}/download")
    assert download.status_code == 200 and download.headers["content-type"] == "application/gzip"


def test_an_unreachable_target_in_the_log_is_one_warning_event_per_episode(env: SageMakerEnv) -> None:
    ds = env.upload_dataset()
    ft = env.started(ds["id"])["id"]
    env.set_state(ft, "InProgress", "Training", training_start_time=datetime.now(UTC))
    pinned = {"unreachable": 1, "lam": 10.0}
    env.log(ft, [train_line(10, 2.5), train_line(20, 2.4, **pinned), train_line(30, 2.3, **pinned)])
    assert env.reconcile()["metrics_ingested"] == 3
    warnings = [e for e in env.events(ft) if e["kind"] == "warning"]
    assert messages(warnings) == [
        "SCU target S*=0.004 unreachable since step 20: λ pinned at its maximum 10 (S stays above the "
        "target even at the strongest allowed regularisation); raise lambda_max or target_s"
    ]
    assert warnings[0]["data"]["step"] == 20 and warnings[0]["data"]["unreachable"] == 1
    assert env.job(ft)["latest_metrics"]["unreachable"] == 1.0

    # Still pinned, then (after a spot restart replays step 40) recovered, then pinned again.
    env.log(ft, [train_line(40, 2.2, **pinned)])
    env.reconcile()
    env.log(ft, [train_line(40, 2.2, **pinned), train_line(50, 2.1)], stream="algo-1-1763900100")
    env.reconcile()
    assert len([e for e in env.events(ft) if e["kind"] == "warning"]) == 1
    env.log(ft, [train_line(60, 2.0, unreachable=-1, lam=1e-4)], stream="algo-1-1763900100")
    assert env.reconcile()["metrics_ingested"] == 1
    assert env.reconcile()["metrics_ingested"] == 0
    warnings = [e for e in env.events(ft) if e["kind"] == "warning"]
    assert [w["data"]["step"] for w in warnings] == [20, 60]
    pinned_at_minimum = (
        "λ pinned at its minimum 0.0001 (S stays below the target even with almost no regularisation); "
        "lower target_s or lambda_min"
    )
    assert warnings[1]["message"].endswith(pinned_at_minimum)


# A Completed job whose output cannot become an adapter, and the error the reconcile report shows.
UNUSABLE_ARCHIVES = pytest.mark.parametrize(
    ("archive", "error"),
    [
        (None, "left no model"),
        ({"eval.json": b"{}", "adapter_model.safetensors": b"x"}, "adapter_config.json"),
        ({**ADAPTER_FILES, "../escape.json": b"{}"}, "unsafe path"),
    ],
    ids=["no-archive", "no-adapter-config", "unsafe-archive"],
)


@UNUSABLE_ARCHIVES
def test_completed_without_a_usable_model_registers_nothing(
    env: SageMakerEnv, archive: dict[str, bytes] | None, error: str
) -> None:
    ds = env.upload_dataset()
    ft = env.started(ds["id"])["id"]
    env.set_state(ft, "InProgress", "Training", training_start_time=datetime.now(UTC))
    assert env.reconcile()["transitions"] == [f"{ft}: provisioning → running"]
    if archive is not None:
        env.put_model(ft, archive)
    env.set_state(ft, "Completed", "Completed", training_end_time=datetime.now(UTC))
    before = env.keys()

    for _ in range(2):  # tried again on every pass, never half-done
        report = env.reconcile()
        [message] = report["errors"]
        assert message.startswith(f"{ft}: ") and error in message
        assert report["adapters_registered"] == [] and report["transitions"] == []
        job = env.job(ft)
        assert (job["status"], job["adapter_id"]) == ("running", None)
        assert env.client.get("/v0/adapters").json()["items"] == []
        assert env.client.get(f"/v0/adapters/adp_{ft.removeprefix('ft_')}").status_code == 404
        assert env.keys() == before  # no orphan objects
        assert env.keys(f"{TENANT}/adapters/") == []
    assert leftover_scratch(env.settings.work_dir) == []  # scratch folders cleaned up

    # Once SageMaker's archive is there (say, a slow upload), the next pass registers it.
    env.put_model(ft, ADAPTER_FILES)
    report = env.reconcile()
    assert report["errors"] == [] and len(report["adapters_registered"]) == 1
    assert env.job(ft)["status"] == "completed"


@UNUSABLE_ARCHIVES
def test_a_model_that_stays_unusable_fails_the_job_after_a_grace_period(
    env: SageMakerEnv, archive: dict[str, bytes] | None, error: str
) -> None:
    ds = env.upload_dataset()
    ft = env.started(ds["id"])["id"]
    if archive is not None:
        env.put_model(ft, archive)
    ended = datetime.now(UTC) - REGISTER_GRACE - timedelta(minutes=1)
    env.set_state(ft, "Completed", "Completed", training_end_time=ended, billable_time_in_seconds=300)
    before = env.keys()

    report = env.reconcile()
    assert report["transitions"] == [f"{ft}: provisioning → failed"] and report["errors"] == []
    job = env.job(ft)
    assert (job["status"], job["adapter_id"], job["billable_seconds"]) == ("failed", None, 300)
    assert job["failure_reason"].startswith("training completed but its model could not be registered")
    assert error in job["failure_reason"]
    assert env.events(ft)[-1]["data"]["reason"] == job["failure_reason"]
    assert env.keys() == before and env.keys(f"{TENANT}/adapters/") == []
    assert env.client.get("/v0/adapters").json()["items"] == []
    assert leftover_scratch(env.settings.work_dir) == []
    assert env.reconcile()["checked"] == 0


def test_failed_job_surfaces_the_reason(env: SageMakerEnv) -> None:
    ds = env.upload_dataset()
    ft = env.started(ds["id"])["id"]
    env.set_state(ft, "InProgress", "Training", training_start_time=datetime.now(UTC))
    env.reconcile()
    reason = "AlgorithmError: CUDA out of memory; lower batch_size or use qlora"
    ended = {"training_end_time": datetime.now(UTC), "billable_time_in_seconds": 95}
    env.set_state(ft, "Failed", "Failed", failure_reason=reason, **ended)
    assert env.reconcile()["transitions"] == [f"{ft}: running → failed"]
    job = env.job(ft)
    assert (job["status"], job["failure_reason"], job["billable_seconds"]) == ("failed", reason, 95)
    assert job["adapter_id"] is None and job["ended_at"]
    last = env.events(ft)[-1]
    assert last["message"] == "running → failed"
    assert last["data"] == {"secondary": "Failed", "reason": reason}
    assert env.client.post(f"/v0/finetune/{ft}/cancel").status_code == 409
    assert env.reconcile()["checked"] == 0


def test_max_runtime_exceeded_is_a_failure_not_a_cancel(env: SageMakerEnv) -> None:
    ds = env.upload_dataset()
    ft = env.started(ds["id"], spot=True, max_runtime_seconds=3600)["id"]
    env.set_state(ft, "Stopping", "MaxRuntimeExceeded")
    env.reconcile()
    assert env.job(ft)["status"] == "running"
    env.set_state(ft, "Stopped", "MaxRuntimeExceeded", training_end_time=datetime.now(UTC))
    env.reconcile()
    job = env.job(ft)
    assert job["status"] == "failed" and "maximum runtime" in job["failure_reason"]
    assert "3600 s" in job["failure_reason"]


# -- cancel -------------------------------------------------------------------------------------
def test_cancel_reaches_the_stop_seam_and_ends_cancelled(
    env: SageMakerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = env.upload_dataset()
    ft = env.started(ds["id"])["id"]
    env.set_state(ft, "InProgress", "Training", training_start_time=datetime.now(UTC))
    env.reconcile()
    stopped: list[str] = []

    def stop(name: str) -> None:  # what SageMaker does on StopTrainingJob
        stopped.append(name)
        env.set_state(ft, "Stopping", "Stopping")

    monkeypatch.setattr(env.backend, "_call_stop", stop)
    resp = env.client.post(f"/v0/finetune/{ft}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelling"
    assert stopped == [job_name_for(ft)]
    again = env.client.post(f"/v0/finetune/{ft}/cancel")  # already cancelling: nothing more asked
    assert again.status_code == 200 and again.json()["status"] == "cancelling"
    assert stopped == [job_name_for(ft)]

    env.reconcile()  # Stopping
    assert (env.job(ft)["status"], env.job(ft)["secondary_status"]) == ("cancelling", "Stopping")
    env.set_state(ft, "Stopped", "Stopped", training_end_time=datetime.now(UTC), billable_time_in_seconds=60)
    assert env.reconcile()["transitions"] == [f"{ft}: cancelling → cancelled"]
    job = env.job(ft)
    assert (job["status"], job["adapter_id"], job["billable_seconds"]) == ("cancelled", None, 60)
    assert messages(env.events(ft))[-2:] == ["running → cancelling", "cancelling → cancelled"]
    assert env.events(ft)[-2]["data"] == {"by": "user"}

    resp = env.client.post(f"/v0/finetune/{ft}/cancel")
    assert resp.status_code == 409 and resp.json()["code"] == "conflict"
    assert stopped == [job_name_for(ft)]
    assert env.keys(f"{TENANT}/adapters/") == []


def test_a_stop_from_outside_the_api_is_seen_as_a_cancel(env: SageMakerEnv) -> None:
    """Stopped in the SageMaker console: Stopping → cancelling, Stopped → cancelled."""
    ds = env.upload_dataset()
    ft = env.started(ds["id"])["id"]
    env.set_state(ft, "Stopping", "Stopping")
    assert env.reconcile()["transitions"] == [f"{ft}: provisioning → cancelling"]
    env.set_state(ft, "Stopped", "Stopped", training_end_time=datetime.now(UTC))
    assert env.reconcile()["transitions"] == [f"{ft}: cancelling → cancelled"]
    assert env.job(ft)["status"] == "cancelled"
    assert env.client.post(f"/v0/finetune/{ft}/cancel").status_code == 409


# -- throttling and idempotency ----------------------------------------------------------------
def test_throttling_is_retried_end_to_end(env: SageMakerEnv, no_backoff: list[int]) -> None:
    ds = env.upload_dataset()
    throttled = aws_error(400, "ThrottlingException", "Rate exceeded")
    creates = inject(env.backend.sagemaker, "CreateTrainingJob", [throttled, throttled, throttled])
    describes = inject(env.backend.sagemaker, "DescribeTrainingJob", [throttled])
    resp = env.start(ds["id"])
    assert resp.status_code == 201, resp.text
    ft = resp.json()["id"]
    assert creates["attempts"] == 4 and describes["attempts"] == 2 and len(no_backoff) == 4
    assert list(env.moto_jobs()) == [job_name_for(ft)]
    assert env.job(ft)["status"] == "provisioning"

    # The reconciler's reads are retried too.
    env.set_state(ft, "InProgress", "Training", training_start_time=datetime.now(UTC))
    inject(env.backend.sagemaker, "DescribeTrainingJob", [throttled, throttled])
    env.log(ft, [train_line(5, 2.0)])
    inject(env.backend.logs, "FilterLogEvents", [throttled])
    report = env.reconcile()
    assert report["errors"] == [] and report["metrics_ingested"] == 1
    assert env.job(ft)["status"] == "running"


def test_throttling_that_never_ends_fails_the_launch_with_a_clear_error(
    env: SageMakerEnv, no_backoff: list[int]
) -> None:
    ds = env.upload_dataset()
    throttled = aws_error(400, "ThrottlingException", "Rate exceeded")
    creates = inject(env.backend.sagemaker, "CreateTrainingJob", [throttled] * 50)
    resp = env.start(ds["id"])
    assert resp.status_code == 502 and resp.json()["code"] == "backend_error"
    assert "ThrottlingException" in resp.json()["message"] and resp.json()["details"]["transient"] is True
    assert creates["attempts"] == 11 and env.moto_jobs() == {}  # botocore's retries, not multiplied
    [job] = env.client.get("/v0/finetune").json()["items"]
    assert job["status"] == "failed" and "ThrottlingException" in job["failure_reason"]
    assert job["failure_reason"].startswith("launch failed (transient")
    assert env.reconcile()["checked"] == 0


def test_idempotent_start(env: SageMakerEnv) -> None:
    ds = env.upload_dataset()
    key = {"Idempotency-Key": "start-7f3c"}
    first = env.start(ds["id"], headers=key, epochs=1)
    assert first.status_code == 201, first.text
    second = env.start(ds["id"], headers=key, epochs=1)
    assert second.status_code == 201 and second.json()["id"] == first.json()["id"]
    assert len(env.calls.of("CreateTrainingJob")) == 1
    assert list(env.moto_jobs()) == [job_name_for(first.json()["id"])]

    different = env.start(ds["id"], headers=key, epochs=3)
    assert different.status_code == 409 and different.json()["details"] == {"job_id": first.json()["id"]}
    other_key = env.start(ds["id"], headers={"Idempotency-Key": "start-other"}, epochs=1)
    assert other_key.status_code == 201 and other_key.json()["id"] != first.json()["id"]
    assert len(env.calls.of("CreateTrainingJob")) == 2
    assert len(env.client.get("/v0/finetune").json()["items"]) == 2


# -- preflight: refused before any compute -----------------------------------------------------
@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"method": "qlora", "instance_type": "ml.m5.xlarge"}, ["QLoRA needs a GPU", "ml.m5.xlarge"]),
        ({"base_model": "evil-corp/backdoored-7b"}, ["not allowed", "HuggingFaceTB/SmolLM2-*"]),
        (
            {"base_model": "meta-llama/Llama-3.1-8B-Instruct", "instance_type": "ml.g4dn.xlarge"},
            ["needs about", "16.0 GB", "choose a larger instance type", "method qlora"],
        ),
        ({"instance_type": "ml.nonexistent.xlarge"}, ["unknown instance type"]),
        ({"instance_type": "local"}, ["FASTUNER_BACKEND=local"]),
        ({"hyperparameters": {"bogus": 1}}, ["bogus"]),
    ],
    ids=["qlora-on-cpu", "model-not-allowed", "too-big-for-gpu", "unknown-instance", "local", "bad-hp"],
)
def test_preflight_refuses_before_any_compute(
    env: SageMakerEnv, body: dict[str, Any], fragments: list[str]
) -> None:
    ds = env.upload_dataset()
    resp = env.start(ds["id"], **body)
    # Hyperparameters the engine refuses are request validation errors (422), the rest a 400.
    status, code = (422, "invalid_request") if "hyperparameters" in body else (400, "bad_request")
    assert resp.status_code == status, resp.text
    assert resp.json()["code"] == code
    for fragment in fragments:
        assert fragment in resp.json()["message"]
    assert env.calls == {}  # not even a DescribeTrainingJob
    assert env.moto_jobs() == {}
    assert env.client.get("/v0/finetune").json()["items"] == []
    assert env.keys(f"{TENANT}/jobs/") == []


def test_dry_run_estimates_and_launches_nothing(env: SageMakerEnv) -> None:
    ds = env.upload_dataset()
    resp = env.start(ds["id"], dry_run=True, epochs=3, spot=True)
    assert resp.status_code == 200, resp.text
    dry = resp.json()
    assert dry["dry_run"] is True and dry["backend"] == "sagemaker"
    assert dry["hyperparameters"]["base_model"] == SMOL and dry["hyperparameters"]["epochs"] == "3.0"
    est = dry["estimate"]
    assert est["instance_type"] == "ml.g5.xlarge" and est["spot"] is True
    assert est["estimated_cost_usd"] > 0 and est["expected_runtime_seconds"] > 0
    assert est["gpu_memory_needed_gb"] < est["gpu_memory_available_gb"] == 24.0
    assert est["n_params"] == 134_515_008 and est["train_tokens"] > 0
    # A QLoRA dry run on a CPU instance is refused like the real thing.
    assert env.start(ds["id"], dry_run=True, method="qlora", instance_type="ml.m5.xlarge").status_code == 400
    assert env.calls == {} and env.moto_jobs() == {}
    assert env.client.get("/v0/finetune").json()["items"] == []


# -- the same path on PostgreSQL ---------------------------------------------------------------
def test_whole_path_on_each_database(aws: None, tmp_path: Path, db_url: str) -> None:
    with SageMakerEnv(sagemaker_settings(tmp_path / "home", db_url)) as env:
        ds = env.upload_dataset()
        key = {"Idempotency-Key": "db-path"}
        ft = env.started(ds["id"], headers=key)["id"]
        assert env.start(ds["id"], headers=key).json()["id"] == ft
        env.set_state(ft, "InProgress", "Training", training_start_time=datetime.now(UTC))
        env.log(ft, [train_line(10, 2.5), train_line(20, 2.4)])
        assert env.reconcile()["metrics_ingested"] == 2
        env.put_model(ft, ADAPTER_FILES)
        env.set_state(ft, "Completed", "Completed", training_end_time=datetime.now(UTC))
        report = env.reconcile()
        assert report["errors"] == [] and len(report["adapters_registered"]) == 1
        job = env.job(ft)
        assert job["status"] == "completed"
        assert [p["step"] for p in env.metrics(ft)] == [10, 20, 30, 40]  # + metrics.jsonl's tail
        assert env.client.get(f"/v0/adapters/{job['adapter_id']}").json()["eval_metrics"] == EVAL
        assert len(env.calls.of("CreateTrainingJob")) == 1
