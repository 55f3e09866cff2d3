"""The ``sagemaker`` endpoint backend against moto (SageMaker, SageMaker Runtime, S3)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from moto.backends import get_backend

from api.backends.endpoints import MANAGED_TAG, EndpointBackend, EndpointSpec, InvocationError
from api.backends.sagemaker import RETRY_CONFIG
from api.backends.sagemaker_endpoints import (
    ENV_VALUE_MAX,
    RUNTIME_CONFIG,
    STARTUP_HEALTH_CHECK_TIMEOUT_S,
    SageMakerEndpoints,
    preload_value,
    status_from_description,
)
from api.domain.enums import DeploymentStatus
from api.domain.errors import BackendError
from api.services.deployments import endpoint_name_for
from api.storage.s3 import S3Store
from tests.support.aws import ANSWERED, answer, aws_error, aws_response, hook, inject
from tests.support.calls import Calls
from tests.support.moto import ACCOUNT, REGION, aws_clients, mocked_bucket, moto_sagemaker

BUCKET = "fastuner-test"
IMAGE_URI = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/fastuner-inference:test"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/fastuner-sagemaker"
TENANT = "acme"
DEPLOYMENT = "dep_abc123def456"
NAME = endpoint_name_for(DEPLOYMENT)
INSTANCE = "ml.g4dn.xlarge"  # moto's endpoint configs reject newer instance types
TAGS = {MANAGED_TAG: "true", "fastuner:tenant": TENANT, "fastuner:deployment": DEPLOYMENT}
CREATE_OPS = ("CreateModel", "CreateEndpointConfig", "CreateEndpoint")
NO_RETRY = Config(retries={"mode": "standard", "max_attempts": 1})


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clients() -> dict[str, Any]:
    return aws_clients(s3=RETRY_CONFIG, sagemaker=RETRY_CONFIG, sagemaker_runtime=RUNTIME_CONFIG)


@pytest.fixture
def store(clients: dict[str, Any]) -> Iterator[S3Store]:
    with mocked_bucket(clients["s3"], BUCKET) as store:
        yield store


@pytest.fixture
def backend(store: S3Store, clients: dict[str, Any]) -> SageMakerEndpoints:
    return SageMakerEndpoints(
        store,
        image_uri=IMAGE_URI,
        role_arn=ROLE_ARN,
        region=REGION,
        sagemaker_client=clients["sagemaker"],
        runtime_client=clients["sagemaker_runtime"],
    )


def make_spec(**overrides: Any) -> EndpointSpec:
    fields: dict[str, Any] = {
        "deployment_id": DEPLOYMENT,
        "tenant_id": TENANT,
        "endpoint_name": NAME,
        "base_model": "HuggingFaceTB/SmolLM2-135M",
        "adapter_prefix": f"{TENANT}/adapters",
        "adapter_ids": ["adp_one000000001", "adp_two000000002"],
        "instance_type": INSTANCE,
        "instance_count": 1,
    }
    fields.update(overrides)
    fields.setdefault("tags", {**TAGS, "fastuner:deployment": fields["deployment_id"]})
    return EndpointSpec(**fields)


@pytest.fixture
def calls(clients: dict[str, Any]) -> Calls:
    return Calls.on(clients["sagemaker"])


def created(calls: Calls) -> dict[str, int]:
    return {op: len(calls.get(op, [])) for op in CREATE_OPS}


# -- create -----------------------------------------------------------------------------------
def test_is_an_endpoint_backend(backend: SageMakerEndpoints) -> None:
    assert isinstance(backend, EndpointBackend)
    assert backend.name == "sagemaker"


def test_create_sends_the_exact_requests(backend: SageMakerEndpoints, calls: Calls) -> None:
    state = backend.create_endpoint(make_spec())

    tags = [{"Key": k, "Value": v} for k, v in TAGS.items()]
    assert calls["CreateModel"] == [
        {
            "ModelName": NAME,
            "PrimaryContainer": {
                "Image": IMAGE_URI,
                "Environment": {
                    "FASTUNER_BASE_MODEL": "HuggingFaceTB/SmolLM2-135M",
                    "FASTUNER_ADAPTER_PREFIX": f"s3://{BUCKET}/{TENANT}/adapters",
                    "FASTUNER_PRELOAD_ADAPTERS": "adp_one000000001,adp_two000000002",
                    "FASTUNER_MAX_ADAPTERS": "8",
                },
            },
            "ExecutionRoleArn": ROLE_ARN,
            "Tags": tags,
        }
    ]
    assert calls["CreateEndpointConfig"] == [
        {
            "EndpointConfigName": NAME,
            "ProductionVariants": [
                {
                    "VariantName": "AllTraffic",
                    "ModelName": NAME,
                    "InstanceType": INSTANCE,
                    "InitialInstanceCount": 1,
                    "InitialVariantWeight": 1.0,
                    "ContainerStartupHealthCheckTimeoutInSeconds": STARTUP_HEALTH_CHECK_TIMEOUT_S,
                }
            ],
            "Tags": tags,
        }
    ]
    assert calls["CreateEndpoint"] == [{"EndpointName": NAME, "EndpointConfigName": NAME, "Tags": tags}]
    assert state == {
        "model_name": NAME,
        "endpoint_config_name": NAME,
        "endpoint_arn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/{NAME}",
    }
    assert json.loads(json.dumps(state)) == state  # stored as JSON by the service


def test_create_guarantees_the_ownership_tags(backend: SageMakerEndpoints, calls: Calls) -> None:
    backend.create_endpoint(make_spec(tags={"team": "x"}))
    for op in CREATE_OPS:
        tags = {t["Key"]: t["Value"] for t in calls[op][0]["Tags"]}
        assert tags == {"team": "x", **TAGS}


def test_many_adapters_raise_the_cache_size_and_fit_the_environment_limit(
    backend: SageMakerEndpoints,
) -> None:
    ids = [f"adp_{i:012d}" for i in range(64)]
    env = backend.build_requests(make_spec(adapter_ids=ids))["model"]["PrimaryContainer"]["Environment"]
    assert env["FASTUNER_MAX_ADAPTERS"] == "64"
    preload = env["FASTUNER_PRELOAD_ADAPTERS"]
    assert len(preload) <= ENV_VALUE_MAX
    assert preload.split(",") == ids[: len(preload.split(","))]
    assert preload_value(["adp_a", "adp_b"]) == "adp_a,adp_b"


@pytest.mark.parametrize("name", ["has_underscore", "-leading", "x" * 64, ""])
def test_invalid_names_are_refused_before_any_call(
    backend: SageMakerEndpoints, calls: Calls, name: str
) -> None:
    with pytest.raises(ValueError, match="endpoint name"):
        backend.create_endpoint(make_spec(endpoint_name=name))
    assert calls == {}


def test_create_twice_creates_nothing_new(backend: SageMakerEndpoints, calls: Calls) -> None:
    first = backend.create_endpoint(make_spec())
    second = backend.create_endpoint(make_spec())
    assert second == first
    assert created(calls) == dict.fromkeys(CREATE_OPS, 1)
    assert list(moto_sagemaker().endpoints) == [NAME]


def test_a_half_created_endpoint_is_completed(
    backend: SageMakerEndpoints,
    clients: dict[str, Any],
    calls: Calls,
) -> None:
    """The model was created, then the config call failed: a retry creates only what is missing."""

    def fail_config(**_: Any) -> None:
        raise RuntimeError("crash after the model")

    hook(clients["sagemaker"], "before-call.sagemaker.CreateEndpointConfig", fail_config, first=True)
    with pytest.raises(RuntimeError):
        backend.create_endpoint(make_spec())
    assert NAME in moto_sagemaker()._models
    assert NAME not in moto_sagemaker().endpoint_configs
    clients["sagemaker"].meta.events.unregister("before-call.sagemaker.CreateEndpointConfig", fail_config)

    calls.clear()
    state = backend.create_endpoint(make_spec())
    assert created(calls) == {"CreateModel": 0, "CreateEndpointConfig": 1, "CreateEndpoint": 1}
    assert state["endpoint_arn"].endswith(f"endpoint/{NAME}")
    assert backend.describe_endpoint(NAME, state).status is DeploymentStatus.IN_SERVICE


def test_a_lost_create_race_reuses_the_winner(
    backend: SageMakerEndpoints, clients: dict[str, Any], calls: Calls
) -> None:
    """Another caller created the endpoint between our describe and our create: SageMaker says
    it already exists, and the existing one is adopted."""
    backend.create_endpoint(make_spec())
    arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/{NAME}"
    missing = aws_error(400, "ValidationException", f'Could not find endpoint "{arn}".')
    describes = inject(clients["sagemaker"], "DescribeEndpoint", [missing])  # then moto answers
    answer(
        clients["sagemaker"],
        "CreateEndpoint",
        aws_error(400, "ValidationException", f'Cannot create already existing endpoint "{arn}".'),
    )
    calls.clear()
    state = backend.create_endpoint(make_spec())
    assert state["endpoint_arn"] == arn
    assert describes["attempts"] == 2
    assert created(calls) == {"CreateModel": 0, "CreateEndpointConfig": 0, "CreateEndpoint": 1}


def test_aws_errors_are_backend_errors_with_details(backend: SageMakerEndpoints) -> None:
    throttled = aws_error(400, "ThrottlingException", "Rate exceeded")
    backend.sagemaker = boto3.client(  # no retries: keep the test fast
        "sagemaker", region_name=REGION, config=RETRY_CONFIG.merge(NO_RETRY)
    )
    answer(backend.sagemaker, "DescribeModel", throttled)
    with pytest.raises(BackendError) as info:
        backend.create_endpoint(make_spec())
    assert info.value.details == {"aws_error": "ThrottlingException", "transient": True}


# -- status -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("aws", "ours"),
    [
        ("Creating", DeploymentStatus.CREATING),
        ("Updating", DeploymentStatus.CREATING),
        ("SystemUpdating", DeploymentStatus.CREATING),
        ("RollingBack", DeploymentStatus.CREATING),
        ("InService", DeploymentStatus.IN_SERVICE),
        ("Deleting", DeploymentStatus.DELETING),
        ("OutOfService", DeploymentStatus.FAILED),
        ("Failed", DeploymentStatus.FAILED),
    ],
)
def test_status_mapping(backend: SageMakerEndpoints, aws: str, ours: DeploymentStatus) -> None:
    state = backend.create_endpoint(make_spec())
    moto_sagemaker().endpoints[NAME].endpoint_status = aws
    assert backend.describe_endpoint(NAME, state).status is ours


def test_failed_endpoint_reports_the_reason(backend: SageMakerEndpoints) -> None:
    state = backend.create_endpoint(make_spec())
    endpoint = moto_sagemaker().endpoints[NAME]
    endpoint.endpoint_status = "Failed"
    endpoint.failure_reason = (
        "The primary container for production variant AllTraffic did not pass the ping health check."
    )
    status = backend.describe_endpoint(NAME, state)
    assert status.status is DeploymentStatus.FAILED
    assert status.failure_reason is not None and "ping health check" in status.failure_reason


def test_status_of_a_missing_endpoint_is_deleted(backend: SageMakerEndpoints) -> None:
    assert backend.describe_endpoint(NAME, {}).status is DeploymentStatus.DELETED


def test_status_mapping_without_moto() -> None:
    out = status_from_description({"EndpointStatus": "OutOfService"})
    assert out.status is DeploymentStatus.FAILED and out.failure_reason
    with pytest.raises(BackendError, match="unknown"):
        status_from_description({"EndpointStatus": "Exploded"})


# -- delete -----------------------------------------------------------------------------------
def test_delete_removes_all_three_and_is_idempotent(backend: SageMakerEndpoints) -> None:
    state = backend.create_endpoint(make_spec())
    sm = moto_sagemaker()
    backend.delete_endpoint(NAME, state)
    assert NAME not in sm.endpoints and NAME not in sm.endpoint_configs and NAME not in sm._models
    backend.delete_endpoint(NAME, state)  # again: nothing left, no error
    backend.delete_endpoint(NAME, {})  # and from the name alone
    assert backend.describe_endpoint(NAME, state).status is DeploymentStatus.DELETED


def test_delete_of_an_orphan_works_from_the_name_and_cleans_remnants(
    backend: SageMakerEndpoints, clients: dict[str, Any]
) -> None:
    """A half-created deployment (model only) and an empty state: delete still cleans it up."""

    def fail_config(**_: Any) -> None:
        raise RuntimeError("crash")

    hook(clients["sagemaker"], "before-call.sagemaker.CreateEndpointConfig", fail_config, first=True)
    with pytest.raises(RuntimeError):
        backend.create_endpoint(make_spec())
    backend.delete_endpoint(NAME, {})
    assert NAME not in moto_sagemaker()._models


def test_concurrent_deletes_both_succeed(backend: SageMakerEndpoints) -> None:
    state = backend.create_endpoint(make_spec())
    errors: list[BaseException] = []

    def run() -> None:
        try:
            backend.delete_endpoint(NAME, state)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert NAME not in moto_sagemaker().endpoints


def test_delete_refused_keeps_config_and_model_and_raises(
    backend: SageMakerEndpoints, clients: dict[str, Any]
) -> None:
    state = backend.create_endpoint(make_spec())

    busy = aws_error(400, "ValidationException", f"Cannot delete endpoint {NAME} in Creating status.")
    answer(clients["sagemaker"], "DeleteEndpoint", busy)
    with pytest.raises(BackendError) as info:
        backend.delete_endpoint(NAME, state)
    assert info.value.details == {"aws_error": "ValidationException", "transient": True}
    sm = moto_sagemaker()
    assert NAME in sm.endpoints and NAME in sm.endpoint_configs and NAME in sm._models


# -- invoke -----------------------------------------------------------------------------------
def queue_result(body: str, content_type: str = "application/json") -> None:
    runtime = get_backend("sagemaker-runtime")[ACCOUNT][REGION]
    runtime.results_queue.append((body, content_type, "AllTraffic", ""))


def test_invoke_round_trip(backend: SageMakerEndpoints, clients: dict[str, Any]) -> None:
    state = backend.create_endpoint(make_spec())
    reply = {
        "outputs": [
            {"generated_text": " there", "prompt_tokens": 4, "completion_tokens": 2, "finish_reason": "stop"}
        ],
        "adapter": "adp_one000000001",
        "latency_ms": 12.5,
    }
    queue_result(json.dumps(reply))
    sent: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        sent.append(dict(params))

    event = "before-parameter-build.sagemaker-runtime.InvokeEndpoint"
    hook(clients["sagemaker_runtime"], event, record, first=True)
    payload = {
        "inputs": "Once upon a time",
        "adapter": "adp_one000000001",
        "parameters": {"max_new_tokens": 8},
    }
    assert backend.invoke(NAME, state, payload) == reply
    assert sent == [
        {
            "EndpointName": NAME,
            "ContentType": "application/json",
            "Accept": "application/json",
            "Body": json.dumps(payload).encode(),
        }
    ]


def test_invoke_rejects_a_non_json_answer(backend: SageMakerEndpoints) -> None:
    queue_result("not json", "text/plain")
    with pytest.raises(BackendError, match="not a JSON object"):
        backend.invoke(NAME, {}, {"inputs": "x"})


def _model_error(
    original_status: int, original_body: str, *, modeled: bool = True
) -> Callable[[Any], AWSResponse]:
    """What SageMaker Runtime answers when the container returned an error status."""
    message = (
        f'Received client error ({original_status}) from primary with message "{original_body}". '
        f"See https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=us-east-1#logEventViewer:group=/aws/sagemaker/Endpoints/{NAME} in account {ACCOUNT} for more information."
    )
    fields: dict[str, Any] = {"Message": message}
    if modeled:
        fields.update(
            OriginalStatusCode=original_status,
            OriginalMessage=original_body,
            LogStreamArn=f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker/Endpoints/{NAME}",
        )

    error_type = "ModelError:http://internal.amazon.com/coral/com.amazon.sagemaker.runtime/"
    body = json.dumps(fields).encode()
    return lambda request: aws_response(request, 424, body, headers={"x-amzn-ErrorType": error_type})


@pytest.mark.parametrize("modeled", [True, False])
def test_invoke_maps_the_servers_error(
    backend: SageMakerEndpoints, clients: dict[str, Any], modeled: bool
) -> None:
    body = json.dumps({"code": "adapter_not_found", "message": "no adapter adp_missing00000"})
    answer(clients["sagemaker_runtime"], "InvokeEndpoint", _model_error(404, body, modeled=modeled))
    with pytest.raises(InvocationError) as info:
        backend.invoke(NAME, {}, {"inputs": "x", "adapter": "adp_missing00000"})
    assert (info.value.status, info.value.code, info.value.message) == (
        404,
        "adapter_not_found",
        "no adapter adp_missing00000",
    )


def test_invoke_maps_a_non_json_server_error(backend: SageMakerEndpoints, clients: dict[str, Any]) -> None:
    answer(clients["sagemaker_runtime"], "InvokeEndpoint", _model_error(500, "boom"))
    with pytest.raises(InvocationError) as info:
        backend.invoke(NAME, {}, {"inputs": "x"})
    assert (info.value.status, info.value.code, info.value.message) == (500, "internal_error", "boom")


@pytest.mark.parametrize(
    ("error_type", "status", "message", "expected"),
    [
        (
            "ValidationError",
            400,
            f"Endpoint {NAME} of account {ACCOUNT} not found.",
            (404, "endpoint_not_found"),
        ),
        ("ValidationError", 400, "Request body too large", (400, "invalid_request")),
        ("ModelNotReadyException", 429, "Model not ready", (503, "model_loading")),
        (
            "ModelError",
            424,
            "Your invocation timed out while waiting for a response from container primary.",
            (504, "invocation_timeout"),
        ),
    ],
)
def test_invoke_maps_runtime_errors(
    backend: SageMakerEndpoints,
    clients: dict[str, Any],
    error_type: str,
    status: int,
    message: str,
    expected: tuple[int, str],
) -> None:
    def respond(request: Any) -> AWSResponse:
        body = json.dumps({"Message": message}).encode()
        return aws_response(request, status, body, headers={"x-amzn-ErrorType": error_type})

    backend.runtime = boto3.client("sagemaker-runtime", region_name=REGION, config=NO_RETRY)
    answer(backend.runtime, "InvokeEndpoint", respond)
    with pytest.raises(InvocationError) as info:
        backend.invoke(NAME, {}, {"inputs": "x"})
    assert (info.value.status, info.value.code) == expected


def test_invoke_aws_failure_is_a_transient_backend_error(
    backend: SageMakerEndpoints, clients: dict[str, Any]
) -> None:
    def respond(request: Any) -> AWSResponse:
        body = b'{"Message": "try later"}'
        return aws_response(request, 503, body, headers={"x-amzn-ErrorType": "ServiceUnavailable"})

    backend.runtime = boto3.client("sagemaker-runtime", region_name=REGION, config=NO_RETRY)
    answer(backend.runtime, "InvokeEndpoint", respond)
    with pytest.raises(BackendError) as info:
        backend.invoke(NAME, {}, {"inputs": "x"})
    assert info.value.details == {"aws_error": "ServiceUnavailable", "transient": True}


# -- list_managed -----------------------------------------------------------------------------
def create_theirs(sm: Any, endpoint_name: str) -> None:
    """An endpoint someone else created in the account, untagged, with its model and config."""
    sm.create_model(ModelName="theirs", PrimaryContainer={"Image": IMAGE_URI}, ExecutionRoleArn=ROLE_ARN)
    variant = {"VariantName": "v", "ModelName": "theirs", "InstanceType": INSTANCE, "InitialInstanceCount": 1}
    sm.create_endpoint_config(EndpointConfigName="theirs", ProductionVariants=[variant])
    sm.create_endpoint(EndpointName=endpoint_name, EndpointConfigName="theirs")


def test_list_managed_skips_untagged_endpoints(backend: SageMakerEndpoints, clients: dict[str, Any]) -> None:
    backend.create_endpoint(make_spec())
    backend.create_endpoint(make_spec(endpoint_name="fastuner-dep-second", deployment_id="dep_second"))
    sm = clients["sagemaker"]
    # Someone else's endpoints: no tags, and one tagged managed=false.
    create_theirs(sm, "theirs-untagged")
    sm.create_endpoint(
        EndpointName="theirs-tagged",
        EndpointConfigName="theirs",
        Tags=[{"Key": MANAGED_TAG, "Value": "false"}, {"Key": "owner", "Value": "them"}],
    )

    managed = {m.name: m for m in backend.list_managed()}
    assert set(managed) == {NAME, "fastuner-dep-second"}
    assert managed[NAME].tags == TAGS
    assert managed["fastuner-dep-second"].tags["fastuner:deployment"] == "dep_second"
    assert managed[NAME].created_at is not None

    moto_sagemaker().endpoints[NAME].endpoint_status = "Deleting"
    assert {m.name for m in backend.list_managed()} == {"fastuner-dep-second"}


def test_list_managed_skips_endpoints_whose_tags_it_may_not_read(
    backend: SageMakerEndpoints, clients: dict[str, Any]
) -> None:
    """IAM may scope ListTags to our own names; someone else's endpoint is then simply not ours."""
    backend.create_endpoint(make_spec())
    sm = clients["sagemaker"]
    create_theirs(sm, "theirs")
    denied = aws_error(400, "AccessDeniedException", "not authorized to perform: sagemaker:ListTags")
    refused: list[bytes] = []

    def list_tags(request: Any, **_: Any) -> AWSResponse | None:
        if b"endpoint/theirs" not in (request.body or b""):
            return None
        refused.append(request.body)
        response = denied(request)
        request.url = ANSWERED
        return response

    hook(sm, "before-send.sagemaker.ListTags", list_tags, first=True)
    assert [m.name for m in backend.list_managed()] == [NAME]
    assert len(refused) == 1


