"""The ``sagemaker`` training backend against moto (S3, SageMaker, CloudWatch Logs)."""

from __future__ import annotations

import copy
import io
import json
import tarfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError, EndpointConnectionError
from moto import mock_aws
from moto.backends import get_backend
from scu.metrics_format import (
    METRIC_DEFINITIONS,
    TRAIN_KEYS,
    format_eval_line,
    format_train_line,
    parse_line,
    parse_with_definitions,
)

from api.backends.base import ComputeBackend, TrainingSpec
from api.backends.sagemaker import (
    LOG_GROUP,
    LOG_REREAD_MS,
    MAX_ATTEMPTS,
    RETRY_CONFIG,
    SageMakerBackend,
    safe_extract,
    status_from_description,
)
from api.domain.enums import JobStatus
from api.domain.errors import BackendError, Conflict
from api.storage.s3 import S3Store

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
BUCKET = "fastuner-test"
IMAGE_URI = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/fastuner-training:test"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/fastuner-sagemaker"
TENANT = "acme"
DATASET = "ds_abc123"
JOB_ID = "ft_xyz789"
JOB_NAME = "fastuner-ft-xyz789"
DS = f"s3://{BUCKET}/{TENANT}/datasets/{DATASET}"
JOB_S3 = f"s3://{BUCKET}/{TENANT}/jobs/{JOB_ID}"


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clients() -> dict[str, Any]:
    """One client per service for the module, configured as the backend builds its own (building
    clients dominates a test's cost). They are created after moto is imported, so moto's stub
    answers them inside each test's own ``mock_aws`` (fresh state). Per-test event handlers are
    unregistered after each test (see ``hook``)."""
    return {
        name: boto3.client(name, region_name=REGION, config=RETRY_CONFIG)
        for name in ("s3", "sagemaker", "logs")
    }


_hooks: list[tuple[Any, str, Callable[..., Any]]] = []


def hook(client: Any, event: str, handler: Callable[..., Any], *, first: bool = False) -> None:
    events = client.meta.events
    (events.register_first if first else events.register)(event, handler)
    _hooks.append((client, event, handler))


@pytest.fixture(autouse=True)
def _forget_hooks() -> Iterator[None]:
    yield
    while _hooks:
        client, event, handler = _hooks.pop()
        client.meta.events.unregister(event, handler)


@pytest.fixture
def store(clients: dict[str, Any]) -> Iterator[S3Store]:
    with mock_aws():
        clients["s3"].create_bucket(Bucket=BUCKET)
        yield S3Store(BUCKET, client=clients["s3"])


@pytest.fixture
def backend(store: S3Store, clients: dict[str, Any]) -> SageMakerBackend:
    return SageMakerBackend(
        store,
        image_uri=IMAGE_URI,
        role_arn=ROLE_ARN,
        region=REGION,
        sagemaker_client=clients["sagemaker"],
        logs_client=clients["logs"],
    )


def split_key(split: str) -> str:
    return f"{TENANT}/datasets/{DATASET}/{split}.jsonl"


@pytest.fixture
def dataset(store: S3Store) -> dict[str, str]:
    """A dataset folder as the dataset service writes it; returns channel -> key."""
    for split in ("train", "validation", "test"):
        store.put_bytes(split_key(split), json.dumps({"input": "a", "target": "b"}).encode() + b"\n")
    store.put_bytes(f"{TENANT}/datasets/{DATASET}/manifest.json", b"{}")
    return {"train": split_key("train"), "validation": split_key("validation")}


@pytest.fixture
def make_spec(dataset: dict[str, str]) -> Callable[..., TrainingSpec]:
    def make(**overrides: Any) -> TrainingSpec:
        base: dict[str, Any] = {
            "job_id": JOB_ID,
            "tenant_id": TENANT,
            "job_name": JOB_NAME,
            "hyperparameters": {"base_model": "HuggingFaceTB/SmolLM2-135M", "lora_r": "16", "epochs": "1"},
            "channels": dict(dataset),
            "output_prefix": f"{TENANT}/jobs/{JOB_ID}/output",
            "checkpoint_prefix": f"{TENANT}/jobs/{JOB_ID}/checkpoints",
            "instance_type": "ml.g5.xlarge",
            "max_runtime_seconds": 3600,
            "volume_gb": 50,
            "tags": {"fastuner:tenant": TENANT, "fastuner:job": JOB_ID, "fastuner:managed": "true"},
        }
        base.update(overrides)
        return TrainingSpec(**base)

    return make


