"""The janitor's Lambda handler: settings from the environment (database URL from a secret) and
one janitor pass through the API's own code, against moto (S3, SageMaker, Secrets Manager, SSM)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.backends import get_backend

from api import lambda_janitor
from api.settings import get_settings

REGION = "us-east-1"
ACCOUNT = "123456789012"
BUCKET = "fastuner-lambda-test"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/fastuner-sagemaker"
ORPHAN = "fastuner-dep-orphan0000001"


@pytest.fixture
def lambda_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment the CloudFormation stack gives the function, inside moto."""
    for name in (
        "FASTUNER_DATABASE_URL",
        "FASTUNER_DATABASE_URL_SECRET_ARN",
        "FASTUNER_DATABASE_URL_PARAMETER",
    ):
        monkeypatch.delenv(name, raising=False)
    env = {
        "FASTUNER_HOME": str(tmp_path / "home"),
        "FASTUNER_STORE": "s3",
        "FASTUNER_S3_BUCKET": BUCKET,
        "FASTUNER_BACKEND": "sagemaker",
        "FASTUNER_AWS_REGION": REGION,
        "FASTUNER_SAGEMAKER_ROLE_ARN": ROLE_ARN,
        "FASTUNER_TRAINING_IMAGE_URI": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/fastuner-training:t",
        "FASTUNER_INFERENCE_IMAGE_URI": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/fastuner-inference:t",
        "FASTUNER_BACKGROUND_TASKS": "false",
        "FASTUNER_LOG_JSON": "false",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        yield env
    # load_settings() writes the resolved URL into os.environ itself (as it must in Lambda);
    # monkeypatch can't undo what it didn't set, so drop it here lest it leak into later tests.
    os.environ.pop("FASTUNER_DATABASE_URL", None)
    get_settings.cache_clear()


def test_database_url_from_a_secret(lambda_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{lambda_env['FASTUNER_HOME']}/from-secret.db"
    arn = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="fastuner/db", SecretString=json.dumps({"url": url})
    )["ARN"]
    monkeypatch.setenv("FASTUNER_DATABASE_URL_SECRET_ARN", arn)
    assert lambda_env_url() is None
    settings = lambda_janitor.load_settings()
    assert settings.database_url == url
    assert settings.store == "s3" and settings.backend == "sagemaker"


def test_database_url_from_a_plain_secret_and_an_ssm_parameter(lambda_env: dict[str, str]) -> None:
    boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="fastuner/plain", SecretString="postgresql+psycopg://u:p@db:5432/fastuner"
    )
    assert (
        lambda_janitor.resolve_database_url(
            {"FASTUNER_DATABASE_URL_SECRET_ARN": "fastuner/plain", "FASTUNER_AWS_REGION": REGION}
        )
        == "postgresql+psycopg://u:p@db:5432/fastuner"
    )
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name="/fastuner/database-url", Value="postgresql+psycopg://x@db/f", Type="SecureString"
    )
    assert (
        lambda_janitor.resolve_database_url(
            {"FASTUNER_DATABASE_URL_PARAMETER": "/fastuner/database-url", "FASTUNER_AWS_REGION": REGION}
        )
        == "postgresql+psycopg://x@db/f"
    )
    assert lambda_janitor.resolve_database_url({}) is None


def test_json_secret_without_url_is_an_error(lambda_env: dict[str, str]) -> None:
    boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="fastuner/bad", SecretString=json.dumps({"username": "u"})
    )
    with pytest.raises(RuntimeError, match="'url'"):
        lambda_janitor.resolve_database_url({"FASTUNER_DATABASE_URL_SECRET_ARN": "fastuner/bad"})


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (None, False),
        ({}, False),
        ({"dry_run": True}, True),
        ({"dry_run": "true"}, True),
        ({"dry_run": "false"}, False),
        ({"source": "aws.events", "detail-type": "Scheduled Event"}, False),
    ],
)
def test_dry_run_flag(event: Any, expected: bool) -> None:
    assert lambda_janitor._dry_run(event) is expected


def lambda_env_url() -> str | None:
    return os.environ.get("FASTUNER_DATABASE_URL")


def make_orphan() -> None:
    """A managed endpoint no deployment row knows about, created a day ago."""
    sm = boto3.client("sagemaker", region_name=REGION)
    sm.create_model(
        ModelName=ORPHAN,
        PrimaryContainer={"Image": "img"},
        ExecutionRoleArn=ROLE_ARN,
    )
    sm.create_endpoint_config(
        EndpointConfigName=ORPHAN,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": ORPHAN,
                "InstanceType": "ml.g4dn.xlarge",
                "InitialInstanceCount": 1,
            }
        ],
    )
    tags = [
        {"Key": "fastuner:managed", "Value": "true"},
        {"Key": "fastuner:tenant", "Value": "default"},
        {"Key": "fastuner:deployment", "Value": "dep_orphan000001"},
    ]
    sm.create_endpoint(EndpointName=ORPHAN, EndpointConfigName=ORPHAN, Tags=tags)
    endpoint = get_backend("sagemaker")[ACCOUNT][REGION].endpoints[ORPHAN]
    endpoint.creation_time = endpoint.last_modified_time = datetime.now(UTC) - timedelta(days=1)


def test_handler_runs_one_janitor_pass(lambda_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("api.services.janitor", reason="the janitor service has not landed yet")
    from api.domain.deployments import JanitorReport

    url = f"sqlite:///{lambda_env['FASTUNER_HOME']}/fastuner.db"
    arn = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="fastuner/db", SecretString=url
    )["ARN"]
    monkeypatch.setenv("FASTUNER_DATABASE_URL_SECRET_ARN", arn)
    make_orphan()

    dry = lambda_janitor.handler({"dry_run": True}, None)
    report = JanitorReport.model_validate(dry)
    assert report.dry_run is True
    assert json.loads(json.dumps(dry)) == dry  # a Lambda result must be JSON
    assert ORPHAN in {a.endpoint_name for a in report.actions}
    assert ORPHAN in get_backend("sagemaker")[ACCOUNT][REGION].endpoints  # dry run: nothing deleted

    real = JanitorReport.model_validate(lambda_janitor.handler({"source": "aws.events"}, None))
    assert real.dry_run is False
    assert ORPHAN not in get_backend("sagemaker")[ACCOUNT][REGION].endpoints