def test_list_managed_pages(backend: SageMakerEndpoints, clients: dict[str, Any]) -> None:
    for i in range(3):
        backend.create_endpoint(make_spec(endpoint_name=f"fastuner-dep-{i}", deployment_id=f"dep_{i}"))
    pages: list[dict[str, Any]] = []

    def small_pages(params: dict[str, Any], **_: Any) -> None:
        params["MaxResults"] = 2
        pages.append(params)

    hook(clients["sagemaker"], "before-parameter-build.sagemaker.ListEndpoints", small_pages, first=True)
    assert sorted(m.name for m in backend.list_managed()) == [f"fastuner-dep-{i}" for i in range(3)]
    assert len(pages) == 2


def test_list_managed_on_an_empty_account(backend: SageMakerEndpoints) -> None:
    assert backend.list_managed() == []


def test_model_error_uses_the_modeled_fields() -> None:
    from botocore.exceptions import ClientError

    from api.backends.sagemaker_endpoints import invocation_error

    exc = ClientError(
        {
            "Error": {"Code": "ModelError", "Message": "An error from the model container."},
            "OriginalStatusCode": 422,
            "OriginalMessage": json.dumps({"code": "adapter_invalid", "message": "not a LoRA adapter"}),
        },  # type: ignore[typeddict-unknown-key]
        "InvokeEndpoint",
    )
    error = invocation_error(exc)
    assert isinstance(error, InvocationError)
    assert (error.status, error.code, error.message) == (422, "adapter_invalid", "not a LoRA adapter")
