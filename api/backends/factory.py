"""Build the configured compute backends (training jobs and inference endpoints)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from api.backends.base import ComputeBackend
from api.backends.endpoints import EndpointBackend
from api.backends.local import LocalBackend
from api.backends.local_endpoints import LocalEndpoints
from api.backends.local_models import LocalModels
from api.domain.errors import BadRequest
from api.settings import Settings
from api.storage.base import ObjectStore

if TYPE_CHECKING:
    from api.storage.s3 import S3Store


def _sagemaker_prerequisites(
    settings: Settings, store: ObjectStore, image_uri: str | None, what: str
) -> tuple[S3Store, str, str]:
    from api.storage.s3 import S3Store

    if not isinstance(store, S3Store):
        raise BadRequest("the sagemaker backend needs the s3 store")
    if not image_uri or not settings.sagemaker_role_arn:
        raise BadRequest(
            f"the sagemaker backend needs FASTUNER_{what}_IMAGE_URI and FASTUNER_SAGEMAKER_ROLE_ARN"
        )
    return store, image_uri, settings.sagemaker_role_arn


def make_backend(settings: Settings, store: ObjectStore) -> ComputeBackend:
    if settings.backend == "sagemaker":
        from api.backends.sagemaker import SageMakerBackend

        s3, image, role = _sagemaker_prerequisites(settings, store, settings.training_image_uri, "TRAINING")
        return SageMakerBackend(
            s3, image_uri=image, role_arn=role, region=settings.aws_region,
            hf_token_secret=settings.hf_token_secret,
        )  # fmt: skip
    return LocalBackend(
        store, settings.work_dir / "jobs", python=settings.local_python,
        models=_local_models(settings), hf_token_secret=settings.hf_token_secret,
    )  # fmt: skip


def make_endpoint_backend(settings: Settings, store: ObjectStore) -> EndpointBackend:
    if settings.backend == "sagemaker":
        from api.backends.sagemaker_endpoints import SageMakerEndpoints

        s3, image, role = _sagemaker_prerequisites(settings, store, settings.inference_image_uri, "INFERENCE")
        if settings.sagemaker_deployment_mode == "components":
            from api.backends.sagemaker_components import ComponentSettings, SageMakerComponents

            components = ComponentSettings(
                memory_mb=settings.inference_component_memory_mb,
                cpu_cores=settings.inference_component_cpu_cores,
                base_model_artifacts=dict(settings.sagemaker_base_model_artifacts),
                delete_wait_s=settings.inference_component_delete_wait_seconds,
            )
            return SageMakerComponents(
                s3, image_uri=image, role_arn=role, region=settings.aws_region, components=components,
                hf_token_secret=settings.hf_token_secret,
            )  # fmt: skip
        return SageMakerEndpoints(
            s3, image_uri=image, role_arn=role, region=settings.aws_region,
            hf_token_secret=settings.hf_token_secret,
        )  # fmt: skip
    return LocalEndpoints(
        store, settings.work_dir / "endpoints", python=settings.local_python,
        models=_local_models(settings), hf_token_secret=settings.hf_token_secret,
    )  # fmt: skip


def _local_models(settings: Settings) -> LocalModels:
    return LocalModels(settings.models_dir, offline=not settings.local_hub_downloads)
