"""``infra/cloudformation/fastuner.yaml``: cfn-lint clean, and deployable on moto with the wiring the
control plane relies on (drop notifications, image URIs, janitor Lambda, least-privilege IAM)."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote_plus

import boto3
import pytest
from moto import mock_aws

from tests.infra.support import ACCOUNT, REGION, TEMPLATE

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


# -- deployed on moto (the `stack` fixture, conftest.py) ------------------------------------
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
        s3.put_object(Bucket="data", Key=f"{p}drop/acme/train.status.json", Body=b"{}")  # worker's answer
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


# -- a small IAM evaluator: identity policies with their intrinsics resolved ---------------------
BUCKET_ARN = "arn:aws:s3:::fastuner-data"
QUEUE_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT}:drops"
DLQ_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT}:drops-dlq"


def stack_names(key_prefix: str) -> dict[str, str]:
    """What ``Ref``/``Fn::GetAtt``/``${...}`` stand for in the policies, for one ``KeyPrefix``."""
    return {
        "AWS::Partition": "aws",
        "AWS::Region": REGION,
        "AWS::AccountId": ACCOUNT,
        "KeyPrefix": key_prefix,
        "CheckpointsPrefix": "checkpoints/",
        "ResourceNamePrefix": "fastuner-",
        "DatabaseUrlSecretArn": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:fastuner/database-url-AbCdEf",
        "DataBucket.Arn": BUCKET_ARN,
        "DropQueue.Arn": QUEUE_ARN,
        "DropDeadLetterQueue.Arn": DLQ_ARN,
        "SageMakerExecutionRole.Arn": f"arn:aws:iam::{ACCOUNT}:role/fastuner-sagemaker",
        "TrainingRepository.Arn": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/fastuner-training",
        "InferenceRepository.Arn": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/fastuner-inference",
        "JanitorLogGroup.Arn": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/fastuner/test/janitor:*",
    }


def resolve(node: Any, names: dict[str, str]) -> Any:
    """``node`` with ``Ref``, ``Fn::GetAtt`` and ``Fn::Sub`` replaced by their values in ``names``."""
    if isinstance(node, list):
        return [resolve(item, names) for item in node]
    if not isinstance(node, dict):
        return node
    if set(node) == {"Ref"}:
        return names[node["Ref"]]
    if set(node) == {"Fn::GetAtt"}:
        return names[".".join(node["Fn::GetAtt"])]
    if set(node) == {"Fn::Sub"}:
        arg = node["Fn::Sub"]
        text, local = (arg, {}) if isinstance(arg, str) else (arg[0], resolve(arg[1], names))
        return re.sub(r"\$\{([^}]+)\}", lambda m: {**names, **local}[m.group(1)], text)
    return {key: resolve(value, names) for key, value in node.items()}


def wildcard(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """IAM matching: ``*`` is any run of characters (``/`` included), ``?`` any one."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, flags=re.S | (re.I if ignore_case else 0)) is not None


