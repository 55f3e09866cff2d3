"""``infra/cloudformation/fastuner.yaml``: cfn-lint clean, and deployable on moto with the wiring the
control plane relies on (drop notifications, image URIs, janitor Lambda, least-privilege IAM)."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import boto3
import pytest
from moto import mock_aws

REGION = "us-east-1"
ACCOUNT = "123456789012"
ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "infra" / "cloudformation" / "fastuner.yaml"
STACK = "fastuner-test"
CODE_BUCKET = "fastuner-artifacts"
CODE_KEY = "lambda/fastuner-janitor.zip"

EXPECTED_TYPES = {
    "DataBucket": "AWS::S3::Bucket",
    "DataBucketPolicy": "AWS::S3::BucketPolicy",
    "DropQueue": "AWS::SQS::Queue",
    "DropDeadLetterQueue": "AWS::SQS::Queue",
    "DropQueuePolicy": "AWS::SQS::QueuePolicy",
    "TrainingRepository": "AWS::ECR::Repository",
    "InferenceRepository": "AWS::ECR::Repository",
    "SageMakerExecutionRole": "AWS::IAM::Role",
    "ControlPlanePolicy": "AWS::IAM::ManagedPolicy",
    "ControlPlaneRole": "AWS::IAM::Role",
    "JanitorLogGroup": "AWS::Logs::LogGroup",
    "JanitorRole": "AWS::IAM::Role",
    "JanitorFunction": "AWS::Lambda::Function",
    "JanitorInvokeConfig": "AWS::Lambda::EventInvokeConfig",
    "JanitorSchedule": "AWS::Events::Rule",
    "JanitorInvokePermission": "AWS::Lambda::Permission",
}
EXPECTED_OUTPUTS = {
    "BucketName",
    "DropQueueUrl",
    "SageMakerExecutionRoleArn",
    "ControlPlaneRoleArn",
    "ControlPlanePolicyArn",
    "JanitorRoleArn",
    "JanitorFunctionArn",
    "TrainingRepositoryUri",
    "InferenceRepositoryUri",
    "TrainingImageUri",
    "InferenceImageUri",
}

# Every SageMaker action the backends call (api/backends/sagemaker.py, sagemaker_endpoints.py).
CONTROL_PLANE_SAGEMAKER = {
    "sagemaker:CreateTrainingJob",
    "sagemaker:DescribeTrainingJob",
    "sagemaker:StopTrainingJob",
    "sagemaker:CreateModel",
    "sagemaker:DescribeModel",
    "sagemaker:DeleteModel",
    "sagemaker:CreateEndpointConfig",
    "sagemaker:DescribeEndpointConfig",
    "sagemaker:DeleteEndpointConfig",
    "sagemaker:CreateEndpoint",
    "sagemaker:DescribeEndpoint",
    "sagemaker:DeleteEndpoint",
    "sagemaker:InvokeEndpoint",
    "sagemaker:AddTags",
    "sagemaker:ListTags",
    "sagemaker:ListEndpoints",
}
# What one janitor pass calls: list_managed, describe_endpoint, delete_endpoint.
JANITOR_SAGEMAKER = {
    "sagemaker:ListEndpoints",
    "sagemaker:ListTags",
    "sagemaker:DescribeEndpoint",
    "sagemaker:DeleteEndpoint",
    "sagemaker:DeleteEndpointConfig",
    "sagemaker:DeleteModel",
}


# -- the template as data ---------------------------------------------------------------------
def load_template() -> dict[str, Any]:
    """The template parsed with CloudFormation's short-form tags (``!Ref``, ``!Sub`` …)."""
    yaml = pytest.importorskip("yaml")

    class Loader(yaml.SafeLoader):
        pass

    def construct(loader: Any, suffix: str, node: Any) -> dict[str, Any]:
        name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if suffix == "GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {name: value}

    Loader.add_multi_constructor("!", construct)
    data: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=Loader)
    return data


def statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    found = policy["Statement"]
    return found if isinstance(found, list) else [found]


def actions(policy: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for statement in statements(policy):
        if statement.get("Effect") != "Allow":
            continue
        value = statement["Action"]
        out.update([value] if isinstance(value, str) else value)
    return out


# -- lint -------------------------------------------------------------------------------------
def test_cfn_lint_is_clean() -> None:
    pytest.importorskip("cfnlint", reason="cfn-lint is not installed")
    from cfnlint.api import lint_all

    matches = lint_all(TEMPLATE.read_text())
    # Errors and warnings (what the `cfn-lint` command reports), plus the informational check that
    # stateful resources say what happens to them on delete.
    assert [str(m) for m in matches if m.rule.id[0] in "EW" or m.rule.id == "I3011"] == []


def test_template_declares_the_expected_resources_and_outputs() -> None:
    template = load_template()
    types = {name: res["Type"] for name, res in template["Resources"].items()}
    assert {name: types.get(name) for name in EXPECTED_TYPES} == EXPECTED_TYPES
    assert set(template["Outputs"]) >= EXPECTED_OUTPUTS
    fn = template["Resources"]["JanitorFunction"]["Properties"]
    assert fn["Runtime"] == "python3.12"
    assert fn["Handler"] == "api.lambda_janitor.handler"
    assert template["Parameters"]["JanitorScheduleExpression"]["Default"] == "rate(5 minutes)"
    # Data outlives the stack.
    assert template["Resources"]["DataBucket"]["DeletionPolicy"] == "Retain"


def test_the_handler_named_by_the_template_exists() -> None:
    from api import lambda_janitor

    assert callable(lambda_janitor.handler)


def test_no_policy_allows_wildcard_actions() -> None:
    template = load_template()
    for name, res in template["Resources"].items():
        props = res.get("Properties", {})
        docs = [p["PolicyDocument"] for p in props.get("Policies", [])]
        if "PolicyDocument" in props:
            docs.append(props["PolicyDocument"])
        for doc in docs:
            for statement in statements(doc):
                if statement.get("Effect") != "Allow":
                    continue
                for action in (
                    [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
                ):
                    assert not action.endswith(":*") and action != "*", f"{name} allows {action}"


# -- deploy on moto ---------------------------------------------------------------------------
# (moto's ValidateTemplate is cfn-lint itself, covered above; CreateStack builds what moto supports:
# bucket, queues, ECR, IAM, log group, Lambda, EventBridge rule and permission.)
@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, str]]:
    """The stack created on moto once for the module (the tests only read it); yields its outputs."""
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


def test_stack_outputs(stack: dict[str, str]) -> None:
    assert set(stack) >= EXPECTED_OUTPUTS
    assert stack["BucketName"] == f"fastuner-{ACCOUNT}-{REGION}"
    assert stack["TrainingRepositoryUri"] == f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/fastuner-training"
    assert stack["InferenceImageUri"] == f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/fastuner-inference:latest"
    repos = boto3.client("ecr", region_name=REGION).describe_repositories()["repositories"]
    assert {r["repositoryName"] for r in repos} == {"fastuner-training", "fastuner-inference"}
    boto3.client("s3", region_name=REGION).head_bucket(Bucket=stack["BucketName"])
    boto3.client("sqs", region_name=REGION).get_queue_attributes(QueueUrl=stack["DropQueueUrl"])


