"""A real Fastuner server (uvicorn on a loopback port, in a thread of the test process) driven by
the real ``openai`` package: shared by every test of the OpenAI-compatible ``/v1`` routes.

Fixtures
--------
``openai_server`` (session)  the running server: ``url``, ``app`` (its ``app.state.ctx``),
                             ``new_key()`` (a key of a fresh tenant), ``client(key)`` (an ``OpenAI``)
``tenant_key``               a key of a fresh tenant (lists start empty)
``openai_client``            an ``OpenAI`` client on ``{url}/v1`` with ``tenant_key``
``tiny_model`` (session)     the tiny random Llama folder, under the server's model roots
``finetuned`` (session)      a job trained once through ``/v1`` on the tiny model (status
                             ``succeeded``): ``client``, ``key``, ``file_id``, ``job``, ``adapter_id``

The server runs the local backend (training subprocesses) with the reconciler every 0.5 s, so a
job started here really trains and its adapter is registered.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

openai = pytest.importorskip("openai")

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "uppercase.jsonl"
STARTUP_TIMEOUT_S = 60.0
JOB_DEADLINE_S = 420.0
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class OpenAIServer:
    url: str  # http://127.0.0.1:PORT (the OpenAI base URL is url + "/v1")
    app: FastAPI
    home: Path
    key: str  # the default tenant's key

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def new_key(self, tenant: str | None = None) -> str:
        """A key of ``tenant`` (default: a fresh tenant of its own)."""
        tenant = tenant or "t-" + uuid.uuid4().hex[:12]
        return str(self.app.state.ctx.auth.create_key(tenant, "test").secret)

    def client(self, key: str | None = None, **kw: Any) -> Any:
        """An ``openai.OpenAI`` pointed at this server (no retries: tests see every answer)."""
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 60.0)
        return openai.OpenAI(base_url=self.base_url, api_key=key or self.key, **kw)


@pytest.fixture(scope="session")
def openai_model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("openai-models")


@pytest.fixture(scope="session")
def openai_server(
    tmp_path_factory: pytest.TempPathFactory, openai_model_root: Path
) -> Iterator[OpenAIServer]:
    from api.app import create_app
    from api.server import uvicorn_options
    from api.settings import Settings

    home = tmp_path_factory.mktemp("openai-server") / "home"
    settings = Settings(
        home=home,
        log_json=False,
        log_level="WARNING",
        reconcile_interval_seconds=0.5,
        model_roots=[openai_model_root],
        rate_limit="",
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        access_log=False,
        lifespan="on",
        **uvicorn_options(settings),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="openai-test-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server failed to start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield OpenAIServer(f"http://127.0.0.1:{port}", app, home, app.state.local_api_key)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def tenant_key(openai_server: OpenAIServer) -> str:
    return openai_server.new_key()


@pytest.fixture
def openai_client(openai_server: OpenAIServer, tenant_key: str) -> Any:
    with openai_server.client(tenant_key) as client:
        yield client


@pytest.fixture(scope="session")
def tiny_model(openai_model_root: Path) -> Path:
    """The tiny random Llama + locally trained tokenizer (the same builder as tests/e2e)."""
    pytest.importorskip("torch")
    from scu.tiny import build_tiny_model

    path = openai_model_root / "tiny-llama"
    build_tiny_model(path)
    return path


def wait_for_job(
    client: Any, job_id: str, until: Callable[[Any], bool] = lambda j: j.status in TERMINAL
) -> Any:
    """Poll ``fine_tuning.jobs.retrieve`` until ``until(job)`` (default: a terminal status)."""
    deadline = time.monotonic() + JOB_DEADLINE_S
    job = client.fine_tuning.jobs.retrieve(job_id)
    while not until(job):
        # Ended for good: our own status is final (OpenAI's "cancelled" starts while we cancel).
        ended = getattr(job, "fastuner", {}).get("status") in ("completed", "failed", "cancelled")
        if ended or time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} never reached the expected state: {job}")
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job_id)
    return job


def upload_sample(client: Any, path: Path = SAMPLE) -> Any:
    with path.open("rb") as fh:
        return client.files.create(file=(path.name, fh, "application/jsonl"), purpose="fine-tune")


@dataclass
class FineTuned:
    client: Any  # openai.OpenAI of the tenant that owns the job
    key: str
    file_id: str
    job: Any  # the succeeded openai FineTuningJob
    adapter_id: str  # = job.fine_tuned_model


@pytest.fixture(scope="session")
def finetuned(openai_server: OpenAIServer, tiny_model: Path) -> Iterator[FineTuned]:
    """One job trained through /v1 on the tiny model, shared by the session (training takes ~30 s)."""
    key = openai_server.new_key()
    with openai_server.client(key) as client:
        file = upload_sample(client)
        job = client.fine_tuning.jobs.create(
            training_file=file.id,
            model=str(tiny_model),
            hyperparameters={"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": 1.0},
            extra_body={"fastuner": {"max_steps": 8, "hyperparameters": {"log_every": 2}}},
        )
        done = wait_for_job(client, job.id)
        assert done.status == "succeeded", done
        yield FineTuned(client, key, file.id, done, str(done.fine_tuned_model))
