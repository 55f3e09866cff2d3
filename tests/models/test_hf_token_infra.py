"""The stack grants the SageMaker execution role (and nothing else) read access to the Hugging Face
token's secret, only when one is given."""

from __future__ import annotations

import io
import zipfile

import boto3
from moto import mock_aws

from tests.infra.support import CODE_BUCKET, CODE_KEY, REGION, STACK, TEMPLATE
from tests.infra.test_cloudformation import load_template


def test_template_grants_get_secret_value_on_the_token_secret_to_the_execution_role() -> None:
    template = load_template()
    param = template["Parameters"]["HuggingFaceTokenSecretArn"]
    assert param["Default"] == "" and param["AllowedPattern"].startswith("^$|^arn:aws")
    policy = template["Resources"]["HuggingFaceTokenPolicy"]
    assert policy["Type"] == "AWS::IAM::Policy" and policy["Condition"] == "HasHuggingFaceToken"
    assert policy["Properties"]["Roles"] == [{"Ref": "SageMakerExecutionRole"}]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement == {
        "Sid": "ReadHuggingFaceToken",
        "Effect": "Allow",
        "Action": "secretsmanager:GetSecretValue",
        "Resource": {"Ref": "HuggingFaceTokenSecretArn"},
    }
    # Nobody else gets it: the control plane only passes the ARN on.
    others = [name for name, res in template["Resources"].items()
              if "HuggingFaceTokenSecretArn" in str(res) and name != "HuggingFaceTokenPolicy"]  # fmt: skip
    assert others == []


def _deploy(token_arn: str | None) -> list[str]:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=CODE_BUCKET)
    package = io.BytesIO()
    with zipfile.ZipFile(package, "w") as zf:
        zf.writestr("api/lambda_janitor.py", "def handler(event, context):\n    return {}\n")
    s3.put_object(Bucket=CODE_BUCKET, Key=CODE_KEY, Body=package.getvalue())
    sm = boto3.client("secretsmanager", region_name=REGION)
    db = sm.create_secret(Name="fastuner/database-url", SecretString="postgresql://x")["ARN"]
    params = [
        {"ParameterKey": "JanitorCodeBucket", "ParameterValue": CODE_BUCKET},
        {"ParameterKey": "JanitorCodeKey", "ParameterValue": CODE_KEY},
        {"ParameterKey": "DatabaseUrlSecretArn", "ParameterValue": db},
    ]
    if token_arn:
        params.append({"ParameterKey": "HuggingFaceTokenSecretArn", "ParameterValue": token_arn})
    cf = boto3.client("cloudformation", region_name=REGION)
    cf.create_stack(StackName=STACK, TemplateBody=TEMPLATE.read_text(), Capabilities=["CAPABILITY_IAM"],
                    Parameters=params)  # fmt: skip
    desc = cf.describe_stacks(StackName=STACK)["Stacks"][0]
    assert desc["StackStatus"] == "CREATE_COMPLETE", desc.get("StackStatusReason")
    resources = cf.list_stack_resources(StackName=STACK)["StackResourceSummaries"]
    return sorted(r["LogicalResourceId"] for r in resources)


def test_the_policy_exists_only_with_a_token_secret() -> None:
    with mock_aws():
        assert "HuggingFaceTokenPolicy" not in _deploy(None)
    with mock_aws():
        arn = boto3.client("secretsmanager", region_name=REGION).create_secret(
            Name="fastuner/hf-token", SecretString="hf_x"
        )["ARN"]
        assert "HuggingFaceTokenPolicy" in _deploy(arn)
