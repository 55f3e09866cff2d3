"""moto for the AWS tests: module-wide clients, a fresh mocked bucket per test, moto's own state."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.config import Config
from moto import mock_aws
from moto.backends import get_backend

from api.storage.s3 import S3Store

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account


def aws_clients(**configs: Config) -> dict[str, Any]:
    """One client per service (``sagemaker_runtime=`` for ``sagemaker-runtime``), configured as the
    backend builds its own. Build them once per module (building clients dominates a test's cost),
    after moto is imported: moto's stub then answers them inside each test's own ``mock_aws``."""
    return {
        name: boto3.client(name.replace("_", "-"), region_name=REGION, config=config)
        for name, config in configs.items()
    }


@contextmanager
def mocked_bucket(s3: Any, bucket: str) -> Iterator[S3Store]:
    """Fresh moto state for the test, with ``bucket`` in it."""
    with mock_aws():
        s3.create_bucket(Bucket=bucket)
        yield S3Store(bucket, client=s3)


def moto_sagemaker() -> Any:
    """moto's in-process SageMaker (``training_jobs``, ``endpoints``, ...) of the default account."""
    return get_backend("sagemaker")[ACCOUNT][REGION]
