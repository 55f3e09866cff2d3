"""The inference-component requests of a deployment in ``components`` mode (pure: no I/O), and
the names, package keys and statuses they use (see :mod:`api.backends.sagemaker_components`)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from api.backends.endpoints import EndpointSpec, EndpointStatus
from api.backends.sagemaker_endpoint_errors import live_status
from api.backends.sagemaker_endpoint_requests import (
    STARTUP_HEALTH_CHECK_TIMEOUT_S,
    VARIANT_NAME,
    check,
    resource_tags,
    tag_list,
)
from api.backends.sagemaker_instances import lookup
from api.domain.enums import DeploymentStatus
from api.domain.errors import BackendError
from api.storage.s3 import S3Store

ADAPTER_TAG = "fastuner:adapter"
BASE_SUFFIX = "base"
PACKAGE_NAME = "model.tar.gz"
MODEL_DIR = "/opt/ml/model"  # where SageMaker unpacks a component's ArtifactUrl
DEFAULT_MEMORY_MB = 8192
DEFAULT_CPU_CORES = 2.0
DEFAULT_DELETE_WAIT_S = 120.0
IC_CREATING = frozenset({"Creating", "Updating"})


@dataclass(frozen=True)
class ComponentSettings:
    """What a component asks of its instance and where base models' artifacts are."""

    memory_mb: int = DEFAULT_MEMORY_MB
    cpu_cores: float = DEFAULT_CPU_CORES
    base_model_artifacts: Mapping[str, str] | None = None  # hub id -> s3://…/model.tar.gz
    delete_wait_s: float = DEFAULT_DELETE_WAIT_S


def base_component_name(endpoint_name: str) -> str:
    return f"{endpoint_name}-{BASE_SUFFIX}"


def adapter_component_name(endpoint_name: str, adapter_id: str) -> str:
    """``{endpoint}-{adapter}`` in SageMaker's name grammar; hashed when it would pass 63 chars."""
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", adapter_id).strip("-").lower() or "adapter"
    name = f"{endpoint_name}-{slug}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(adapter_id.encode()).hexdigest()[:12]
    return f"{endpoint_name[: 63 - len(digest) - 3]}-a-{digest}"


def package_key(adapter_prefix: str, adapter_id: str) -> str:
    """``{tenant}/adapter-packages/{adapter}/model.tar.gz`` next to ``{tenant}/adapters/``.

    Kept out of the adapter folder so neither the adapter download nor the server's adapter fetch
    carries a second copy of the weights.
    """
    tenant_root = adapter_prefix.rstrip("/").rsplit("/", 1)[0]
    return f"{tenant_root}/adapter-packages/{adapter_id}/{PACKAGE_NAME}"


def component_for(state: Mapping[str, Any], adapter_id: str | None) -> str:
    """The component an invocation goes to: the adapter's, else the base component."""
    adapters = state.get("adapter_components") or {}
    if adapter_id and adapter_id in adapters:
        return str(adapters[adapter_id])
    return str(state["base_component"])


def component_requests(
    spec: EndpointSpec,
    *,
    store: S3Store,
    image_uri: str,
    role_arn: str,
    components: ComponentSettings,
    token_environment: dict[str, str],
) -> dict[str, Any]:
    """The exact ``CreateEndpointConfig`` / ``CreateEndpoint`` / ``CreateInferenceComponent`` requests.

    ``{"endpoint_config", "endpoint", "base_component", "adapter_components": {adapter: request}}``;
    ``token_environment``: the variable naming the token's secret (a base pulled from the hub).
    """
    name = check(spec)
    tags = tag_list(resource_tags(spec))
    base = base_component_name(name)
    return {
        "endpoint_config": {
            "EndpointConfigName": name,
            "ExecutionRoleArn": role_arn,
            "ProductionVariants": [
                {
                    "VariantName": VARIANT_NAME,
                    "InstanceType": spec.instance_type,
                    "InitialInstanceCount": spec.instance_count,
                    "ManagedInstanceScaling": {
                        "Status": "ENABLED",
                        "MinInstanceCount": spec.instance_count,
                        "MaxInstanceCount": spec.instance_count,
                    },
                    "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"},
                }
            ],
            "Tags": tags,
        },
        "endpoint": {"EndpointName": name, "EndpointConfigName": name, "Tags": tags},
        "base_component": _base_request(spec, base, tags, store, image_uri, components, token_environment),
        "adapter_components": {a: adapter_request(spec, a, store) for a in spec.adapter_ids},
    }


def _base_request(
    spec: EndpointSpec,
    base: str,
    tags: list[dict[str, str]],
    store: S3Store,
    image_uri: str,
    components: ComponentSettings,
    token_environment: dict[str, str],
) -> dict[str, Any]:
    artifact = (components.base_model_artifacts or {}).get(spec.base_model)
    environment = {
        # With artifacts SageMaker unpacks them into /opt/ml/model and nothing comes from the hub.
        "FASTUNER_BASE_MODEL": MODEL_DIR if artifact else spec.base_model,
        "FASTUNER_ADAPTER_PREFIX": store.uri(spec.adapter_prefix.rstrip("/")),
    }
    if not artifact:  # pulled from the hub: a gated model needs the token (its secret's name here)
        environment.update(token_environment)
    container: dict[str, Any] = {"Image": image_uri, "Environment": environment}
    if artifact:
        container["ArtifactUrl"] = artifact
    instance = lookup(spec.instance_type)
    compute: dict[str, Any] = {
        "MinMemoryRequiredInMb": components.memory_mb,
        "NumberOfCpuCoresRequired": components.cpu_cores,
    }
    if instance is not None and instance.gpus > 0:
        compute["NumberOfAcceleratorDevicesRequired"] = float(instance.gpus)
    return {
        "InferenceComponentName": base,
        "EndpointName": spec.endpoint_name,
        "VariantName": VARIANT_NAME,
        "Specification": {
            "Container": container,
            "StartupParameters": {
                "ModelDataDownloadTimeoutInSeconds": STARTUP_HEALTH_CHECK_TIMEOUT_S,
                "ContainerStartupHealthCheckTimeoutInSeconds": STARTUP_HEALTH_CHECK_TIMEOUT_S,
            },
            "ComputeResourceRequirements": compute,
        },
        "RuntimeConfig": {"CopyCount": spec.instance_count},
        "Tags": tags,
    }


def adapter_request(spec: EndpointSpec, adapter_id: str, store: S3Store) -> dict[str, Any]:
    """The ``CreateInferenceComponent`` request of one adapter on the deployment's base."""
    tags = tag_list({**resource_tags(spec), ADAPTER_TAG: adapter_id})
    return {
        "InferenceComponentName": adapter_component_name(spec.endpoint_name, adapter_id),
        "EndpointName": spec.endpoint_name,
        "Specification": {
            "BaseInferenceComponentName": base_component_name(spec.endpoint_name),
            "Container": {"ArtifactUrl": store.uri(package_key(spec.adapter_prefix, adapter_id))},
        },
        "Tags": tags,
    }


def component_status(desc: Mapping[str, Any]) -> EndpointStatus:
    """Map a ``DescribeInferenceComponent`` response onto our deployment status."""
    status = str(desc.get("InferenceComponentStatus", ""))
    live = live_status(status, IC_CREATING)
    if live is not None:
        return live
    if status == "Failed":
        name = desc.get("InferenceComponentName", "")
        reason = desc.get("FailureReason") or f"inference component {name} failed without a reason"
        return EndpointStatus(DeploymentStatus.FAILED, failure_reason=str(reason))
    raise BackendError(f"unknown InferenceComponentStatus {status!r}")
