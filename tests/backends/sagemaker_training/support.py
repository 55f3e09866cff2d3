"""What the SageMaker training backend tests share: names, moto's job, log lines, archives."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from scu.metrics_format import format_train_line, parse_line

from api.backends.sagemaker import LOG_GROUP
from api.services.finetune.service import job_name_for
from tests.support.archives import tar_gz
from tests.support.engine_lines import train_record
from tests.support.moto import ACCOUNT, REGION, moto_sagemaker

BUCKET = "fastuner-test"
IMAGE_URI = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/fastuner-training:test"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/fastuner-sagemaker"
TENANT = "acme"
DATASET = "ds_abc123"
JOB_ID = "ft_xyz789"
JOB_NAME = job_name_for(JOB_ID)
DS = f"s3://{BUCKET}/{TENANT}/datasets/{DATASET}"
JOB_S3 = f"s3://{BUCKET}/{TENANT}/jobs/{JOB_ID}"


def split_key(split: str) -> str:
    return f"{TENANT}/datasets/{DATASET}/{split}.jsonl"


def moto_jobs() -> dict[str, Any]:
    return moto_sagemaker().training_jobs  # type: ignore[no-any-return]


def moto_job(name: str = JOB_NAME) -> Any:
    """moto's in-process ``FakeTrainingJob``; its attributes become the DescribeTrainingJob fields."""
    return moto_jobs()[name]


def set_state(status: str, secondary: str | None, **fields: Any) -> None:
    job = moto_job()
    job.training_job_status = status
    job.secondary_status = secondary
    for key, value in fields.items():
        setattr(job, key, value)


# -- logs -------------------------------------------------------------------------------------
def put_log(logs: Any, stream: str, lines: list[tuple[int, str]], *, create: bool = True) -> None:
    if create:
        logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
    logs.put_log_events(
        logGroupName=LOG_GROUP,
        logStreamName=stream,
        logEvents=[{"timestamp": ts, "message": message} for ts, message in lines],
    )


EVAL = {"tokens": 5120, "base_bpt": 4.91, "adapter_bpt": 3.87, "base_ppl": 30.1, "adapter_ppl": 14.6}
T0 = (int(time.time()) - 3600) * 1000  # ms; CloudWatch refuses events older than 14 days


def expected_record(step: int, loss_bpt: float) -> dict[str, float]:
    parsed = parse_line(format_train_line(train_record(step, loss_bpt)))
    assert parsed is not None
    return parsed


# -- model ------------------------------------------------------------------------------------
MODEL_FILES = {
    "adapter_config.json": json.dumps({"peft_type": "LORA", "r": 16}).encode(),
    "adapter_model.safetensors": b"placeholder",
    "eval.json": json.dumps({"adapter_bpt": 3.87, "base_bpt": 4.91}).encode(),
}


def make_tar(path: Path, members: dict[str, bytes], *, links: dict[str, str] | None = None) -> Path:
    path.write_bytes(tar_gz(members, links=links))
    return path


def model_key() -> str:
    return f"{TENANT}/jobs/{JOB_ID}/output/{JOB_NAME}/output/model.tar.gz"
