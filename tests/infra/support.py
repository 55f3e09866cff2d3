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
@contextmanager
def deployed_stack() -> Iterator[dict[str, str]]:
    """The stack created on moto (inside ``mock_aws``); yields its outputs plus ``DatabaseUrlSecretArn``."""
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=CODE_BUCKET)
        package = io.BytesIO()
        with zipfile.ZipFile(package, "w") as zf:
            zf.writestr("api/lambda_janitor.py", "def handler(event, context):\n    return {}\n")
        s3.put_object(Bucket=CODE_BUCKET, Key=CODE_KEY, Body=package.getvalue())
        secret = boto3.client("secretsmanager", region_name=REGION).create_secret(
            Name="fastuner/database-url", SecretString="postgresql+psycopg://u:p@db/fastuner"
        )["ARN"]
        cf = boto3.client("cloudformation", region_name=REGION)
        cf.create_stack(
            StackName=STACK,
            TemplateBody=TEMPLATE.read_text(),
            Capabilities=["CAPABILITY_IAM"],
            Parameters=[
                {"ParameterKey": "JanitorCodeBucket", "ParameterValue": CODE_BUCKET},
                {"ParameterKey": "JanitorCodeKey", "ParameterValue": CODE_KEY},
                {"ParameterKey": "DatabaseUrlSecretArn", "ParameterValue": secret},
            ],
        )
        desc = cf.describe_stacks(StackName=STACK)["Stacks"][0]
        assert desc["StackStatus"] == "CREATE_COMPLETE", desc.get("StackStatusReason")
        outputs = {o["OutputKey"]: o["OutputValue"] for o in desc["Outputs"]}
        outputs["DatabaseUrlSecretArn"] = secret
        yield outputs