def test_janitor_function_and_schedule(stack: dict[str, str]) -> None:
    lam = boto3.client("lambda", region_name=REGION)
    config = lam.get_function_configuration(FunctionName=stack["JanitorFunctionArn"])
    assert config["Runtime"] == "python3.12"
    assert config["Handler"] == "api.lambda_janitor.handler"
    assert config["Role"] == stack["JanitorRoleArn"]
    env = config["Environment"]["Variables"]
    assert env["FASTUNER_BACKEND"] == "sagemaker" and env["FASTUNER_STORE"] == "s3"
    assert env["FASTUNER_S3_BUCKET"] == stack["BucketName"]
    assert env["FASTUNER_SAGEMAKER_ROLE_ARN"] == stack["SageMakerExecutionRoleArn"]
    assert env["FASTUNER_INFERENCE_IMAGE_URI"] == stack["InferenceImageUri"]
    assert env["FASTUNER_TRAINING_IMAGE_URI"] == stack["TrainingImageUri"]
    assert env["FASTUNER_DATABASE_URL_SECRET_ARN"] == stack["DatabaseUrlSecretArn"]
    assert "FASTUNER_DATABASE_URL" not in env  # the URL is a secret: read at run time

    # The environment makes valid Settings for the handler.
    from api.settings import Settings

    fields = {
        k.removeprefix("FASTUNER_").lower(): v
        for k, v in env.items()
        if k != "FASTUNER_DATABASE_URL_SECRET_ARN"
    }
    settings = Settings(_env_file=None, **fields)  # type: ignore[call-arg]
    assert settings.backend == "sagemaker" and settings.s3_bucket == stack["BucketName"]

    events = boto3.client("events", region_name=REGION)
    rules = events.list_rules()["Rules"]
    assert [r["ScheduleExpression"] for r in rules] == ["rate(5 minutes)"]
    targets = events.list_targets_by_rule(Rule=rules[0]["Name"])["Targets"]
    assert [t["Arn"] for t in targets] == [stack["JanitorFunctionArn"]]
    assert json.loads(targets[0]["Input"]) == {"dry_run": False}


