"""The ``CreateTrainingJob`` request for a :class:`~api.backends.base.TrainingSpec`: validated,
pure (no I/O), so tests read it as the exact request SageMaker gets."""

from __future__ import annotations

from typing import Any

from scu.metrics_format import METRIC_DEFINITIONS

from api.backends.base import TrainingSpec
from api.backends.sagemaker_base import NAME_PATTERN
from api.storage.s3 import S3Store

CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
CHANNEL_CONTENT_TYPE = "application/jsonlines"


def training_request(
    spec: TrainingSpec, *, store: S3Store, image_uri: str, role_arn: str, environment: dict[str, str]
) -> dict[str, Any]:
    """The exact ``CreateTrainingJob`` request for ``spec``; ``environment``: the container's."""
    check(spec)
    request: dict[str, Any] = {
        "TrainingJobName": spec.job_name,
        "AlgorithmSpecification": {
            "TrainingImage": image_uri,
            "TrainingInputMode": "File",
            "MetricDefinitions": [dict(d) for d in METRIC_DEFINITIONS],
        },
        "RoleArn": role_arn,
        "HyperParameters": dict(spec.hyperparameters),
        "InputDataConfig": [channel(name, store.uri(key)) for name, key in spec.channels.items()],
        "OutputDataConfig": {"S3OutputPath": store.uri(spec.output_prefix.rstrip("/"))},
        "ResourceConfig": {
            "InstanceType": spec.instance_type,
            "InstanceCount": spec.instance_count,
            "VolumeSizeInGB": spec.volume_gb,
        },
        "StoppingCondition": stopping_condition(spec),
        "EnableManagedSpotTraining": spec.spot,
        "CheckpointConfig": {
            "S3Uri": store.uri(spec.checkpoint_prefix.rstrip("/")),
            "LocalPath": CHECKPOINT_LOCAL_PATH,
        },
        "Tags": [{"Key": k, "Value": v} for k, v in spec.tags.items()],
    }
    if environment:
        request["Environment"] = dict(environment)
    return request


def check(spec: TrainingSpec) -> None:
    """Refuse (ValueError) a spec SageMaker would refuse, before any call."""
    if not NAME_PATTERN.match(spec.job_name):
        raise ValueError(f"invalid SageMaker training job name: {spec.job_name!r}")
    bad = {k: type(v).__name__ for k, v in spec.hyperparameters.items() if not isinstance(v, str)}
    if bad:
        raise ValueError(f"hyperparameters must be strings; got {bad}")
    if not spec.channels:
        raise ValueError("a training job needs at least one input channel")
    if spec.instance_count < 1:
        raise ValueError("instance_count must be >= 1")


def stopping_condition(spec: TrainingSpec) -> dict[str, int]:
    """Max runtime; with spot also the max wait (default twice the runtime, never less than it)."""
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": spec.max_runtime_seconds}
    if spec.spot:
        wait = spec.max_wait_seconds if spec.max_wait_seconds is not None else 2 * spec.max_runtime_seconds
        if wait < spec.max_runtime_seconds:
            raise ValueError(
                f"max_wait_seconds ({wait}) must be >= max_runtime_seconds ({spec.max_runtime_seconds})"
            )
        stopping["MaxWaitTimeInSeconds"] = wait
    return stopping


def channel(name: str, s3_uri: str) -> dict[str, Any]:
    """One input channel: the S3 prefix that is exactly one split file."""
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": s3_uri,
                "S3DataDistributionType": "FullyReplicated",
            }
        },
        "ContentType": CHANNEL_CONTENT_TYPE,
        "CompressionType": "None",
        "InputMode": "File",
    }
