"""Object storage: one protocol, an S3 and a local-directory implementation."""

from api.storage.base import ObjectInfo, ObjectStore
from api.storage.factory import make_store

__all__ = ["ObjectInfo", "ObjectStore", "make_store"]
