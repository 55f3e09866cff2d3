"""The AWS side of the drop tests on moto: the bucket's notification to an SQS queue with a DLQ."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from api.context import AppContext
from api.services.drops import DropService
from api.services.drops.worker import DropWorker, Summary
from tests.drops.support import Clock, add_tenant
from tests.e2e.sagemaker_support import ACCOUNT, BUCKET, REGION, sagemaker_settings


def s3_event(key: str, etag: str | None, *, bucket: str = BUCKET, name: str = "ObjectCreated:Put") -> str:
    """An S3 notification body as S3 sends it (the key URL-encoded)."""
    from urllib.parse import quote_plus

    obj: dict[str, Any] = {"key": quote_plus(key, safe="/"), "size": 1}
    if etag is not None:
        obj["eTag"] = etag
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": name,
        "s3": {"bucket": {"name": bucket}, "object": obj},
    }
    return json.dumps({"Records": [record]})


@dataclass
class AwsDrops:
    ctx: AppContext
    clock: Clock
    queue_url: str
    dlq_url: str

    @property
    def s3(self) -> Any:
        return boto3.client("s3", region_name=REGION)

    @property
    def sqs(self) -> Any:
        return boto3.client("sqs", region_name=REGION)

    def put(self, key: str, body: bytes) -> str:
        etag: str = self.s3.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"].strip('"')
        return etag

    def worker(self) -> DropWorker:
        return DropWorker(self.ctx.drops, source="sqs", interval=1.0, queue_wait=0)

    def run_once(self) -> Summary:
        return self.worker().run_once()

    def queued(self, url: str | None = None) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=url or self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def make_aws_drops(
    home: Path, *, visibility: int = 30, max_receive: int = 2, prefix: str = "", **overrides: Any
) -> AwsDrops:
    """Queue + DLQ + bucket notification (as infra/ sets them up), and the control plane on them."""
    sqs = boto3.client("sqs", region_name=REGION)
    dlq_url = sqs.create_queue(QueueName="fastuner-drops-dlq")["QueueUrl"]
    dlq_arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:fastuner-drops-dlq"
    queue_url = sqs.create_queue(
        QueueName="fastuner-drops",
        Attributes={
            "VisibilityTimeout": str(visibility),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive)}
            ),
        },
    )["QueueUrl"]
    boto3.client("s3", region_name=REGION).put_bucket_notification_configuration(
        Bucket=BUCKET,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:fastuner-drops",
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {
                        "Key": {
                            "FilterRules": [
                                {"Name": "prefix", "Value": f"{prefix}drop/"},
                                {"Name": "suffix", "Value": ".jsonl"},
                            ]
                        }
                    },
                }
            ]
        },
    )
    settings = sagemaker_settings(
        home, drop_queue_url=queue_url, drop_queue_wait_seconds=0, s3_prefix=prefix, **overrides
    )
    ctx = AppContext.build(settings)
    clock = Clock()
    ctx.drops = DropService(ctx.db, ctx.store, ctx.datasets, ctx.finetune, settings, clock=clock)
    add_tenant(ctx)
    return AwsDrops(ctx, clock, queue_url, dlq_url)
