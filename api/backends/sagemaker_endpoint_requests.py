"""What the SageMaker endpoint requests are built from (pure: no I/O): names, tags, limits and
the inference container's preload list."""

from __future__ import annotations

from collections.abc import Mapping

from api.backends.endpoints import MANAGED_TAG, EndpointSpec
from api.backends.sagemaker_base import NAME_PATTERN
from api.logging import get_logger

log = get_logger("backend.sagemaker_endpoints")

VARIANT_NAME = "AllTraffic"
TENANT_TAG = "fastuner:tenant"
DEPLOYMENT_TAG = "fastuner:deployment"
DEFAULT_MAX_ADAPTERS = 8  # the inference server's own default
# Large base models download from the hub at start-up; SageMaker's default health-check wait is
# shorter than that can take. (Allowed range 60..3600.)
STARTUP_HEALTH_CHECK_TIMEOUT_S = 1800
ENV_VALUE_MAX = 1024  # SageMaker's limit on one container environment value


def check(spec: EndpointSpec) -> str:
    """Refuse (ValueError) what SageMaker would refuse; the endpoint's name."""
    name = spec.endpoint_name
    if not NAME_PATTERN.match(name):
        raise ValueError(f"invalid SageMaker endpoint name: {name!r}")
    if spec.instance_count < 1:
        raise ValueError("instance_count must be >= 1")
    return name


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def resource_tags(spec: EndpointSpec) -> dict[str, str]:
    """``spec.tags`` with the managed/tenant/deployment tags guaranteed."""
    tags = dict(spec.tags)
    tags.setdefault(TENANT_TAG, spec.tenant_id)
    tags.setdefault(DEPLOYMENT_TAG, spec.deployment_id)
    tags[MANAGED_TAG] = "true"
    return tags


def preload_value(adapter_ids: list[str]) -> str:
    """Comma list of the adapters to preload, cut to SageMaker's 1024-character limit.

    Preloading only warms the cache: an adapter left out is loaded on its first request.
    """
    kept: list[str] = []
    length = 0
    for adapter_id in adapter_ids:
        extra = len(adapter_id) + (1 if kept else 0)
        if length + extra > ENV_VALUE_MAX:
            log.warning(
                "preloading only %d of %d adapters (environment value limit)", len(kept), len(adapter_ids)
            )
            break
        kept.append(adapter_id)
        length += extra
    return ",".join(kept)