class Calls:
    """Request parameters of every SageMaker call the backend made, by operation, in order."""

    def __init__(self) -> None:
        self.params: dict[str, list[dict[str, Any]]] = {}

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.params.setdefault(model.name, []).append(copy.deepcopy(params))

    def of(self, operation: str) -> list[dict[str, Any]]:
        return self.params.get(operation, [])


@pytest.fixture
def calls(backend: SageMakerBackend) -> Calls:
    recorder = Calls()
    hook(backend.sagemaker, "before-parameter-build.sagemaker", recorder)
    return recorder


def moto_jobs() -> dict[str, Any]:
    return get_backend("sagemaker")[ACCOUNT][REGION].training_jobs  # type: ignore[no-any-return]


def moto_job(name: str = JOB_NAME) -> Any:
    """moto's in-process ``FakeTrainingJob``; its attributes become the DescribeTrainingJob fields."""
    return moto_jobs()[name]


def set_state(status: str, secondary: str | None, **fields: Any) -> None:
    job = moto_job()
    job.training_job_status = status
    job.secondary_status = secondary
    for key, value in fields.items():
        setattr(job, key, value)


class _Raw(io.BytesIO):
    def stream(self, **_: Any) -> Iterator[bytes]:
        data = self.read()
        if data:
            yield data


def aws_error(status: int, code: str, message: str) -> Callable[..., AWSResponse]:
    body = json.dumps({"__type": code, "message": message}).encode()

    def respond(request: Any) -> AWSResponse:
        headers = {"x-amzn-RequestId": "test", "Content-Type": "application/x-amz-json-1.1"}
        return AWSResponse(request.url, status, headers, _Raw(body))

    return respond


def inject(client: Any, operation: str, responses: list[Callable[..., AWSResponse] | None]) -> dict[str, int]:
    """Answer the first attempts of ``operation`` with ``responses`` (None: pass on to moto).

    Registered first, so botocore takes its response over moto's. botocore still runs every
    ``before-send`` handler, so an answered request is pointed at a host moto does not serve:
    moto leaves it alone instead of executing it too. Counts every attempt.
    """
    seen = {"attempts": 0}

    def handler(request: Any, **_: Any) -> AWSResponse | None:
        seen["attempts"] += 1
        index = seen["attempts"] - 1
        if index < len(responses) and responses[index] is not None:
            response = responses[index](request)  # type: ignore[misc]
            request.url = "https://answered-by-test.invalid/"
            return response
        return None

    service = client.meta.service_model.service_id.hyphenize()
    hook(client, f"before-send.{service}.{operation}", handler, first=True)
    return seen


# -- construction -----------------------------------------------------------------------------
def test_is_a_compute_backend_with_retrying_clients(store: S3Store) -> None:
    backend = SageMakerBackend(store, image_uri=IMAGE_URI, role_arn=ROLE_ARN, region=REGION)
    assert isinstance(backend, ComputeBackend)
    assert backend.name == "sagemaker"
    for client in (backend.sagemaker, backend.logs):
        assert client.meta.config.retries["mode"] == "standard"
        assert client.meta.config.retries["total_max_attempts"] == MAX_ATTEMPTS + 1  # botocore: retries + 1
        assert client.meta.region_name == REGION


def test_needs_image_and_role(store: S3Store) -> None:
    with pytest.raises(ValueError, match="image"):
        SageMakerBackend(store, image_uri="", role_arn=ROLE_ARN, region=REGION)
    with pytest.raises(ValueError, match="role"):
        SageMakerBackend(store, image_uri=IMAGE_URI, role_arn="", region=REGION)


