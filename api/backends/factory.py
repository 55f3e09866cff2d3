"""The built-in backends, ``local`` and ``sagemaker``, registered in :mod:`api.backends.registry`,
and the two calls that build the configured ones (training jobs and inference endpoints)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from api.backends import registry
from api.backends.base import ComputeBackend
from api.backends.capabilities import Capabilities
from api.backends.endpoints import EndpointBackend
from api.domain.errors import BadRequest
from api.domain.instances import InstanceType

if TYPE_CHECKING:
    from api.settings import Settings
    from api.storage.base import ObjectStore

LOCAL_INSTANCE: Final = InstanceType("local", 0.0, 0, 0.0, 0.2, on_host=True)
LOCAL_STARTUP_S: Final = 30


def make_backend(settings: Settings, store: ObjectStore) -> ComputeBackend:
    return registry.lookup(settings.backend).training(settings, store)


def make_endpoint_backend(settings: Settings, store: ObjectStore) -> EndpointBackend:
    return registry.lookup(settings.backend).endpoints(settings, store)


# -- local: subprocesses on this machine -----------------------------------------------------
def local_capabilities(settings: Settings) -> Capabilities:
    return Capabilities(
        summary="runs one process on this machine",
        instances={LOCAL_INSTANCE.name: LOCAL_INSTANCE},
        default_instance=LOCAL_INSTANCE.name,
        default_inference_instance=LOCAL_INSTANCE.name,
        multi_node=False,
        spot=False,
        host_files=True,
        startup_seconds=LOCAL_STARTUP_S,
    )


def _local_options(settings: Settings) -> dict[str, Any]:
    from api.backends.local_models import LocalModels

    models = LocalModels(settings.models_dir, offline=not settings.local_hub_downloads)
    return {"python": settings.local_python, "models": models, "hf_token_secret": settings.hf_token_secret}


def _local_training(settings: Settings, store: ObjectStore) -> ComputeBackend:
    from api.backends.local import LocalBackend

    return LocalBackend(store, settings.work_dir / "jobs", **_local_options(settings))


def _local_endpoints(settings: Settings, store: ObjectStore) -> EndpointBackend:
    from api.backends.local_endpoints import LocalEndpoints

    return LocalEndpoints(store, settings.work_dir / "endpoints", **_local_options(settings))


# -- sagemaker: training jobs and endpoints in AWS ---------------------------------------------
def sagemaker_capabilities(settings: Settings) -> Capabilities:
    from api.backends.sagemaker_instances import INSTANCE_TYPES, SPOT_PRICE_FACTOR, STARTUP_S

    return Capabilities(
        summary="runs SageMaker training jobs and endpoints",
        instances=INSTANCE_TYPES,
        default_instance=settings.default_instance_type,
        default_inference_instance=settings.default_inference_instance_type,
        multi_node=True,
        spot=True,
        host_files=False,
        startup_seconds=STARTUP_S,
        spot_price_factor=SPOT_PRICE_FACTOR,
    )


def _sagemaker_options(
    settings: Settings, store: ObjectStore, image_uri: str | None, what: str
) -> dict[str, Any]:
    """The S3 store, image, role, region and token secret every SageMaker backend is built with."""
    from api.storage.s3 import S3Store

    if not isinstance(store, S3Store):
        raise BadRequest("the sagemaker backend needs the s3 store")
    if not image_uri or not settings.sagemaker_role_arn:
        raise BadRequest(
            f"the sagemaker backend needs FASTUNER_{what}_IMAGE_URI and FASTUNER_SAGEMAKER_ROLE_ARN"
        )
    return {
        "store": store,
        "image_uri": image_uri,
        "role_arn": settings.sagemaker_role_arn,
        "region": settings.aws_region,
        "hf_token_secret": settings.hf_token_secret,
    }


def _sagemaker_training(settings: Settings, store: ObjectStore) -> ComputeBackend:
    from api.backends.sagemaker import SageMakerBackend

    return SageMakerBackend(**_sagemaker_options(settings, store, settings.training_image_uri, "TRAINING"))


def _sagemaker_endpoints(settings: Settings, store: ObjectStore) -> EndpointBackend:
    options = _sagemaker_options(settings, store, settings.inference_image_uri, "INFERENCE")
    if settings.sagemaker_deployment_mode == "components":
        from api.backends.sagemaker_component_requests import ComponentSettings
        from api.backends.sagemaker_components import SageMakerComponents

        components = ComponentSettings(
            memory_mb=settings.inference_component_memory_mb,
            cpu_cores=settings.inference_component_cpu_cores,
            base_model_artifacts=dict(settings.sagemaker_base_model_artifacts),
            delete_wait_s=settings.inference_component_delete_wait_seconds,
        )
        return SageMakerComponents(**options, components=components)
    from api.backends.sagemaker_endpoints import SageMakerEndpoints

    return SageMakerEndpoints(**options)


registry.register(registry.BackendEntry("local", local_capabilities, _local_training, _local_endpoints))
registry.register(
    registry.BackendEntry(
        "sagemaker",
        sagemaker_capabilities,
        _sagemaker_training,
        _sagemaker_endpoints,
        store="s3",
        store_reason=" (SageMaker reads S3)",
    )
)
