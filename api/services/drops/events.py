"""S3 event notifications as SQS message bodies → the objects they announce.

Handles the S3 notification format (``{"Records": [...]}``, also inside an SNS envelope), S3's
``s3:TestEvent`` (sent when a notification is configured; nothing to do) and ignores every event
that is not ``ObjectCreated:*``. Keys in S3 events are URL-encoded (``+`` for a space).
A body that is none of these raises :class:`MalformedMessage`: the worker leaves it on the queue,
whose redrive policy moves it to the dead-letter queue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class MalformedMessage(ValueError):
    pass


@dataclass(frozen=True)
class ObjectCreated:
    bucket: str
    key: str  # the decoded bucket key (with the store's prefix, if any)
    etag: str | None
    version_id: str | None


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Bucket(_Lenient):
    name: str = Field(min_length=1)


class _Object(_Lenient):
    key: str = Field(min_length=1)
    etag: str | None = Field(default=None, alias="eTag")
    version_id: str | None = Field(default=None, alias="versionId")


class _S3(_Lenient):
    bucket: _Bucket
    object: _Object


class _Record(_Lenient):
    event_name: str = Field(alias="eventName")
    s3: _S3 | None = None


class _Notification(_Lenient):
    records: list[_Record] = Field(alias="Records")


def parse_message(body: str) -> list[ObjectCreated]:
    """The created objects a message announces ([] for a test event or other event types)."""
    data = _json_object(body)
    if data.get("Type") == "Notification" and isinstance(data.get("Message"), str):  # via SNS
        data = _json_object(data["Message"])
    if data.get("Event") == "s3:TestEvent":
        return []
    try:
        notification = _Notification.model_validate(data)
    except ValidationError as exc:
        raise MalformedMessage(f"not an S3 event notification: {exc.errors()[0]['msg']}") from exc
    out: list[ObjectCreated] = []
    for record in notification.records:
        if not record.event_name.startswith("ObjectCreated:"):
            continue
        if record.s3 is None:
            raise MalformedMessage(f"{record.event_name} record without an s3 section")
        obj = record.s3.object
        out.append(
            ObjectCreated(
                bucket=record.s3.bucket.name,
                key=unquote_plus(obj.key),
                etag=obj.etag.strip('"') if obj.etag else None,
                version_id=obj.version_id or None,
            )
        )
    return out


def _json_object(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise MalformedMessage(f"message body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MalformedMessage("message body is not a JSON object")
    return data
