"""Issue 6: schemathesis against the app's own OpenAPI schema, in process: not one server error
(5xx) in at least ``MIN_REQUESTS`` generated requests, on SQLite and on PostgreSQL.

The app runs as production builds it on AWS (sagemaker backend, S3 store) under moto, so nothing
trains or serves for real however far a request gets; moto plays SageMaker as it behaves (a new
training job starts InProgress; InvokeEndpoint answers as our inference container does, refusing
what its own request model refuses). Seeded first, through the API: a dataset, a job that completed
with an adapter, and a deployment of it in service.

Per operation, two deterministic phases:

* coverage: schemathesis' boundary cases (positive and negative: edge values, missing and extra
  fields, wrong types, unexpected methods and content types), once as generated and once aimed at
  the seeded objects wherever the case names one;
* fuzzing: Hypothesis-generated cases, positive and negative (``derandomize``, no example
  database), half of them aimed at the seeded objects.

Every request carries the bootstrap API key (test_auth.py covers requests without one). An ASGI
wrapper records every response the app sends: at least ``MIN_REQUESTS``, one per generated request,
none 5xx; each one passes schemathesis' checks against what the schema documents (status code,
content type, body schema), and every operation on an object reached a seeded one.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from loraserve.schemas import InvocationRequest, describe_validation_error
from moto.core.exceptions import JsonRESTError
from moto.sagemaker.models import FakeTrainingJob
from moto.sagemakerruntime.models import SageMakerRuntimeBackend
from pydantic import ValidationError
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.backends.sagemaker_endpoints import SageMakerEndpoints
from tests.e2e.sagemaker_support import SAMPLE, SMOL, SageMakerEnv, mocked_aws, sagemaker_settings

pytestmark = pytest.mark.slow

MIN_REQUESTS = 1000
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
# Hypothesis examples per operation and mode (operations with little to vary run out sooner).
EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 12}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
PROMPTS = b'Shout this: amber lotus\n{"inputs": "and this"}\n[{"role": "user", "content": "hi"}]\n'
ADAPTER_FILES = {
    "adapter_config.json": json.dumps(
        {"peft_type": "LORA", "r": 8, "base_model_name_or_path": SMOL}
    ).encode(),
    "adapter_model.safetensors": b"\x00" * 64,
    "eval.json": json.dumps({"tokens": 10, "base": {"bpt": 4.0}, "adapter": {"bpt": 3.0}}).encode(),
}


class ResponseLog:
    """ASGI wrapper around the app: records the status of every HTTP response it sends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.responses: list[tuple[str, str, int]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.responses.append((scope["method"], scope["path"], int(message["status"])))
            await send(message)

        await self.app(scope, receive, recording)


@dataclass
class Ledger:
    """What the run sent, per operation and phase, and every check that failed."""

    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Seeded:
    """Real objects of the caller's tenant; generated cases are pointed at them where they name one."""

    dataset_id: str
    job_id: str
    adapter_id: str
    deployment_id: str

    @property
    def ids(self) -> dict[str, str]:
        return {
            "dataset_id": self.dataset_id,
            "job_id": self.job_id,
            "adapter_id": self.adapter_id,
            "deployment_id": self.deployment_id,
            "file_id": self.dataset_id,  # /v1 (OpenAI-compatible): a file is a dataset
            "model_id": self.adapter_id,  # and a fine-tuned model an adapter
            "base_model": SMOL,  # /v0/models/{base_model}: an allow-listed hub id
        }


# -- SageMaker's part ---------------------------------------------------------------------------
class ModelError(JsonRESTError):
    """SageMaker's answer when the container answered an error: 424 with its status and body."""

    code = 424

    def __init__(self, status: int, body: str) -> None:
        message = f'Received client error ({status}) from primary with message "{body}".'
        super().__init__("ModelError", message)
        self.description = json.dumps(
            {
                "__type": "ModelError",
                "message": message,
                "OriginalStatusCode": status,
                "OriginalMessage": body,
            }
        )


def container_invoke(_: Any, endpoint_name: str, unique_repr: bytes) -> tuple[str, str, str, str]:
    """moto's InvokeEndpoint answering as our inference container does (with its request model)."""
    body = json.loads(base64.b64decode(unique_repr))["Body"]
    try:
        request = InvocationRequest.model_validate(json.loads(body))
    except ValidationError as exc:
        error = {"code": "invalid_request", "message": describe_validation_error(exc)}
        raise ModelError(422, json.dumps(error)) from None
    outputs = [
        {"generated_text": "OK", "prompt_tokens": 3, "completion_tokens": 1, "finish_reason": "stop"}
        for _ in request.inputs
    ]
    answer = {"outputs": outputs, "adapter": request.adapter, "latency_ms": 1.0}
    return json.dumps(answer), "application/json", "AllTraffic", ""


def container_invoke_stream(
    self: SageMakerEndpoints, endpoint_name: str, state: dict[str, Any], payload: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """moto has no InvokeEndpointWithResponseStream: the container's SSE contract from its plain
    answer (through moto's InvokeEndpoint above, so refusals map exactly as for ``invoke``)."""
    answer = self.invoke(endpoint_name, state, payload)
    [output] = answer["outputs"]
    yield {"type": "token", "text": output["generated_text"]}
    yield {"type": "done", "output": output, "adapter_id": answer.get("adapter"), "latency_ms": 1.0}


def starting_training_job(original: Callable[..., None]) -> Callable[..., None]:
    """moto's training jobs are born Completed; a real one starts InProgress / Starting."""

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.training_job_status, self.secondary_status = "InProgress", "Starting"

    return init


def seed(env: SageMakerEnv) -> Seeded:
    """A dataset, a job that completed with an adapter, and a deployment of it in service."""
    ds = env.upload_dataset()
    ft = env.started(ds["id"])["id"]
    env.log(ft, ["step=1 loss=2.5", "a line of output"])
    env.put_model(ft, ADAPTER_FILES)
    env.set_state(ft, "Completed", "Completed", training_end_time=datetime.now(UTC))
    report = env.reconcile()
    assert report["errors"] == [] and len(report["adapters_registered"]) == 1, report
    adapter_id = report["adapters_registered"][0]
    resp = env.client.post("/v0/deployments", json={"adapter_ids": [adapter_id]})
    assert resp.status_code == 201, resp.text
    env.app.state.ctx.deployments.sync_once()
    dep = env.client.get(f"/v0/deployments/{resp.json()['id']}").json()
    assert dep["status"] == "in_service", dep
    return Seeded(dataset_id=ds["id"], job_id=ft, adapter_id=adapter_id, deployment_id=dep["id"])


# -- the run ------------------------------------------------------------------------------------
def aim(case: schemathesis.Case, seeded: Seeded) -> bool:
    """Point ``case`` at the seeded objects wherever it names one, with a usable base model and
    upload, so that it gets past the lookups into what runs behind them; False if nothing to aim."""
    aimed = False
    for name in list(case.path_parameters or {}):
        if name in seeded.ids:
            case.path_parameters[name] = seeded.ids[name]
            aimed = True
    body = case.body
    if not isinstance(body, dict):
        return aimed
    for name in ("dataset_id", "adapter_id", "deployment_id"):
        if name in body:
            body[name] = seeded.ids[name]
            aimed = True
    if isinstance(body.get("adapter_ids"), list) and body["adapter_ids"]:
        body["adapter_ids"][0] = seeded.adapter_id
        aimed = True
    if "base_model" in body:
        body["base_model"] = SMOL
    if "training_file" in body:  # /v1/fine_tuning/jobs
        body["training_file"], body["model"] = seeded.dataset_id, SMOL
        aimed = True
    if "file" in body:
        body["file"] = SAMPLE.read_bytes() if case.path.startswith(("/v0/datasets", "/v1/files")) else PROMPTS
        aimed = True
    return aimed


class Fuzzer:
    def __init__(self, seeded: Seeded, auth: dict[str, str]) -> None:
        self.seeded = seeded
        self.auth = auth
        self.ledger = Ledger()

    def send(self, case: schemathesis.Case, phase: str) -> None:
        # Negative cases included: schemathesis would drop the header to test the security scheme.
        case.headers = {**(case.headers or {}), **self.auth}
        label = case.operation.label
        self.ledger.calls[(label, phase)] += 1
        try:
            response = case.call()
        except Exception as exc:  # the app raised through the transport (after sending a 500)
            self.ledger.failures.append(f"{label} [{phase}]: {type(exc).__name__}: {exc}")
            return
        self.ledger.statuses.setdefault(label, Counter())[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            self.ledger.failures.append(f"{label} [{phase}]: {group}")

    def coverage(self, schema: Any, operation: Any) -> None:
        config = schema.config.generation_for(operation=operation, phase="coverage")
        for case in schema.iter_coverage_cases(
            operation, generation_modes=list(MODES), generation_config=config
        ):
            self.send(case, "coverage")
        for case in schema.iter_coverage_cases(
            operation, generation_modes=list(MODES), generation_config=config
        ):
            if aim(case, self.seeded):
                self.send(case, "coverage, aimed")

    def fuzz(self, operation: Any, mode: GenerationMode) -> None:
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode), aimed=st.booleans())
        @hypothesis.settings(
            max_examples=EXAMPLES[mode],
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case, aimed: bool) -> None:
            if aimed:
                aim(case, self.seeded)
            self.send(case, f"fuzzing, {mode.value}")

        with contextlib.suppress(Unsatisfiable):  # this operation has nothing to break in this mode
            run()


@pytest.fixture
def fuzz_env(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SageMakerEnv]:
    monkeypatch.setattr(SageMakerRuntimeBackend, "invoke_endpoint", container_invoke)
    monkeypatch.setattr(SageMakerEndpoints, "invoke_stream", container_invoke_stream)
    monkeypatch.setattr(FakeTrainingJob, "__init__", starting_training_job(FakeTrainingJob.__init__))
    with mocked_aws():
        settings = sagemaker_settings(
            tmp_path / "home",
            db_url,
            default_inference_instance_type="ml.g4dn.xlarge",
            # The fuzzer should keep reaching the launch paths, not stop at a quota.
            default_max_concurrent_jobs=100_000,
            default_max_endpoints=100_000,
        )
        yield SageMakerEnv(settings)


def test_openapi_fuzz_has_no_server_errors(fuzz_env: SageMakerEnv) -> None:
    started = time.perf_counter()
    fuzzer = Fuzzer(seed(fuzz_env), {"Authorization": fuzz_env.client.headers["Authorization"]})
    log = ResponseLog(fuzz_env.app)
    schema = schemathesis.openapi.from_asgi("/openapi.json", log)
    log.responses.clear()
    # Operations that remove a seeded object run last, so that the others find it alive.
    operations = sorted(
        (result.ok() for result in schema.get_all_operations()), key=lambda op: op.method == "delete"
    )
    try:
        for operation in operations:
            fuzzer.coverage(schema, operation)
            for mode in MODES:
                fuzzer.fuzz(operation, mode)
    finally:
        schemathesis_asgi.shutdown_lifespans()
    elapsed = time.perf_counter() - started

    ledger = fuzzer.ledger
    statuses = Counter(status for _, _, status in log.responses)
    print(
        f"\n{len(log.responses)} responses to {sum(ledger.calls.values())} generated requests over "
        f"{len(operations)} operations in {elapsed:.1f}s; statuses {dict(sorted(statuses.items()))}"
    )
    for label in sorted({label for label, _ in ledger.calls}):
        phases = ", ".join(f"{phase} {n}" for (op, phase), n in sorted(ledger.calls.items()) if op == label)
        print(f"  {label}: {phases}; statuses {dict(sorted(ledger.statuses.get(label, {}).items()))}")
    server_errors = [entry for entry in log.responses if entry[2] >= 500]
    assert not server_errors, server_errors
    assert not ledger.failures, "\n\n".join(ledger.failures)
    assert len(log.responses) >= MIN_REQUESTS
    assert len(log.responses) == sum(ledger.calls.values())  # one response to each generated request
    assert set(ledger.statuses) == {op.label for op in operations}
    # Every operation on an object got past the lookup of a seeded one at least once (a 409 is an
    # answer about the object's state: a completed job cannot be cancelled).
    unreached = [
        op.label
        for op in operations
        if "{" in op.path and not any(s < 300 or s == 409 for s in ledger.statuses[op.label])
    ]
    assert not unreached, unreached
