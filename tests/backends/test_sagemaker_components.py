"""The ``components`` SageMaker deployment mode: exact requests through botocore's ``Stubber``.

moto has no inference components, so every SageMaker / SageMaker Runtime call here is answered by a
``Stubber``, which checks each request against the real service model (and against the exact
parameters expected) and each canned response against the output shape. S3 (adapter folders and
their ``model.tar.gz`` packages) is moto's (``tests.support.moto``).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber
from botocore.validate import ParamValidator

from api.backends.endpoints import AdapterHosting, EndpointBackend
from api.backends.factory import make_endpoint_backend
from api.backends.sagemaker import RETRY_CONFIG
from api.backends.sagemaker_components import (
    ComponentSettings,
    SageMakerComponents,
    adapter_component_name,
    base_component_name,
    component_status,
    package_key,
)
from api.backends.sagemaker_endpoints import RUNTIME_CONFIG, STARTUP_HEALTH_CHECK_TIMEOUT_S
from api.db import models
from api.db.session import Database
from api.domain.enums import DeploymentStatus
from api.domain.errors import BackendError
from api.services.janitor import Janitor
from api.settings import Settings
from api.storage.s3 import S3Store
from tests.backends.test_sagemaker_endpoints import (
    BUCKET,
    DEPLOYMENT,
    IMAGE_URI,
    NAME,
    ROLE_ARN,
    TENANT,
    make_spec,
)
from tests.support.moto import ACCOUNT, REGION, aws_clients, mocked_bucket


@pytest.fixture(scope="module")
def s3() -> Any:
    return aws_clients(s3=RETRY_CONFIG)["s3"]


@pytest.fixture
def store(s3: Any) -> Iterator[S3Store]:
    with mocked_bucket(s3, BUCKET) as store:
        yield store


A1, A2, A3 = "adp_one000000001", "adp_two000000002", "adp_three0000003"
BASE_IC = f"{NAME}-base"
IC1, IC2, IC3 = (f"{NAME}-{a.replace('_', '-')}" for a in (A1, A2, A3))
INSTANCE = "ml.g5.xlarge"
ENDPOINT_ARN = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/{NAME}"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
MANAGED = [
    {"Key": "fastuner:managed", "Value": "true"},
    {"Key": "fastuner:tenant", "Value": TENANT},
    {"Key": "fastuner:deployment", "Value": DEPLOYMENT},
]


def ic_arn(name: str) -> str:
    return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:inference-component/{name}"


def component(name: str, status: str, at: datetime = T0, **fields: Any) -> dict[str, Any]:
    """An inference component as DescribeInferenceComponent (or, with a VariantName, the list) has it."""
    return {
        "InferenceComponentName": name,
        "InferenceComponentArn": ic_arn(name),
        "EndpointName": NAME,
        "EndpointArn": ENDPOINT_ARN,
        "InferenceComponentStatus": status,
        "CreationTime": at,
        "LastModifiedTime": at,
        **fields,
    }


def listed_components(names: list[str], at: datetime = T0) -> dict[str, Any]:
    """A ListInferenceComponents answer: ``names``, all in service."""
    return {"InferenceComponents": [component(n, "InService", at, VariantName="AllTraffic") for n in names]}


# -- fixtures ---------------------------------------------------------------------------------
class Stubs:
    def __init__(self) -> None:
        self.sagemaker = boto3.client("sagemaker", region_name=REGION, config=RETRY_CONFIG)
        self.runtime = boto3.client("sagemaker-runtime", region_name=REGION, config=RUNTIME_CONFIG)
        self.sm = Stubber(self.sagemaker)
        self.rt = Stubber(self.runtime)
        self.slept: list[float] = []
        self.now = 0.0

    # canned answers
    def missing(self, operation: str, what: str, **params: Any) -> None:
        self.sm.add_client_error(
            operation, "ValidationException", f"Could not find {what}.", 400, expected_params=params
        )

    def ok(self, operation: str, response: dict[str, Any] | None = None, **params: Any) -> None:
        self.sm.add_response(operation, response or {}, params)

    def endpoint(self, status: str) -> None:
        described = {"EndpointName": NAME, "EndpointArn": ENDPOINT_ARN, "EndpointConfigName": NAME}
        described.update(EndpointStatus=status, CreationTime=T0, LastModifiedTime=T0)
        self.ok("describe_endpoint", described, EndpointName=NAME)

    def component(self, name: str, status: str | None) -> None:
        if status is None:
            self.missing(
                "describe_inference_component", f"inference component {name}", InferenceComponentName=name
            )
            return
        self.ok("describe_inference_component", component(name, status), InferenceComponentName=name)

    def create_component(self, request: dict[str, Any]) -> None:
        name = request["InferenceComponentName"]
        self.ok("create_inference_component", {"InferenceComponentArn": ic_arn(name)}, **request)

    def delete_component(self, name: str) -> None:
        self.ok("delete_inference_component", {}, InferenceComponentName=name)

    def done(self) -> None:
        self.sm.assert_no_pending_responses()
        self.rt.assert_no_pending_responses()


@pytest.fixture
def stubs() -> Iterator[Stubs]:
    s = Stubs()
    with s.sm, s.rt:
        yield s


@pytest.fixture
def backend(store: S3Store, stubs: Stubs) -> SageMakerComponents:
    def sleep(seconds: float) -> None:
        stubs.slept.append(seconds)
        stubs.now += seconds

    return SageMakerComponents(
        store,
        image_uri=IMAGE_URI,
        role_arn=ROLE_ARN,
        region=REGION,
        components=ComponentSettings(delete_wait_s=30),
        sagemaker_client=stubs.sagemaker,
        runtime_client=stubs.runtime,
        sleep=sleep,
        clock=lambda: stubs.now,
    )


ADAPTER_FILES = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": b"\x00weights\x01"}


@pytest.fixture
def adapters(store: S3Store) -> list[str]:
    for adapter_id in (A1, A2, A3):
        for file, data in ADAPTER_FILES.items():
            store.put_bytes(f"{TENANT}/adapters/{adapter_id}/{file}", data)
    return [A1, A2]


def spec(**overrides: Any) -> Any:
    return make_spec(**{"instance_type": INSTANCE, "adapter_ids": [A1, A2], **overrides})


def package_url(adapter_id: str) -> str:
    return f"s3://{BUCKET}/{TENANT}/adapter-packages/{adapter_id}/model.tar.gz"


# -- requests (no I/O) ------------------------------------------------------------------------
def test_build_component_requests_are_exact_and_valid(backend: SageMakerComponents) -> None:
    requests = backend.build_component_requests(spec())
    tags = [{"Key": k, "Value": v} for k, v in make_spec().tags.items()]
    assert requests["endpoint_config"] == {
        "EndpointConfigName": NAME,
        "ExecutionRoleArn": ROLE_ARN,
        "ProductionVariants": [
            {
                "VariantName": "AllTraffic",
                "InstanceType": INSTANCE,
                "InitialInstanceCount": 1,
                "ManagedInstanceScaling": {"Status": "ENABLED", "MinInstanceCount": 1, "MaxInstanceCount": 1},
                "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"},
            }
        ],
        "Tags": tags,
    }
    assert "ModelName" not in requests["endpoint_config"]["ProductionVariants"][0]
    assert requests["endpoint"] == {"EndpointName": NAME, "EndpointConfigName": NAME, "Tags": tags}
    assert requests["base_component"] == {
        "InferenceComponentName": BASE_IC,
        "EndpointName": NAME,
        "VariantName": "AllTraffic",
        "Specification": {
            "Container": {
                "Image": IMAGE_URI,
                "Environment": {
                    "FASTUNER_BASE_MODEL": "HuggingFaceTB/SmolLM2-135M",
                    "FASTUNER_ADAPTER_PREFIX": f"s3://{BUCKET}/{TENANT}/adapters",
                },
            },
            "StartupParameters": {
                "ModelDataDownloadTimeoutInSeconds": STARTUP_HEALTH_CHECK_TIMEOUT_S,
                "ContainerStartupHealthCheckTimeoutInSeconds": STARTUP_HEALTH_CHECK_TIMEOUT_S,
            },
            "ComputeResourceRequirements": {
                "MinMemoryRequiredInMb": 8192,
                "NumberOfCpuCoresRequired": 2.0,
                "NumberOfAcceleratorDevicesRequired": 1.0,
            },
        },
        "RuntimeConfig": {"CopyCount": 1},
        "Tags": tags,
    }
    assert requests["adapter_components"][A1] == {
        "InferenceComponentName": IC1,
        "EndpointName": NAME,
        "Specification": {
            "BaseInferenceComponentName": BASE_IC,
            "Container": {"ArtifactUrl": package_url(A1)},
        },
        "Tags": [*tags, {"Key": "fastuner:adapter", "Value": A1}],
    }
    # Every request is valid for the real service model.
    model = backend.sagemaker.meta.service_model
    for op, request in [
        ("CreateEndpointConfig", requests["endpoint_config"]),
        ("CreateEndpoint", requests["endpoint"]),
        ("CreateInferenceComponent", requests["base_component"]),
        *(("CreateInferenceComponent", r) for r in requests["adapter_components"].values()),
    ]:
        report = ParamValidator().validate(request, model.operation_model(op).input_shape)
        assert not report.has_errors(), report.generate_report()


def test_base_model_artifacts_are_served_from_opt_ml_model(store: S3Store, stubs: Stubs) -> None:
    artifact = f"s3://{BUCKET}/models/smollm2-135m/model.tar.gz"
    backend = SageMakerComponents(
        store,
        image_uri=IMAGE_URI,
        role_arn=ROLE_ARN,
        region=REGION,
        sagemaker_client=stubs.sagemaker,
        runtime_client=stubs.runtime,
        components=ComponentSettings(base_model_artifacts={"HuggingFaceTB/SmolLM2-135M": artifact}),
    )
    container = backend.build_component_requests(spec())["base_component"]["Specification"]["Container"]
    assert container["ArtifactUrl"] == artifact
    assert container["Environment"]["FASTUNER_BASE_MODEL"] == "/opt/ml/model"


def test_cpu_instances_ask_for_no_accelerator(backend: SageMakerComponents) -> None:
    base = backend.build_component_requests(spec(instance_type="ml.m5.xlarge"))["base_component"]
    assert "NumberOfAcceleratorDevicesRequired" not in base["Specification"]["ComputeResourceRequirements"]


def test_component_names_fit_sagemaker() -> None:
    assert base_component_name(NAME) == BASE_IC
    assert adapter_component_name(NAME, A1) == IC1
    long = adapter_component_name("fastuner-" + "x" * 50, "adp_" + "y" * 40)
    assert len(long) <= 63 and long[0].isalnum() and long[-1].isalnum()
    assert package_key(f"{TENANT}/adapters", A1) == f"{TENANT}/adapter-packages/{A1}/model.tar.gz"


def test_component_status_mapping() -> None:
    assert component_status({"InferenceComponentStatus": "Creating"}).status == DeploymentStatus.CREATING
    assert component_status({"InferenceComponentStatus": "InService"}).status == DeploymentStatus.IN_SERVICE
    failed = component_status({"InferenceComponentStatus": "Failed", "FailureReason": "image pull"})
    assert (failed.status, failed.failure_reason) == (DeploymentStatus.FAILED, "image pull")
    with pytest.raises(BackendError):
        component_status({"InferenceComponentStatus": "Weird"})


def test_the_factory_picks_the_mode(tmp_path: Path, store: S3Store) -> None:
    common: dict[str, Any] = {
        "home": tmp_path,
        "store": "s3",
        "s3_bucket": BUCKET,
        "backend": "sagemaker",
        "aws_region": REGION,
        "sagemaker_role_arn": ROLE_ARN,
        "inference_image_uri": IMAGE_URI,
    }
    endpoint = make_endpoint_backend(Settings(**common), store)
    assert not isinstance(endpoint, AdapterHosting)  # endpoint stays the default
    components = make_endpoint_backend(Settings(**common, sagemaker_deployment_mode="components"), store)
    assert isinstance(components, SageMakerComponents)
    assert isinstance(components, EndpointBackend) and isinstance(components, AdapterHosting)


# -- the deployment path ----------------------------------------------------------------------
def create(backend: SageMakerComponents, stubs: Stubs) -> dict[str, Any]:
    requests = backend.build_component_requests(spec())
    stubs.missing("describe_endpoint_config", "endpoint configuration", EndpointConfigName=NAME)
    stubs.ok(
        "create_endpoint_config",
        {"EndpointConfigArn": ENDPOINT_ARN + "-config"},
        **requests["endpoint_config"],
    )
    stubs.missing("describe_endpoint", "endpoint", EndpointName=NAME)
    stubs.ok("create_endpoint", {"EndpointArn": ENDPOINT_ARN}, **requests["endpoint"])
    return backend.create_endpoint(spec())


def test_create_packages_adapters_then_components_follow_the_endpoint(
    backend: SageMakerComponents,
    stubs: Stubs,
    store: S3Store,
    adapters: list[str],
) -> None:
    requests = backend.build_component_requests(spec())
    state = create(backend, stubs)
    assert state["mode"] == "components" and state["endpoint_arn"] == ENDPOINT_ARN
    assert state["base_component"] == BASE_IC
    assert state["adapter_components"] == {A1: IC1, A2: IC2}
    json.dumps(state)  # kept in the row as JSON
    # The adapter packages: one gzip'd tar of the adapter folder each.
    with tarfile.open(fileobj=io.BytesIO(store.get_bytes(package_key(f"{TENANT}/adapters", A1)))) as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar.getmembers()} == ADAPTER_FILES  # type: ignore[union-attr]

    # Endpoint still creating: nothing else is touched.
    stubs.endpoint("Creating")
    assert backend.describe_endpoint(NAME, state).status == DeploymentStatus.CREATING
    # Endpoint in service: the base component is created.
    stubs.endpoint("InService")
    stubs.component(BASE_IC, None)
    stubs.create_component(requests["base_component"])
    assert backend.describe_endpoint(NAME, state).status == DeploymentStatus.CREATING
    # Base in service: the adapter components are created on it.
    stubs.endpoint("InService")
    stubs.component(BASE_IC, "InService")
    stubs.component(IC1, None)
    stubs.create_component(requests["adapter_components"][A1])
    stubs.component(IC2, None)
    stubs.create_component(requests["adapter_components"][A2])
    assert backend.describe_endpoint(NAME, state).status == DeploymentStatus.CREATING
    # Everything in service.
    stubs.endpoint("InService")
    for name in (BASE_IC, IC1, IC2):
        stubs.component(name, "InService")
    assert backend.describe_endpoint(NAME, state).status == DeploymentStatus.IN_SERVICE
    stubs.done()


def test_a_failed_adapter_component_fails_the_deployment(
    backend: SageMakerComponents, stubs: Stubs, adapters: list[str]
) -> None:
    state = create(backend, stubs)
    stubs.endpoint("InService")
    stubs.component(BASE_IC, "InService")
    failed = component(IC1, "Failed", FailureReason="bad adapter")
    stubs.ok("describe_inference_component", failed, InferenceComponentName=IC1)
    observed = backend.describe_endpoint(NAME, state)
    assert observed.status == DeploymentStatus.FAILED
    assert observed.failure_reason == f"adapter {A1}: bad adapter"
    stubs.done()


def test_add_adapter_creates_only_its_component(
    backend: SageMakerComponents,
    stubs: Stubs,
    store: S3Store,
    adapters: list[str],
) -> None:
    state = create(backend, stubs)
    request = backend.build_component_requests(spec(adapter_ids=[A1, A2, A3]))["adapter_components"][A3]
    assert request["Specification"] == {
        "BaseInferenceComponentName": BASE_IC,
        "Container": {"ArtifactUrl": package_url(A3)},
    }
    stubs.component(BASE_IC, "InService")
    stubs.component(IC3, None)
    stubs.create_component(request)
    new = backend.add_adapter(spec(), state, A3)
    assert new["adapter_components"] == {A1: IC1, A2: IC2, A3: IC3}
    assert store.exists(package_key(f"{TENANT}/adapters", A3))
    # Again (a retry): it exists, nothing is created twice.
    stubs.component(BASE_IC, "InService")
    stubs.component(IC3, "Creating")
    assert backend.add_adapter(spec(), new, A3) == new
    stubs.done()  # no CreateEndpoint*, no base component call: the base was not redeployed


def test_add_adapter_while_the_base_is_starting_defers_to_describe(
    backend: SageMakerComponents, stubs: Stubs, adapters: list[str]
) -> None:
    state = create(backend, stubs)
    stubs.component(BASE_IC, None)
    new = backend.add_adapter(spec(), state, A3)
    assert new["adapter_requests"][A3]["InferenceComponentName"] == IC3
    stubs.done()


def test_invoke_targets_the_adapters_component(
    backend: SageMakerComponents, stubs: Stubs, adapters: list[str]
) -> None:
    state = create(backend, stubs)
    answer = json.dumps({"outputs": [{"text": "hi", "finish_reason": "stop"}]}).encode()

    def expect(component: str, adapter: str | None) -> None:
        payload = json.dumps({"inputs": ["x"], "adapter": adapter, "parameters": {}}).encode()
        body = StreamingBody(io.BytesIO(answer), len(answer))
        response = {"Body": body, "ContentType": "application/json"}
        request = {"EndpointName": NAME, "InferenceComponentName": component, "Body": payload}
        request.update(ContentType="application/json", Accept="application/json")
        stubs.rt.add_response("invoke_endpoint", response, request)

    expect(IC2, A2)
    assert (
        backend.invoke(NAME, state, {"inputs": ["x"], "adapter": A2, "parameters": {}})["outputs"][0]["text"]
        == "hi"
    )
    expect(BASE_IC, None)
    backend.invoke(NAME, state, {"inputs": ["x"], "adapter": None, "parameters": {}})
    stubs.done()


def test_invoke_maps_a_container_error(
    backend: SageMakerComponents, stubs: Stubs, adapters: list[str]
) -> None:
    state = create(backend, stubs)
    original = '{"code": "adapter_not_found", "message": "no adapter"}'
    expected = {
        "EndpointName": NAME,
        "InferenceComponentName": IC1,
        "ContentType": ANY,
        "Accept": ANY,
        "Body": ANY,
    }
    stubs.rt.add_client_error(
        "invoke_endpoint",
        "ModelError",
        "Received client error (404) from primary",
        424,
        modeled_fields={"OriginalStatusCode": 404, "OriginalMessage": original},
        expected_params=expected,
    )
    from api.backends.endpoints import InvocationError

    with pytest.raises(InvocationError) as info:
        backend.invoke(NAME, state, {"inputs": ["x"], "adapter": A1, "parameters": {}})
    assert (info.value.status, info.value.code) == (404, "adapter_not_found")
    stubs.done()


def test_remove_adapter_deletes_only_its_component(
    backend: SageMakerComponents, stubs: Stubs, adapters: list[str]
) -> None:
    state = create(backend, stubs)
    stubs.delete_component(IC1)
    new = backend.remove_adapter(NAME, state, A1)
    assert new["adapter_components"] == {A2: IC2} and A1 not in new["adapter_requests"]
    # Already gone (a retry): not an error.
    stubs.missing("delete_inference_component", f"inference component {IC1}", InferenceComponentName=IC1)
    assert backend.remove_adapter(NAME, new, A1)["adapter_components"] == {A2: IC2}
    stubs.done()


def expect_teardown(stubs: Stubs, *, foreign: bool = True, drain: int = 0) -> None:
    """Adapters → base → endpoint → config, only managed-tagged extras, waiting for each stage."""
    listed = [BASE_IC, IC1, IC2, "their-component"] if foreign else [BASE_IC, IC1, IC2]
    stubs.ok("list_inference_components", listed_components(listed), EndpointNameEquals=NAME)
    if foreign:  # not in the state: deleted only when tagged managed (it is not)
        stubs.component("their-component", "InService")
        stubs.ok(
            "list_tags",
            {"Tags": [{"Key": "owner", "Value": "someone-else"}]},
            ResourceArn=ic_arn("their-component"),
        )
    stubs.delete_component(IC1)
    stubs.delete_component(IC2)
    for _ in range(drain):
        stubs.component(IC1, "Deleting")
        stubs.component(IC2, None)
    stubs.component(IC1, None)
    if not drain:
        stubs.component(IC2, None)
    stubs.delete_component(BASE_IC)
    stubs.component(BASE_IC, None)
    stubs.ok("delete_endpoint", {}, EndpointName=NAME)
    stubs.ok("delete_endpoint_config", {}, EndpointConfigName=NAME)


def test_delete_goes_adapters_base_endpoint_config(
    backend: SageMakerComponents, stubs: Stubs, adapters: list[str]
) -> None:
    state = create(backend, stubs)
    expect_teardown(stubs, drain=1)
    backend.delete_endpoint(NAME, state)
    assert stubs.slept == [5.0]  # waited once for the adapters to drain
    stubs.done()  # "their-component" was never deleted; no DeleteModel in components mode


def test_delete_stops_at_the_deadline_and_resumes(
    backend: SageMakerComponents, stubs: Stubs, adapters: list[str]
) -> None:
    state = create(backend, stubs)
    stubs.ok("list_inference_components", {"InferenceComponents": []}, EndpointNameEquals=NAME)
    stubs.delete_component(IC1)
    stubs.delete_component(IC2)
    for _ in range(7):  # 30 s budget, polled every 5 s
        stubs.component(IC1, "Deleting")
        stubs.component(IC2, "Deleting")
    with pytest.raises(BackendError) as info:
        backend.delete_endpoint(NAME, state)
    assert info.value.details == {"transient": True}
    stubs.done()  # neither the base nor the endpoint was touched


# -- the janitor ------------------------------------------------------------------------------
@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'fastuner.db'}")
    database.migrate()
    return database


def _row(db: Database, state: dict[str, Any], **kw: Any) -> None:
    values: dict[str, Any] = {
        "id": DEPLOYMENT,
        "tenant_id": TENANT,
        "adapter_ids": [A1, A2],
        "base_model": "m",
    }
    values.update(backend="sagemaker", endpoint_name=NAME, instance_type=INSTANCE, hourly_price_usd=1.408)
    values.update(status="in_service", ttl_seconds=600, created_at=T0, in_service_at=T0, backend_state=state)
    values.update(kw)
    with db.session() as s:
        s.add(models.DeploymentRow(**values))


def test_janitor_tears_down_an_idle_deployment_components_first(
    backend: SageMakerComponents, stubs: Stubs, db: Database, tmp_path: Path, adapters: list[str]
) -> None:
    state = create(backend, stubs)
    _row(db, state)
    expect_teardown(stubs)
    stubs.ok("list_endpoints", {"Endpoints": []})
    stubs.ok("list_inference_components", {"InferenceComponents": []})
    settings = Settings(home=tmp_path, orphan_grace_seconds=600)
    report = Janitor(db, backend, settings, clock=lambda: T0 + timedelta(hours=1)).run_once()
    assert [(a.deployment_id, a.done) for a in report.actions] == [(DEPLOYMENT, True)]
    assert report.actions[0].reason.startswith("idle")
    stubs.done()


def test_janitor_tears_down_a_deployment_with_no_adapters_left(
    backend: SageMakerComponents, stubs: Stubs, db: Database, tmp_path: Path, adapters: list[str]
) -> None:
    state = create(backend, stubs)
    stubs.delete_component(IC1)
    stubs.delete_component(IC2)
    state = backend.remove_adapter(NAME, backend.remove_adapter(NAME, state, A1), A2)
    _row(db, state, adapter_ids=[], ttl_seconds=None)
    stubs.ok("list_inference_components", {"InferenceComponents": []}, EndpointNameEquals=NAME)
    stubs.delete_component(BASE_IC)
    stubs.component(BASE_IC, None)
    stubs.ok("delete_endpoint", {}, EndpointName=NAME)
    stubs.ok("delete_endpoint_config", {}, EndpointConfigName=NAME)
    settings = Settings(home=tmp_path)
    report = Janitor(db, backend, settings, clock=lambda: T0).run_once(tenant_id=TENANT)
    assert [(a.reason, a.done) for a in report.actions] == [("no adapters left", True)]
    stubs.done()


def test_janitor_sweeps_stray_adapter_components_only_when_managed(
    backend: SageMakerComponents, stubs: Stubs, db: Database, tmp_path: Path, adapters: list[str]
) -> None:
    state = create(backend, stubs)
    _row(db, state, adapter_ids=[A1], ttl_seconds=None)  # A2 was removed but its delete failed
    stubs.ok("list_endpoints", {"Endpoints": []})
    old = T0 - timedelta(hours=1)
    stubs.ok("list_inference_components", listed_components([BASE_IC, IC1, IC2, "their-adapter"], old))
    stubs.ok("list_tags", {"Tags": MANAGED}, ResourceArn=ic_arn(BASE_IC))
    stubs.ok(
        "list_tags", {"Tags": [*MANAGED, {"Key": "fastuner:adapter", "Value": A1}]}, ResourceArn=ic_arn(IC1)
    )
    stubs.ok(
        "list_tags", {"Tags": [*MANAGED, {"Key": "fastuner:adapter", "Value": A2}]}, ResourceArn=ic_arn(IC2)
    )
    stubs.ok(
        "list_tags", {"Tags": [{"Key": "fastuner:adapter", "Value": A2}]}, ResourceArn=ic_arn("their-adapter")
    )
    stubs.delete_component(IC2)
    report = Janitor(
        db, backend, Settings(home=tmp_path, orphan_grace_seconds=600), clock=lambda: T0
    ).run_once()
    assert [(a.endpoint_name, a.done) for a in report.actions] == [(NAME, True)]
    assert IC2 in report.actions[0].reason
    stubs.done()
