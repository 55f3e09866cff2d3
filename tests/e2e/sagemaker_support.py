"""The ``sagemaker`` backend behind the real API, against moto (S3, SageMaker, CloudWatch Logs).

:class:`SageMakerEnv` builds the app exactly as production does (``create_app(settings)``: the
store and backend make their own boto3 clients) inside ``mock_aws``, and gives the tests the
handles they need to play SageMaker's part: move moto's in-process training job through its
states, write its CloudWatch log lines, upload its ``model.tar.gz``, inject AWS errors, and
record every request the backend sends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import boto3
from fastapi.testclient import TestClient
from moto import mock_aws

from api.app import create_app
from api.backends.sagemaker import LOG_GROUP, SageMakerBackend
from api.services.finetune.service import job_name_for
from api.settings import Settings
from api.storage.s3 import S3Store
from tests.api.support import authorize, upload
from tests.support.archives import tar_gz
from tests.support.calls import Calls
from tests.support.http import ok_json
from tests.support.moto import ACCOUNT, REGION, moto_sagemaker

BUCKET = "fastuner-e2e"
IMAGE_URI = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/fastuner-training:1"
INFERENCE_IMAGE_URI = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/fastuner-inference:1"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/fastuner"
TENANT = "default"  # single-user mode: no API keys configured
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "uppercase.jsonl"


@cache
def _session() -> boto3.Session:
    return boto3.Session(region_name=REGION)


@contextmanager
def mocked_aws() -> Iterator[None]:
    """``mock_aws`` (fresh state) with an S3 bucket, and one boto3 session for the whole run.

    ``mock_aws`` swaps in a fresh default session, and a fresh session parses botocore's service
    models again (about a second per test for SageMaker). The app still builds its own clients
    with ``boto3.client`` exactly as in production; they just come from a session whose parsed
    models are cached. moto answers them all: its hook is registered for every session made
    after moto was imported.
    """
    with mock_aws():
        boto3.DEFAULT_SESSION = _session()  # undone when mock_aws ends
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        yield


def sagemaker_settings(home: Path, database_url: str | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": home,
        "database_url": database_url or f"sqlite:///{home / 'fastuner.db'}",
        "log_json": False,
        "backend": "sagemaker",
        "store": "s3",
        "s3_bucket": BUCKET,
        "training_image_uri": IMAGE_URI,
        "inference_image_uri": INFERENCE_IMAGE_URI,  # the app also builds the endpoints backend
        "sagemaker_role_arn": ROLE_ARN,
        "aws_region": REGION,
        "background_tasks": False,
        "allowed_models": ["HuggingFaceTB/SmolLM2-*", "meta-llama/*"],
    }
    values.update(overrides)
    return Settings(**values)


class SageMakerEnv:
    """The app (sagemaker backend, S3 store) under a TestClient, plus SageMaker's side of things."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.client = authorize(TestClient(self.app))
        # The backend's own clients: hooks and injected errors act on exactly what the API uses.
        self.calls = Calls.on(self.backend.sagemaker)
        self._log_group = False

    # -- handles ------------------------------------------------------------------------------
    @property
    def backend(self) -> SageMakerBackend:
        backend = self.app.state.ctx.backend
        assert isinstance(backend, SageMakerBackend)
        return backend

    @property
    def store(self) -> S3Store:
        store = self.app.state.ctx.store
        assert isinstance(store, S3Store)
        return store

    def __enter__(self) -> SageMakerEnv:
        self.client.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.__exit__(*exc)

    # -- API shortcuts ------------------------------------------------------------------------
    def upload_dataset(self) -> dict[str, Any]:
        ds: dict[str, Any] = ok_json(upload(self.client, SAMPLE, name="upper"), 201)
        assert ds["status"] == "ready"
        return ds

    def start(self, dataset_id: str, headers: dict[str, str] | None = None, **body: Any) -> Any:
        payload = {"dataset_id": dataset_id, "base_model": SMOL, "instance_type": "ml.g5.xlarge", **body}
        return self.client.post("/v0/finetune", json=payload, headers=headers or {})

    def started(self, dataset_id: str, **body: Any) -> dict[str, Any]:
        """Start a job and put it where SageMaker puts a new one: InProgress / Starting."""
        job: dict[str, Any] = ok_json(self.start(dataset_id, **body), 201)
        # moto's in-process job is born Completed; a real one starts InProgress.
        self.set_state(job["id"], "InProgress", "Starting", training_start_time=None, training_end_time=None)
        return job

    def reconcile(self) -> dict[str, Any]:
        report: dict[str, Any] = ok_json(self.client.post("/v0/finetune/reconcile"))
        return report

    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = ok_json(self.client.get(f"/v0/finetune/{job_id}"))
        return job

    def events(self, job_id: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = ok_json(self.client.get(f"/v0/finetune/{job_id}/events"))
        return events

    def metrics(self, job_id: str, after: int = 0) -> list[dict[str, Any]]:
        points: list[dict[str, Any]] = ok_json(
            self.client.get(f"/v0/finetune/{job_id}/metrics", params={"after": after})
        )
        return points

    # -- SageMaker's side ---------------------------------------------------------------------
    @staticmethod
    def moto_jobs() -> dict[str, Any]:
        jobs: dict[str, Any] = moto_sagemaker().training_jobs
        return jobs

    def moto_job(self, job_id: str) -> Any:
        """moto's ``FakeTrainingJob``; its attributes become the DescribeTrainingJob fields."""
        return self.moto_jobs()[job_name_for(job_id)]

    def set_state(self, job_id: str, status: str, secondary: str | None, **fields: Any) -> None:
        job = self.moto_job(job_id)
        job.training_job_status = status
        job.secondary_status = secondary
        for key, value in fields.items():
            setattr(job, key, value)

    def log(self, job_id: str, lines: list[str], *, stream: str = "algo-1-1763900000") -> None:
        """Append lines to the job's CloudWatch log stream, as the container's stdout would."""
        logs = self.backend.logs
        if not self._log_group:
            logs.create_log_group(logGroupName=LOG_GROUP)
            self._log_group = True
        name = f"{job_name_for(job_id)}/{stream}"
        if not logs.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=name)["logStreams"]:
            logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=name)
        now = int(time.time() * 1000)
        logs.put_log_events(
            logGroupName=LOG_GROUP,
            logStreamName=name,
            logEvents=[{"timestamp": now + i, "message": line} for i, line in enumerate(lines)],
        )

    def model_key(self, job_id: str) -> str:
        """Where SageMaker leaves ``/opt/ml/model`` as an archive: ``{S3OutputPath}/{name}/output/``."""
        return f"{TENANT}/jobs/{job_id}/output/{job_name_for(job_id)}/output/model.tar.gz"

    def put_model(self, job_id: str, files: dict[str, bytes]) -> str:
        key = self.model_key(job_id)
        self.store.put_bytes(key, tar_gz(files))
        return key

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(info.key for info in self.store.list(prefix))


def leftover_scratch(work_dir: Path) -> list[Path]:
    """Files under ``work_dir`` other than the live process's scratch lease (which it keeps while alive)."""
    return [p for p in work_dir.rglob("*") if p.is_file() and p.name != ".lease"]
