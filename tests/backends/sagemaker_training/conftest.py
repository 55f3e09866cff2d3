"""Fixtures of the SageMaker training backend tests: moto clients, a bucket with a dataset, the backend."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from scu.metrics_format import format_eval_line, format_train_line

from api.backends.base import TrainingSpec
from api.backends.sagemaker import LOG_GROUP, RETRY_CONFIG, SageMakerBackend
from api.storage.s3 import S3Store
from tests.backends.sagemaker_training.support import (
    BUCKET,
    DATASET,
    EVAL,
    IMAGE_URI,
    JOB_ID,
    JOB_NAME,
    ROLE_ARN,
    T0,
    TENANT,
    put_log,
    split_key,
)
from tests.support.calls import Calls
from tests.support.engine_lines import train_record
from tests.support.moto import REGION, aws_clients, mocked_bucket


@pytest.fixture(scope="module")
def clients() -> dict[str, Any]:
    return aws_clients(s3=RETRY_CONFIG, sagemaker=RETRY_CONFIG, logs=RETRY_CONFIG)


@pytest.fixture
def store(clients: dict[str, Any]) -> Iterator[S3Store]:
    with mocked_bucket(clients["s3"], BUCKET) as store:
        yield store


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


@pytest.fixture
def calls(backend: SageMakerBackend) -> Calls:
    return Calls.on(backend.sagemaker)


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
