"""Build the configured compute backend."""

from __future__ import annotations

from api.backends.base import ComputeBackend
from api.backends.local import LocalBackend
from api.domain.errors import BadRequest
from api.settings import Settings
from api.storage.base import ObjectStore


def make_backend(settings: Settings, store: ObjectStore) -> ComputeBackend:
    if settings.backend == "sagemaker":
        from api.backends.sagemaker import SageMakerBackend
        from api.storage.s3 import S3Store

        if not isinstance(store, S3Store):
            raise BadRequest("the sagemaker backend needs the s3 store")
        if not settings.training_image_uri or not settings.sagemaker_role_arn:
            raise BadRequest(
                "the sagemaker backend needs FASTUNER_TRAINING_IMAGE_URI and FASTUNER_SAGEMAKER_ROLE_ARN"
            )
        return SageMakerBackend(
            store,
            image_uri=settings.training_image_uri,
            role_arn=settings.sagemaker_role_arn,
            region=settings.aws_region,
        )
    return LocalBackend(store, settings.work_dir / "jobs", python=settings.local_python)
