"""The training backend's construction and the CreateTrainingJob request it sends (or refuses to)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from scu.metrics_format import (
    METRIC_DEFINITIONS,
    TRAIN_KEYS,
    format_train_line,
    parse_line,
    parse_with_definitions,
)

from api.backends.base import ComputeBackend, TrainingSpec
from api.backends.sagemaker import MAX_ATTEMPTS, SageMakerBackend
from api.domain.errors import BackendError
from api.storage.s3 import S3Store
from tests.backends.sagemaker_training.support import (
    DATASET,
    DS,
    IMAGE_URI,
    JOB_ID,
    JOB_NAME,
    JOB_S3,
    ROLE_ARN,
    TENANT,
    moto_job,
    moto_jobs,
)
from tests.support.calls import Calls
from tests.support.engine_lines import train_record
from tests.support.moto import REGION


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
        # a step with a validation: the line has every key (val_bpt only on those steps)
        line = format_train_line({**train_record(10, 3.33, unreachable=unreachable), "val_bpt": 3.41})
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
    assert calls == {}
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
