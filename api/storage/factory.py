"""Build the configured ObjectStore."""

from __future__ import annotations

from api.settings import Settings
from api.storage.base import ObjectStore
from api.storage.local import LocalStore
from api.storage.s3 import S3Store


def make_store(settings: Settings) -> ObjectStore:
    if settings.store == "s3":
        assert settings.s3_bucket is not None  # checked by Settings
        return S3Store(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            region=settings.aws_region,
            endpoint_url=settings.s3_endpoint_url,
        )
    return LocalStore(settings.resolved_store_root)
