"""Starting a training job again, racing another start, and AWS errors: throttling, connection loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import EndpointConnectionError

from api.backends.base import TrainingSpec
from api.backends.sagemaker import MAX_ATTEMPTS, SageMakerBackend
from api.domain.errors import BackendError, Conflict
from tests.backends.sagemaker_training.support import JOB_NAME, TENANT, moto_job, moto_jobs, set_state
from tests.support.aws import aws_error, inject
from tests.support.calls import Calls


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