# -- bucket and IAM, from the template itself (moto's CloudFormation skips these properties) ---
def props(template: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = template["Resources"][name]["Properties"]
    return found


def test_bucket_settings() -> None:
    bucket = props(load_template(), "DataBucket")
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    sse = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    rules = {r["Id"]: r for r in bucket["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-checkpoints"]["ExpirationInDays"] == {"Ref": "CheckpointRetentionDays"}
    assert rules["expire-old-versions"]["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": {"Ref": "NoncurrentVersionRetentionDays"}
    }
    template = load_template()
    assert template["Parameters"]["CheckpointRetentionDays"]["Default"] == 30


def rendered_notification(key_prefix: str, queue_arn: str) -> dict[str, Any]:
    """The bucket's NotificationConfiguration with its two intrinsics resolved."""
    (config,) = props(load_template(), "DataBucket")["NotificationConfiguration"]["QueueConfigurations"]
    assert config["Queue"] == {"Fn::GetAtt": ["DropQueue", "Arn"]}
    rules = []
    for rule in config["Filter"]["S3Key"]["Rules"]:
        value = rule["Value"]
        if isinstance(value, dict):
            value = value["Fn::Sub"].replace("${KeyPrefix}", key_prefix)
        rules.append({"Name": rule["Name"], "Value": value})
    return {
        "QueueConfigurations": [
            {"QueueArn": queue_arn, "Events": [config["Event"]], "Filter": {"Key": {"FilterRules": rules}}}
        ]
    }


@pytest.mark.parametrize("key_prefix", ["", "prod/"])
def test_drops_and_only_drops_notify_the_queue(key_prefix: str) -> None:
    """The template's notification filter, applied to a bucket: drop/*.jsonl reaches the queue."""
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        s3.create_bucket(Bucket="data")
        queue = sqs.create_queue(QueueName="drops")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        s3.put_bucket_notification_configuration(
            Bucket="data", NotificationConfiguration=rendered_notification(key_prefix, arn)
        )
        p = key_prefix
        s3.put_object(Bucket="data", Key=f"{p}drop/acme/train.jsonl", Body=b'{"input": "a", "target": "b"}\n')
        s3.put_object(Bucket="data", Key=f"{p}drop/acme/train.fastuner.json", Body=b"{}")  # sidecar
        s3.put_object(Bucket="data", Key=f"{p}acme/datasets/ds_1/train.jsonl", Body=b"{}")  # not a drop
        keys: list[str] = []
        while True:
            messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            if not messages.get("Messages"):
                break
            for message in messages["Messages"]:
                records = json.loads(message["Body"]).get("Records", [])  # none in S3's test event
                keys += [unquote_plus(r["s3"]["object"]["key"]) for r in records]  # S3 URL-encodes keys
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    assert keys == [f"{p}drop/acme/train.jsonl"]


def test_queue_policy_admits_only_this_bucket() -> None:
    template = load_template()
    (statement,) = props(template, "DropQueuePolicy")["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert "aws:SourceArn" in statement["Condition"]["ArnEquals"]
    assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    # The bucket is created after the policy (S3 checks the destination).
    assert template["Resources"]["DataBucket"]["DependsOn"] == "DropQueuePolicy"
    assert props(template, "DropQueue")["RedrivePolicy"]["maxReceiveCount"] == 5


def role_documents(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """The inline policies of ``role`` plus the template's managed policies attached to it."""
    role_props = props(template, role)
    docs = [p["PolicyDocument"] for p in role_props.get("Policies", [])]
    attached = role_props.get("ManagedPolicyArns", [])
    for ref in attached if isinstance(attached, list) else []:
        if isinstance(ref, dict) and "Ref" in ref:
            docs.append(props(template, ref["Ref"])["PolicyDocument"])
    return docs


def test_control_plane_may_do_what_the_backends_do() -> None:
    template = load_template()
    docs = role_documents(template, "ControlPlaneRole")
    allowed = set().union(*(actions(d) for d in docs))
    assert allowed >= CONTROL_PLANE_SAGEMAKER
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage", "logs:FilterLogEvents", "s3:PutObject"} <= allowed
    (passrole,) = [s for d in docs for s in statements(d) if s.get("Action") == "iam:PassRole"]
    assert passrole["Resource"] == {"Fn::GetAtt": ["SageMakerExecutionRole", "Arn"]}
    assert passrole["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}


def test_janitor_role_is_least_privilege() -> None:
    template = load_template()
    docs = role_documents(template, "JanitorRole")
    allowed = set().union(*(actions(d) for d in docs))
    sagemaker = {a for a in allowed if a.startswith("sagemaker:")}
    assert sagemaker >= JANITOR_SAGEMAKER
    assert not {
        a for a in sagemaker if a.startswith(("sagemaker:Create", "sagemaker:Invoke", "sagemaker:Stop"))
    }
    assert not {a for a in allowed if a.startswith(("s3:", "sqs:", "iam:"))}
    (secret,) = [s for d in docs for s in statements(d) if s.get("Action") == "secretsmanager:GetSecretValue"]
    assert secret["Resource"] == {"Ref": "DatabaseUrlSecretArn"}
    # Deletes are scoped to the control plane's own names.
    for statement in (s for d in docs for s in statements(d)):
        if any(str(a).startswith("sagemaker:Delete") for a in statement["Action"]):
            assert all("${ResourceNamePrefix}*" in r["Fn::Sub"] for r in statement["Resource"])


def test_execution_role_can_read_inputs_write_jobs_and_pull_images() -> None:
    template = load_template()
    docs = role_documents(template, "SageMakerExecutionRole")
    allowed = set().union(*(actions(d) for d in docs))
    assert {"s3:GetObject", "s3:PutObject", "ecr:BatchGetImage", "logs:PutLogEvents"} <= allowed
    assert not {a for a in allowed if a.startswith(("sagemaker:", "iam:", "sqs:"))}
    writes = [s for d in docs for s in statements(d) if "s3:PutObject" in s["Action"]]
    assert next(r["Fn::Sub"] for s in writes for r in s["Resource"]) == "${DataBucket.Arn}/*/jobs/*"