# -- start ------------------------------------------------------------------------------------
def test_start_sends_exactly_the_training_job_request(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec], calls: Calls
) -> None:
    state = backend.start_training(make_spec())

    [request] = calls.of("CreateTrainingJob")
    channel = {
        "DataSource": {
            "S3DataSource": {"S3DataType": "S3Prefix", "S3DataDistributionType": "FullyReplicated"}
        },
        "ContentType": "application/jsonlines",
        "CompressionType": "None",
        "InputMode": "File",
    }
    train = copy.deepcopy(channel)
    train["ChannelName"] = "train"
    train["DataSource"]["S3DataSource"]["S3Uri"] = f"{DS}/train.jsonl"
    validation = copy.deepcopy(channel)
    validation["ChannelName"] = "validation"
    validation["DataSource"]["S3DataSource"]["S3Uri"] = f"{DS}/validation.jsonl"
    assert request == {
        "TrainingJobName": JOB_NAME,
        "AlgorithmSpecification": {
            "TrainingImage": IMAGE_URI,
            "TrainingInputMode": "File",
            "MetricDefinitions": METRIC_DEFINITIONS,
        },
        "RoleArn": ROLE_ARN,
        "HyperParameters": {"base_model": "HuggingFaceTB/SmolLM2-135M", "lora_r": "16", "epochs": "1"},
        "InputDataConfig": [train, validation],
        "OutputDataConfig": {"S3OutputPath": f"{JOB_S3}/output"},
        "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "EnableManagedSpotTraining": False,
        "CheckpointConfig": {"S3Uri": f"{JOB_S3}/checkpoints", "LocalPath": "/opt/ml/checkpoints"},
        "Tags": [
            {"Key": "fastuner:tenant", "Value": TENANT},
            {"Key": "fastuner:job", "Value": JOB_ID},
            {"Key": "fastuner:managed", "Value": "true"},
        ],
    }
    assert "Environment" not in request  # nothing secret can leak through the job's description
    assert state == {"training_job_arn": moto_job().arn, "output_s3": f"{JOB_S3}/output"}

    # What SageMaker (moto) recorded agrees with the request.
    desc = backend.sagemaker.describe_training_job(TrainingJobName=JOB_NAME)
    assert [c["DataSource"]["S3DataSource"]["S3Uri"] for c in desc["InputDataConfig"]] == [
        f"{DS}/train.jsonl",
        f"{DS}/validation.jsonl",
    ]
    assert desc["CheckpointConfig"] == {"S3Uri": f"{JOB_S3}/checkpoints", "LocalPath": "/opt/ml/checkpoints"}
    # SageMaker's model artifact lands where fetch_model looks for it.
    assert desc["ModelArtifacts"]["S3ModelArtifacts"] == backend.store.uri(backend.model_key(JOB_NAME, state))


def test_metric_definitions_read_the_engine_lines() -> None:
    """The regexes sent to SageMaker extract every key of the engine's own line format."""
    for unreachable in (0, 1, -1):
        line = format_train_line(train_record(10, 3.33, unreachable))
        parsed = parse_line(line)
        assert parsed is not None and set(parsed) == set(TRAIN_KEYS)
        assert parsed["unreachable"] == unreachable
        assert parse_with_definitions(line) == {f"train:{key}": value for key, value in parsed.items()}


@pytest.mark.parametrize(
    ("max_wait", "expected"),
    [
        (None, {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}),
        (5000, {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 5000}),
    ],
)
def test_spot_settings(
    backend: SageMakerBackend,
    make_spec: Callable[..., TrainingSpec],
    calls: Calls,
    max_wait: int | None,
    expected: dict[str, int],
) -> None:
    backend.start_training(make_spec(spot=True, max_wait_seconds=max_wait, instance_count=2))
    [request] = calls.of("CreateTrainingJob")
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == expected
    assert request["ResourceConfig"]["InstanceCount"] == 2
    assert moto_job().enable_managed_spot_training is True


def test_max_wait_is_only_sent_for_spot(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec], calls: Calls
) -> None:
    backend.start_training(make_spec(spot=False, max_wait_seconds=9000))
    assert calls.of("CreateTrainingJob")[0]["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600}


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"spot": True, "max_wait_seconds": 60}, "max_wait_seconds"),
        ({"hyperparameters": {"lora_r": 16}}, "strings"),
        ({"job_name": "bad_name"}, "job name"),
        ({"job_name": "x" * 64}, "job name"),
        ({"channels": {}}, "channel"),
    ],
)
def test_invalid_specs_are_refused_before_any_call(
    backend: SageMakerBackend,
    make_spec: Callable[..., TrainingSpec],
    calls: Calls,
    overrides: dict[str, Any],
    match: str,
) -> None:
    with pytest.raises(ValueError, match=match):
        backend.start_training(make_spec(**overrides))
    assert calls.params == {}
    assert moto_jobs() == {}


def test_a_channel_prefix_must_match_only_its_split(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec], store: S3Store
) -> None:
    store.put_bytes(f"{TENANT}/datasets/{DATASET}/train.jsonl.bak.jsonl", b"{}\n")
    with pytest.raises(BackendError, match=r"matches 2 objects"):
        backend.start_training(make_spec())
    assert moto_jobs() == {}


