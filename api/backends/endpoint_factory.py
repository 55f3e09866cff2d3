"""Build the configured endpoint backend."""

from __future__ import annotations

from api.backends.endpoints import EndpointBackend
from api.backends.local_endpoints import LocalEndpoints
from api.domain.errors import BadRequest
from api.settings import Settings
from api.storage.base import ObjectStore


def make_endpoint_backend(settings: Settings, store: ObjectStore) -> EndpointBackend:
    if settings.backend == "sagemaker":
        from api.backends.sagemaker_endpoints import SageMakerEndpoints
        from api.storage.s3 import S3Store

        if not isinstance(store, S3Store):
            raise BadRequest("the sagemaker backend needs the s3 store")
        if not settings.inference_image_uri or not settings.sagemaker_role_arn:
            raise BadRequest(
                "sagemaker endpoints need FASTUNER_INFERENCE_IMAGE_URI and FASTUNER_SAGEMAKER_ROLE_ARN"
            )
        return SageMakerEndpoints(
            store,
            image_uri=settings.inference_image_uri,
            role_arn=settings.sagemaker_role_arn,
            region=settings.aws_region,
        )
    return LocalEndpoints(store, settings.work_dir / "endpoints", python=settings.local_python)
