"""Amazon S3 (or any S3-compatible endpoint) as object store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from api.storage.base import ObjectInfo, check_key

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

RETRY_CONFIG = Config(retries={"mode": "standard", "max_attempts": 8})


class S3Store:
    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        client: S3Client | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client: S3Client = client or boto3.client(
            "s3", region_name=region, endpoint_url=endpoint_url, config=RETRY_CONFIG
        )

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def key_from_uri(self, uri: str) -> str:
        head = f"s3://{self.bucket}/{self.prefix}"
        if not uri.startswith(head):
            raise ValueError(f"{uri} is not inside {head}")
        return check_key(uri[len(head) :])

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        full = self._key(key)
        self.client.upload_file(str(path), self.bucket, full)
        head = self.client.head_object(Bucket=self.bucket, Key=full)
        return ObjectInfo(key=key, size=head["ContentLength"], etag=head["ETag"].strip('"'))

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        resp = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        return ObjectInfo(key=key, size=len(data), etag=resp["ETag"].strip('"'))

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as fh:
            return fh.read()

    def open_read(self, key: str) -> BinaryIO:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _is_missing(exc):
                raise FileNotFoundError(key) from exc
            raise
        return cast(BinaryIO, resp["Body"])

    def download_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, self._key(key), str(path))
        except ClientError as exc:
            if _is_missing(exc):
                raise FileNotFoundError(key) from exc
            raise

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _is_missing(exc):
                return False
            raise
        return True

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            for obj in page.get("Contents", []):
                yield ObjectInfo(
                    key=obj["Key"][len(self.prefix) :],
                    size=obj["Size"],
                    etag=obj["ETag"].strip('"'),
                    modified=obj.get("LastModified"),
                )

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> int:
        keys = [self.prefix + info.key for info in self.list(prefix)]
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
            )
        return len(keys)

    def sweep_partials(self, older_than: float, prefix: str = "") -> tuple[int, int]:
        """Abort multipart uploads under ``prefix`` begun before ``older_than`` (epoch seconds).

        A process killed during a large ``put_file`` leaves its parts billed but invisible to
        listings. Returns (uploads aborted, bytes of their parts).
        """
        cutoff = datetime.fromtimestamp(older_than, UTC)
        aborted = size = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            for upload in page.get("Uploads", []):
                initiated = upload.get("Initiated")
                if initiated is None or initiated >= cutoff:
                    continue
                key, upload_id = upload["Key"], upload["UploadId"]
                try:
                    parts = self.client.list_parts(Bucket=self.bucket, Key=key, UploadId=upload_id)
                    size += sum(p.get("Size", 0) for p in parts.get("Parts", []))
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                        raise
                    continue
                aborted += 1
        return aborted, size


def _is_missing(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")
