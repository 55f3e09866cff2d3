"""The ``sagemaker`` backend behind the real API, against moto (S3, SageMaker, CloudWatch Logs).

:class:`SageMakerEnv` builds the app exactly as production does (``create_app(settings)``: the
store and backend make their own boto3 clients) inside ``mock_aws``, and gives the tests the
handles they need to play SageMaker's part: move moto's in-process training job through its
states, write its CloudWatch log lines, upload its ``model.tar.gz``, inject AWS errors, and
record every request the backend sends.
"""

from __future__ import annotations

import copy
import io
import json
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import boto3
from botocore.awsrequest import AWSResponse, HTTPHeaders
from fastapi.testclient import TestClient
from moto import mock_aws
from moto.backends import get_backend

from api.app import create_app
from api.backends.sagemaker import LOG_GROUP, SageMakerBackend
from api.settings import Settings
from api.storage.s3 import S3Store
from tests.api.support import authorize, upload

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
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


def job_name_of(job_id: str) -> str:
    return "fastuner-" + job_id.replace("_", "-")


class Calls:
    """Request parameters of every SageMaker call the backend made, by operation, in order."""

    def __init__(self) -> None:
        self.params: dict[str, list[dict[str, Any]]] = {}

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.params.setdefault(model.name, []).append(copy.deepcopy(params))

    def of(self, operation: str) -> list[dict[str, Any]]:
        return self.params.get(operation, [])


class _Raw(io.BytesIO):
    def stream(self, **_: Any) -> Iterator[bytes]:
        data = self.read()
        if data:
            yield data


def aws_error(status: int, code: str, message: str) -> Callable[[Any], AWSResponse]:
    body = json.dumps({"__type": code, "message": message}).encode()

    def respond(request: Any) -> AWSResponse:
        headers = HTTPHeaders()
        headers["x-amzn-RequestId"] = "test"
        headers["Content-Type"] = "application/x-amz-json-1.1"
        return AWSResponse(request.url, status, headers, _Raw(body))

    return respond


def inject(
    client: Any, operation: str, responses: list[Callable[[Any], AWSResponse] | None]
) -> dict[str, int]:
    """Answer the first attempts of ``operation`` with ``responses`` (None: pass on to moto).

    Registered first, so botocore takes its response over moto's; the answered request is pointed
    at a host moto does not serve, so moto does not execute it too. Counts every attempt.
    """
    seen = {"attempts": 0}

    def handler(request: Any, **_: Any) -> AWSResponse | None:
        seen["attempts"] += 1
        index = seen["attempts"] - 1
        respond = responses[index] if index < len(responses) else None
        if respond is None:
            return None
        response = respond(request)
        request.url = "https://answered-by-test.invalid/"
        return response

    service = client.meta.service_model.service_id.hyphenize()
    client.meta.events.register_first(f"before-send.{service}.{operation}", handler)
    return seen


def make_tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class SageMakerEnv:
    """The app (sagemaker backend, S3 store) under a TestClient, plus SageMaker's side of things."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.client = authorize(TestClient(self.app))
        self.calls = Calls()
        # The backend's own clients: hooks and injected errors act on exactly what the API uses.
        self.backend.sagemaker.meta.events.register("before-parameter-build.sagemaker", self.calls)
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
        resp = upload(self.client, SAMPLE, name="upper")
        assert resp.status_code == 201, resp.text
        ds: dict[str, Any] = resp.json()
        assert ds["status"] == "ready"
        return ds

    def start(self, dataset_id: str, headers: dict[str, str] | None = None, **body: Any) -> Any:
        payload = {"dataset_id": dataset_id, "base_model": SMOL, "instance_type": "ml.g5.xlarge", **body}
        return self.client.post("/v0/finetune", json=payload, headers=headers or {})

    def started(self, dataset_id: str, **body: Any) -> dict[str, Any]:
        """Start a job and put it where SageMaker puts a new one: InProgress / Starting."""
        resp = self.start(dataset_id, **body)
        assert resp.status_code == 201, resp.text
        job: dict[str, Any] = resp.json()
        # moto's in-process job is born Completed; a real one starts InProgress.
        self.set_state(job["id"], "InProgress", "Starting", training_start_time=None, training_end_time=None)
        return job

    def reconcile(self) -> dict[str, Any]:
        resp = self.client.post("/v0/finetune/reconcile")
        assert resp.status_code == 200, resp.text
        report: dict[str, Any] = resp.json()
        return report

    def job(self, job_id: str) -> dict[str, Any]:
        resp = self.client.get(f"/v0/finetune/{job_id}")
        assert resp.status_code == 200, resp.text
        job: dict[str, Any] = resp.json()
        return job

    def events(self, job_id: str) -> list[dict[str, Any]]:
        resp = self.client.get(f"/v0/finetune/{job_id}/events")
        assert resp.status_code == 200, resp.text
        events: list[dict[str, Any]] = resp.json()
        return events

    def metrics(self, job_id: str, after: int = 0) -> list[dict[str, Any]]:
        resp = self.client.get(f"/v0/finetune/{job_id}/metrics", params={"after": after})
        assert resp.status_code == 200, resp.text
        points: list[dict[str, Any]] = resp.json()
        return points

    # -- SageMaker's side ---------------------------------------------------------------------
    @staticmethod
    def moto_jobs() -> dict[str, Any]:
        jobs: dict[str, Any] = get_backend("sagemaker")[ACCOUNT][REGION].training_jobs
        return jobs

    def moto_job(self, job_id: str) -> Any:
        """moto's ``FakeTrainingJob``; its attributes become the DescribeTrainingJob fields."""
        return self.moto_jobs()[job_name_of(job_id)]

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
        name = f"{job_name_of(job_id)}/{stream}"
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
        return f"{TENANT}/jobs/{job_id}/output/{job_name_of(job_id)}/output/model.tar.gz"

    def put_model(self, job_id: str, files: dict[str, bytes]) -> str:
        key = self.model_key(job_id)
        self.store.put_bytes(key, make_tar(files))
        return key

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(info.key for info in self.store.list(prefix))


def leftover_scratch(work_dir: Path) -> list[Path]:
    """Files under ``work_dir`` other than the live process's scratch lease (which it keeps while alive)."""
    return [p for p in work_dir.rglob("*") if p.is_file() and p.name != ".lease"]
