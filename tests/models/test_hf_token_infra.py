"""The stack grants the SageMaker execution role (and nothing else) read access to the Hugging Face
token's secret, only when one is given."""

from __future__ import annotations

import boto3
from moto import mock_aws

from tests.infra.support import REGION, STACK, create_stack
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
    granting = [
        name for name, res in template["Resources"].items() if "HuggingFaceTokenSecretArn" in str(res)
    ]
    others = [name for name in granting if name != "HuggingFaceTokenPolicy"]
    assert others == []


def _deploy(token_arn: str | None) -> list[str]:
    create_stack("postgresql://x", **({"HuggingFaceTokenSecretArn": token_arn} if token_arn else {}))
    cf = boto3.client("cloudformation", region_name=REGION)
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