def listify(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def conditions_hold(conditions: dict[str, dict[str, Any]], context: dict[str, str]) -> bool:
    for operator, tests in conditions.items():
        for key, expected in tests.items():
            if key not in context:
                return False
            actual = context[key]
            if operator in ("StringEquals", "ArnEquals", "Bool"):
                ok = any(
                    actual == str(e).lower() if operator == "Bool" else actual == e for e in listify(expected)
                )
            elif operator in ("StringLike", "ArnLike"):
                ok = any(wildcard(e, actual) for e in listify(expected))
            else:
                raise AssertionError(f"condition operator {operator} not handled by this evaluator")
            if not ok:
                return False
    return True


def allows(
    docs: list[dict[str, Any]], action: str, resource: str, context: dict[str, str] | None = None
) -> bool:
    """Whether resolved identity policies ``docs`` allow ``action`` on ``resource`` (an explicit deny wins)."""
    verdicts = set()
    for statement in (s for doc in docs for s in statements(doc)):
        assert not {"NotAction", "NotResource", "NotPrincipal"} & set(statement), statement
        if (
            any(wildcard(a, action, ignore_case=True) for a in listify(statement["Action"]))
            and any(wildcard(r, resource) for r in listify(statement["Resource"]))
            and conditions_hold(statement.get("Condition", {}), context or {})
        ):
            verdicts.add(statement["Effect"])
    return "Allow" in verdicts and "Deny" not in verdicts


def test_the_evaluator() -> None:
    doc = {
        "Statement": [
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/drop/*"},
            {
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": "arn:aws:s3:::b",
                "Condition": {"StringLike": {"s3:prefix": "drop/*"}},
            },
            {"Effect": "Deny", "Action": "s3:*", "Resource": "arn:aws:s3:::b/drop/secret*"},
        ]
    }
    assert allows([doc], "s3:getobject", "arn:aws:s3:::b/drop/acme/x.jsonl")
    assert not allows([doc], "s3:GetObject", "arn:aws:s3:::b/acme/drop/x.jsonl")
    assert not allows([doc], "s3:GetObject", "arn:aws:s3:::b/drop/secret.jsonl")
    assert not allows([doc], "s3:PutObject", "arn:aws:s3:::b/drop/acme/x.jsonl")
    assert allows([doc], "s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "drop/acme/"})
    assert not allows([doc], "s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "acme/"})
    assert not allows([doc], "s3:ListBucket", "arn:aws:s3:::b")
    assert resolve({"Fn::Sub": ["${A}/${X}", {"X": {"Ref": "B"}}]}, {"A": "a", "B": "b"}) == "a/b"


@pytest.mark.parametrize("key_prefix", ["", "prod/"])
def test_control_plane_can_run_the_drop_worker_and_no_more(key_prefix: str) -> None:
    """The S3 drop-and-train worker runs as the control plane: it long-polls the drop queue, reads
    ``drop/{tenant}/*.jsonl`` and ``*.fastuner.json``, writes ``*.status.json`` beside them and
    creates datasets and jobs under ``{tenant}/``."""
    template = load_template()
    docs = [resolve(d, stack_names(key_prefix)) for d in role_documents(template, "ControlPlaneRole")]
    p = key_prefix

    def obj(key: str) -> str:
        return f"{BUCKET_ARN}/{p}{key}"

    for action, key in [
        ("s3:GetObject", "drop/acme/train.jsonl"),
        ("s3:GetObjectVersion", "drop/acme/train.jsonl"),  # the version the event names
        ("s3:GetObject", "drop/acme/sub/dir/train.fastuner.json"),
        ("s3:PutObject", "drop/acme/train.status.json"),
        ("s3:PutObject", "acme/datasets/ds_1/train.jsonl"),
        ("s3:PutObject", "acme/datasets/ds_1/manifest.json"),
        ("s3:GetObject", "acme/adapters/adp_1/adapter_config.json"),
        ("s3:DeleteObject", "acme/jobs/ft_1/checkpoints/step-10/model.safetensors"),
    ]:
        assert allows(docs, action, obj(key)), (action, key)
    assert allows(docs, "s3:ListBucket", BUCKET_ARN, {"s3:prefix": f"{p}drop/acme/"})
    assert not allows(docs, "s3:GetObjectVersion", obj("acme/datasets/ds_1/train.jsonl"))
    assert not allows(docs, "s3:GetObject", "arn:aws:s3:::another-bucket/drop/acme/train.jsonl")
    for action in (
        "s3:PutBucketPolicy",
        "s3:PutBucketNotification",
        "s3:PutLifecycleConfiguration",
        "s3:DeleteBucket",
    ):
        assert not allows(docs, action, BUCKET_ARN), action

    for action in (
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
    ):
        assert allows(docs, action, QUEUE_ARN), action
    for action in ("sqs:SendMessage", "sqs:PurgeQueue", "sqs:DeleteQueue", "sqs:SetQueueAttributes"):
        assert not allows(docs, action, QUEUE_ARN), action
    assert not allows(docs, "sqs:ReceiveMessage", DLQ_ARN)
    assert not allows(docs, "sqs:ReceiveMessage", f"arn:aws:sqs:{REGION}:{ACCOUNT}:someone-elses-queue")


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
