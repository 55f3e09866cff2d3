"""What the infra tests share: the template, the names, and the stack deployed on moto."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
from moto import mock_aws

REGION = "us-east-1"
ACCOUNT = "123456789012"
ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "infra" / "cloudformation" / "fastuner.yaml"
STACK = "fastuner-test"
CODE_BUCKET = "fastuner-artifacts"
CODE_KEY = "lambda/fastuner-janitor.zip"


# (moto's ValidateTemplate is cfn-lint itself; CreateStack builds what moto supports: bucket, queues,
# ECR, IAM, log group, Lambda, EventBridge rule and permission.)
def create_stack(database_url: str, **parameters: str) -> str:
    """Create the stack on moto (inside ``mock_aws``), the janitor's code package uploaded first, with
    ``parameters`` added to the required ones; returns the ARN of the database URL's secret."""
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=CODE_BUCKET)
    package = io.BytesIO()
    with zipfile.ZipFile(package, "w") as zf:
        zf.writestr("api/lambda_janitor.py", "def handler(event, context):\n    return {}\n")
    s3.put_object(Bucket=CODE_BUCKET, Key=CODE_KEY, Body=package.getvalue())
    secrets = boto3.client("secretsmanager", region_name=REGION)
    secret: str = secrets.create_secret(Name="fastuner/database-url", SecretString=database_url)["ARN"]
    values = {"JanitorCodeBucket": CODE_BUCKET, "JanitorCodeKey": CODE_KEY, "DatabaseUrlSecretArn": secret}
    values.update(parameters)
    cf = boto3.client("cloudformation", region_name=REGION)
    cf.create_stack(
        StackName=STACK,
        TemplateBody=TEMPLATE.read_text(),
        Capabilities=["CAPABILITY_IAM"],
        Parameters=[{"ParameterKey": key, "ParameterValue": value} for key, value in values.items()],
    )
    desc = cf.describe_stacks(StackName=STACK)["Stacks"][0]
    assert desc["StackStatus"] == "CREATE_COMPLETE", desc.get("StackStatusReason")
    return secret


@contextmanager
def deployed_stack() -> Iterator[dict[str, str]]:
    """The stack created on moto (inside ``mock_aws``); yields its outputs plus ``DatabaseUrlSecretArn``."""
    with mock_aws():
        secret = create_stack("postgresql+psycopg://u:p@db/fastuner")
        desc = boto3.client("cloudformation", region_name=REGION).describe_stacks(StackName=STACK)["Stacks"][
            0
        ]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in desc["Outputs"]}
        outputs["DatabaseUrlSecretArn"] = secret
        yield outputs