def test_a_missing_split_is_refused(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec]
) -> None:
    with pytest.raises(BackendError, match="does not exist"):
        backend.start_training(make_spec(channels={"train": f"{TENANT}/datasets/ds_gone/train.jsonl"}))
    assert moto_jobs() == {}


def test_start_is_idempotent(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec], calls: Calls
) -> None:
    first = backend.start_training(make_spec())
    set_state("InProgress", "Training")  # moto would reset a re-created job to Completed
    second = backend.start_training(make_spec())
    assert second == first
    assert len(calls.of("CreateTrainingJob")) == 1
    assert list(moto_jobs()) == [JOB_NAME]
    assert moto_job().training_job_status == "InProgress"


def test_same_name_different_job_is_a_conflict(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec], calls: Calls
) -> None:
    backend.start_training(make_spec())
    with pytest.raises(Conflict, match="already exists"):
        backend.start_training(make_spec(hyperparameters={"base_model": "other", "lora_r": "8"}))
    with pytest.raises(Conflict):
        backend.start_training(make_spec(output_prefix=f"{TENANT}/jobs/ft_other/output"))
    assert len(calls.of("CreateTrainingJob")) == 1


def test_losing_a_create_race_reuses_the_existing_job(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec]
) -> None:
    state = backend.start_training(make_spec())
    # Another start created the job between this start's describe and its create.
    describes = inject(
        backend.sagemaker,
        "DescribeTrainingJob",
        [aws_error(400, "ValidationException", "Requested resource not found.")],
    )
    creates = inject(
        backend.sagemaker,
        "CreateTrainingJob",
        [aws_error(400, "ResourceInUse", f"Training job names must be unique ... {JOB_NAME} already exists")],
    )
    assert backend.start_training(make_spec()) == state
    assert describes["attempts"] == 2
    assert creates["attempts"] == 1


def test_other_create_errors_surface_as_backend_errors(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec]
) -> None:
    inject(
        backend.sagemaker,
        "CreateTrainingJob",
        [aws_error(400, "ResourceLimitExceeded", "The account-level service limit 'ml.g5.xlarge' is 0")],
    )
    with pytest.raises(BackendError, match="ResourceLimitExceeded") as info:
        backend.start_training(make_spec())
    assert info.value.details == {"aws_error": "ResourceLimitExceeded", "transient": False}


# -- throttling -------------------------------------------------------------------------------
def test_throttling_is_retried_by_botocore(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec], no_backoff: list[int]
) -> None:
    throttled = aws_error(400, "ThrottlingException", "Rate exceeded")
    creates = inject(backend.sagemaker, "CreateTrainingJob", [throttled, throttled, throttled])
    describes = inject(backend.sagemaker, "DescribeTrainingJob", [throttled])

    state = backend.start_training(make_spec())

    assert state["training_job_arn"] == moto_job().arn
    assert creates["attempts"] == 4  # three throttled, the fourth reached SageMaker
    assert describes["attempts"] == 2
    assert len(no_backoff) == 4  # one backoff before each retry


def test_throttling_that_never_ends_fails_as_transient(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec], no_backoff: list[int]
) -> None:
    throttled = aws_error(400, "ThrottlingException", "Rate exceeded")
    creates = inject(backend.sagemaker, "CreateTrainingJob", [throttled] * 50)
    with pytest.raises(BackendError, match="ThrottlingException") as info:
        backend.start_training(make_spec())
    assert info.value.details == {"aws_error": "ThrottlingException", "transient": True}
    # botocore's ``max_attempts`` counts retries: the first try plus MAX_ATTEMPTS retries.
    assert creates["attempts"] == MAX_ATTEMPTS + 1
    assert moto_jobs() == {}


def test_connection_errors_are_retried_then_reported_as_transient(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec], no_backoff: list[int]
) -> None:
    state = backend.start_training(make_spec())

    def unreachable(request: Any) -> AWSResponse:
        raise EndpointConnectionError(endpoint_url=request.url)

    describes = inject(backend.sagemaker, "DescribeTrainingJob", [unreachable] * 50)
    with pytest.raises(BackendError, match="EndpointConnectionError") as info:
        backend.describe_training(JOB_NAME, state)
    assert info.value.details == {"aws_error": "EndpointConnectionError", "transient": True}
    assert describes["attempts"] == MAX_ATTEMPTS + 1


def test_log_reads_are_retried_too(
    backend: SageMakerBackend, job_log: dict[str, list[str]], no_backoff: list[int]
) -> None:
    throttled = aws_error(400, "ThrottlingException", "Rate exceeded")
    filters = inject(backend.logs, "FilterLogEvents", [throttled, throttled])
    assert [r["step"] for r in backend.read_metrics(JOB_NAME, {}, after_step=0)] == [10, 20, 30, 40]
    assert filters["attempts"] == 3


# -- status -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "secondary", "expected"),
    [
        ("InProgress", "Starting", JobStatus.PROVISIONING),
        ("InProgress", "Pending", JobStatus.PROVISIONING),
        ("InProgress", "LaunchingMLInstances", JobStatus.PROVISIONING),
        ("InProgress", "PreparingTrainingStack", JobStatus.PROVISIONING),
        ("InProgress", "Downloading", JobStatus.PROVISIONING),
        ("InProgress", "DownloadingTrainingImage", JobStatus.PROVISIONING),
        ("InProgress", "Training", JobStatus.RUNNING),
        ("InProgress", "Uploading", JobStatus.RUNNING),
        ("InProgress", "Restarting", JobStatus.RUNNING),
        ("InProgress", "Interrupted", JobStatus.RUNNING),
        ("Stopping", "Stopping", JobStatus.CANCELLING),
        ("Stopping", "MaxRuntimeExceeded", JobStatus.RUNNING),  # not a user cancel: ends failed
        ("Stopped", "Stopped", JobStatus.CANCELLED),
        ("Stopped", "MaxRuntimeExceeded", JobStatus.FAILED),
        ("Stopped", "MaxWaitTimeExceeded", JobStatus.FAILED),
        ("Failed", "Failed", JobStatus.FAILED),
        ("Completed", "Completed", JobStatus.COMPLETED),
    ],
)
def test_status_mapping(
    backend: SageMakerBackend,
    make_spec: Callable[..., TrainingSpec],
    status: str,
    secondary: str,
    expected: JobStatus,
) -> None:
    state = backend.start_training(make_spec())
    set_state(status, secondary)
    observed = backend.describe_training(JOB_NAME, state)
    assert observed.status == expected
    assert observed.secondary_status == secondary
    assert (observed.failure_reason is not None) == (expected == JobStatus.FAILED)


def test_a_job_moves_through_its_life(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec]
) -> None:
    state = backend.start_training(make_spec())
    set_state("InProgress", "Starting", training_start_time=None, training_end_time=None)
    first = backend.describe_training(JOB_NAME, state)
    assert first.status == JobStatus.PROVISIONING
    assert (first.started_at, first.ended_at, first.billable_seconds) == (None, None, None)

    started = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    set_state("InProgress", "Training", training_start_time=started)
    assert backend.describe_training(JOB_NAME, state).status == JobStatus.RUNNING

    ended = datetime(2026, 11, 23, 10, 42, tzinfo=UTC)
    set_state("Completed", "Completed", training_end_time=ended, billable_time_in_seconds=2520)
    done = backend.describe_training(JOB_NAME, state)
    assert done.status == JobStatus.COMPLETED
    assert done.started_at == started
    assert done.ended_at == ended
    assert done.billable_seconds == 2520
    assert done.failure_reason is None


def test_failure_reason_is_surfaced(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec]
) -> None:
    state = backend.start_training(make_spec())
    reason = "AlgorithmError: CUDA out of memory; lower batch_size or use qlora"
    set_state("Failed", "Failed", failure_reason=reason, billable_time_in_seconds=95)
    observed = backend.describe_training(JOB_NAME, state)
    assert observed.status == JobStatus.FAILED
    assert observed.failure_reason == reason
    assert observed.billable_seconds == 95


def test_hitting_max_runtime_is_a_failure_with_a_clear_reason(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec]
) -> None:
    state = backend.start_training(make_spec(spot=True))
    set_state("Stopped", "MaxRuntimeExceeded")
    assert "maximum runtime" in (backend.describe_training(JOB_NAME, state).failure_reason or "")
    assert "3600 s" in (backend.describe_training(JOB_NAME, state).failure_reason or "")
    set_state("Stopped", "MaxWaitTimeExceeded")
    reason = backend.describe_training(JOB_NAME, state).failure_reason or ""
    assert "wait time" in reason
    assert "7200 s" in reason


def test_status_of_descriptions_moto_cannot_produce() -> None:
    # An InProgress secondary status we do not know: provisioning until training has started.
    assert status_from_description({"TrainingJobStatus": "InProgress"}).status == JobStatus.PROVISIONING
    started = {
        "TrainingJobStatus": "InProgress",
        "SecondaryStatus": "New",
        "TrainingStartTime": datetime.now(UTC),
    }
    assert status_from_description(started).status == JobStatus.RUNNING
    failed = status_from_description({"TrainingJobStatus": "Failed"})
    assert failed.status == JobStatus.FAILED
    assert failed.failure_reason
    with pytest.raises(BackendError, match="unknown"):
        status_from_description({"TrainingJobStatus": "Exploded"})


def test_describing_a_missing_job_is_a_backend_error(backend: SageMakerBackend) -> None:
    with pytest.raises(BackendError, match="does not exist"):
        backend.describe_training("never-created", {})


# -- stop -------------------------------------------------------------------------------------
def test_stop_goes_through_the_seam_and_ends_cancelled(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = backend.start_training(make_spec())
    set_state("InProgress", "Training")
    stopped: list[str] = []

    def fake_stop(name: str) -> None:  # what SageMaker does on StopTrainingJob
        stopped.append(name)
        set_state("Stopping", "Stopping")

    monkeypatch.setattr(backend, "_call_stop", fake_stop)
    backend.stop_training(JOB_NAME, state)
    assert stopped == [JOB_NAME]
    assert backend.describe_training(JOB_NAME, state).status == JobStatus.CANCELLING

    backend.stop_training(JOB_NAME, state)  # already stopping: nothing more to ask
    assert stopped == [JOB_NAME]

    set_state("Stopped", "Stopped", training_end_time=datetime.now(UTC))
    assert backend.describe_training(JOB_NAME, state).status == JobStatus.CANCELLED


@pytest.mark.parametrize("status", ["Completed", "Failed", "Stopped"])
def test_stopping_a_finished_job_is_a_no_op(
    backend: SageMakerBackend,
    make_spec: Callable[..., TrainingSpec],
    monkeypatch: pytest.MonkeyPatch,
    status: str,
) -> None:
    state = backend.start_training(make_spec())
    set_state(status, status)
    monkeypatch.setattr(backend, "_call_stop", lambda name: pytest.fail("must not call StopTrainingJob"))
    backend.stop_training(JOB_NAME, state)
    backend.stop_training("never-created", {})


def test_a_job_finishing_during_the_stop_is_a_no_op(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = backend.start_training(make_spec())
    set_state("InProgress", "Uploading")
    error = {"Error": {"Code": "ValidationException", "Message": "The training job is in status Completed."}}

    def raced(name: str) -> None:
        raise ClientError(error, "StopTrainingJob")  # type: ignore[arg-type]

    monkeypatch.setattr(backend, "_call_stop", raced)
    backend.stop_training(JOB_NAME, state)

    denied = {"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}}

    def forbidden(name: str) -> None:
        raise ClientError(denied, "StopTrainingJob")  # type: ignore[arg-type]

    monkeypatch.setattr(backend, "_call_stop", forbidden)
    with pytest.raises(BackendError, match="AccessDenied"):
        backend.stop_training(JOB_NAME, state)


def test_the_real_seam_sends_stop_training_job(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec], calls: Calls
) -> None:
    state = backend.start_training(make_spec())
    set_state("InProgress", "Training")

    def ok(request: Any) -> AWSResponse:
        headers = {"x-amzn-RequestId": "test", "Content-Type": "application/x-amz-json-1.1"}
        return AWSResponse(request.url, 200, headers, _Raw(b"{}"))

    stops = inject(backend.sagemaker, "StopTrainingJob", [ok])
    backend.stop_training(JOB_NAME, state)
    assert stops["attempts"] == 1
    assert calls.of("StopTrainingJob") == [{"TrainingJobName": JOB_NAME}]


# -- metrics and logs -------------------------------------------------------------------------
def train_record(step: int, loss_bpt: float, unreachable: int = 0) -> dict[str, float]:
    """One record with every key of the engine's line (scu.metrics_format.TRAIN_KEYS)."""
    return {
        "step": step,
        "epoch": step / 100,
        "loss_bpt": loss_bpt,
        "data_bpt": loss_bpt - 1.02 * 0.012,
        "param_bpt": 0.012,
        "s": 0.0036,
        "s_hat": 0.0035,
        "target_s": 0.004,
        "band": 0.1,
        "lambda": 1.02,
        "unreachable": unreachable,
        "lr": 2e-4,
        "tokens_per_s": 812.3,
        "eta_s": 41,
    }


def put_log(logs: Any, stream: str, lines: list[tuple[int, str]], *, create: bool = True) -> None:
    if create:
        logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
    logs.put_log_events(
        logGroupName=LOG_GROUP,
        logStreamName=stream,
        logEvents=[{"timestamp": ts, "message": message} for ts, message in lines],
    )


EVAL = {"tokens": 5120, "base_bpt": 4.91, "adapter_bpt": 3.87, "base_ppl": 30.1, "adapter_ppl": 14.6}
T0 = (int(time.time()) - 3600) * 1000  # ms; CloudWatch refuses events older than 14 days


@pytest.fixture
def job_log(backend: SageMakerBackend) -> dict[str, list[str]]:
    """CloudWatch Logs as SageMaker writes them: one stream per host and (re)start."""
    logs = backend.logs
    logs.create_log_group(logGroupName=LOG_GROUP)
    first = [
        (T0 + 1, "Invoking script with the following command: train"),
        (T0 + 2, format_train_line(train_record(10, 2.5))),
        (T0 + 3, "some warning from transformers"),
        (T0 + 4, format_train_line(train_record(20, 2.4))),
        (T0 + 5, format_train_line(train_record(30, 2.3))),
        (T0 + 6, "SIGTERM received: checkpoint saved at step 20"),
    ]
    # After a spot interruption the job resumes from the step-20 checkpoint in a new stream.
    second = [
        (T0 + 100, "resuming from checkpoint step 20"),
        (T0 + 101, format_train_line(train_record(30, 2.2))),
        (T0 + 102, format_train_line(train_record(40, 2.1))),
        (T0 + 103, format_eval_line(EVAL)),
        (T0 + 104, "Training complete\nmodel saved to /opt/ml/model"),
    ]
    put_log(logs, f"{JOB_NAME}/algo-1-1763900000", first)
    put_log(logs, f"{JOB_NAME}/algo-1-1763900100", second)
    # Other jobs' streams share the group; one even has our name as a prefix.
    put_log(logs, "other-job/algo-1-1763900000", [(T0 + 50, format_train_line(train_record(50, 9.9)))])
    put_log(logs, f"{JOB_NAME}-2/algo-1-1763900000", [(T0 + 60, format_train_line(train_record(60, 9.9)))])
    lines = (
        [m for _, m in first]
        + [m for _, m in second[:-1]]
        + ["Training complete", "model saved to /opt/ml/model"]
    )
    return {"lines": lines}


def expected_record(step: int, loss_bpt: float) -> dict[str, float]:
    parsed = parse_line(format_train_line(train_record(step, loss_bpt)))
    assert parsed is not None
    return parsed


@pytest.mark.parametrize("page_size", [10_000, 2])
def test_read_metrics(backend: SageMakerBackend, job_log: dict[str, list[str]], page_size: int) -> None:
    backend.log_page_size = page_size
    assert backend.read_metrics(JOB_NAME, {}, after_step=0) == [
        expected_record(10, 2.5),
        expected_record(20, 2.4),
        expected_record(30, 2.2),  # the replayed step after the restart wins
        expected_record(40, 2.1),
    ]
    assert backend.read_metrics(JOB_NAME, {}, after_step=20) == [
        expected_record(30, 2.2),
        expected_record(40, 2.1),
    ]
    assert backend.read_metrics(JOB_NAME, {}, after_step=40) == []


@pytest.mark.parametrize("page_size", [10_000, 2])
def test_read_logs(backend: SageMakerBackend, job_log: dict[str, list[str]], page_size: int) -> None:
    backend.log_page_size = page_size
    lines = job_log["lines"]
    assert backend.read_logs(JOB_NAME, {}, tail=3) == lines[-3:]
    assert backend.read_logs(JOB_NAME, {}, tail=7) == lines[-7:]
    assert backend.read_logs(JOB_NAME, {}, tail=1000) == lines
    assert backend.read_logs(JOB_NAME, {}, tail=0) == []


def test_metrics_are_read_incrementally(backend: SageMakerBackend, job_log: dict[str, list[str]]) -> None:
    queries: list[dict[str, Any]] = []
    hook(
        backend.logs,
        "before-parameter-build.logs.FilterLogEvents",
        lambda params, **_: queries.append(dict(params)),
    )

    assert [r["step"] for r in backend.read_metrics(JOB_NAME, {}, after_step=0)] == [10, 20, 30, 40]
    assert "startTime" not in queries[-1]
    assert queries[-1]["logStreamNamePrefix"] == f"{JOB_NAME}/"

    # New lines arrive, one of them late (older than the newest event already read).
    stream = f"{JOB_NAME}/algo-1-1763900100"
    put_log(backend.logs, stream, [(T0 + 99, format_train_line(train_record(35, 2.15)))], create=False)
    put_log(backend.logs, stream, [(T0 + 200, format_train_line(train_record(50, 2.0)))], create=False)
    records = backend.read_metrics(JOB_NAME, {}, after_step=40)
    assert queries[-1]["startTime"] == T0 + 104 - LOG_REREAD_MS
    assert records == [expected_record(50, 2.0)]

    # Asked again from further back (the service lost rows): everything is read again.
    records = backend.read_metrics(JOB_NAME, {}, after_step=0)
    assert "startTime" not in queries[-1]
    assert [r["step"] for r in records] == [10, 20, 30, 35, 40, 50]
    assert len(queries) == 3


def test_no_log_yet(backend: SageMakerBackend) -> None:
    # Before the instances start there is no stream (or not even the group).
    assert backend.read_metrics(JOB_NAME, {}, after_step=0) == []
    assert backend.read_logs(JOB_NAME, {}, tail=10) == []
    backend.logs.create_log_group(logGroupName=LOG_GROUP)
    assert backend.read_metrics(JOB_NAME, {}, after_step=0) == []
    assert backend.read_logs(JOB_NAME, {}, tail=10) == []


# -- model ------------------------------------------------------------------------------------
MODEL_FILES = {
    "adapter_config.json": json.dumps({"peft_type": "LORA", "r": 16}).encode(),
    "adapter_model.safetensors": b"placeholder",
    "eval.json": json.dumps({"adapter_bpt": 3.87, "base_bpt": 4.91}).encode(),
}


def make_tar(path: Path, members: dict[str, bytes], *, links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def model_key() -> str:
    return f"{TENANT}/jobs/{JOB_ID}/output/{JOB_NAME}/output/model.tar.gz"


def test_fetch_model(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec], store: S3Store, tmp_path: Path
) -> None:
    state = backend.start_training(make_spec())
    assert backend.model_key(JOB_NAME, state) == model_key()
    assert backend.model_key(JOB_NAME, {}) == model_key()  # from DescribeTrainingJob's ModelArtifacts
    members = {f"./{k}" if k == "eval.json" else k: v for k, v in MODEL_FILES.items()}
    store.put_file(model_key(), make_tar(tmp_path / "model.tar.gz", members))

    dest = tmp_path / "adapter"
    backend.fetch_model(JOB_NAME, state, dest)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == MODEL_FILES


@pytest.mark.parametrize(
    ("members", "links"),
    [
        ({**MODEL_FILES, "../evil.txt": b"x"}, None),
        ({**MODEL_FILES, "sub/../../evil.txt": b"x"}, None),
        ({**MODEL_FILES, "/tmp/evil.txt": b"x"}, None),
        (MODEL_FILES, {"link": "/etc/passwd"}),
        (MODEL_FILES, {"link": "../evil.txt"}),
    ],
)
def test_fetch_model_rejects_unsafe_archives(
    backend: SageMakerBackend,
    make_spec: Callable[..., TrainingSpec],
    store: S3Store,
    tmp_path: Path,
    members: dict[str, bytes],
    links: dict[str, str] | None,
) -> None:
    state = backend.start_training(make_spec())
    store.put_file(model_key(), make_tar(tmp_path / "model.tar.gz", members, links=links))
    dest = tmp_path / "out" / "adapter"
    with pytest.raises(BackendError, match="model archive"):
        backend.fetch_model(JOB_NAME, state, dest)
    assert list(dest.iterdir()) == []  # checked before anything was written
    assert not (tmp_path / "out" / "evil.txt").exists()


def test_safe_extract_refuses_before_writing(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "m.tar.gz", {"ok.txt": b"fine", "../evil.txt": b"x"})
    with pytest.raises(BackendError, match="unsafe path"):
        safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "dest" / "ok.txt").exists()


def test_fetch_model_without_an_archive_or_adapter(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec], store: S3Store, tmp_path: Path
) -> None:
    state = backend.start_training(make_spec())
    with pytest.raises(BackendError, match="left no model"):
        backend.fetch_model(JOB_NAME, state, tmp_path / "a")
    store.put_file(model_key(), make_tar(tmp_path / "model.tar.gz", {"eval.json": b"{}"}))
    with pytest.raises(BackendError, match=r"adapter_config\.json"):
        backend.fetch_model(JOB_NAME, state, tmp_path / "b")
