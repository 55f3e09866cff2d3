"""``/v1/chat/completions`` and ``/v1/completions`` driven by the real ``openai`` package against a
real local deployment (an inference server subprocess) of an adapter trained on the tiny model."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from api.domain.deployments import GenerationOutput, GenerationParameters, InferenceRequest, InferenceResponse
from api.domain.enums import DeploymentStatus
from api.domain.errors import Conflict, NotFound
from api.domain.openai_chat import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelNotDeployed,
    ModelNotFound,
    UnsupportedParameter,
)
from api.services.openai_chat import OpenAIChatService, Target
from tests.openai.conftest import FineTuned, OpenAIServer

openai = pytest.importorskip("openai")

slow = pytest.mark.slow  # the tests on a real deployment (the unit tests at the end are fast)
DEADLINE_S = 300.0
MESSAGES = [{"role": "user", "content": "Shout this: amber lotus"}]


@dataclass
class Deployed:
    server: OpenAIServer
    key: str
    http: httpx.Client  # /v0 with the tenant's key
    adapter_id: str
    deployment_id: str

    def client(self, key: str | None = None) -> Any:
        return self.server.client(key or self.key)

    def ensure_deployed(self) -> None:
        """In service again if a test (the 409 one) tore the deployment down."""
        if self.http.get(f"/v0/deployments/{self.deployment_id}").json()["status"] == "in_service":
            return
        self.deployment_id = _deploy(self.http, self.adapter_id)


def _until(fetch: Any, done: Any, what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    obj = fetch()
    while not done(obj):
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {obj}"
        time.sleep(0.25)
        obj = fetch()
    return obj


def _deploy(http: httpx.Client, adapter_id: str) -> str:
    resp = http.post("/v0/deployments", json={"adapter_ids": [adapter_id], "ttl_seconds": 1800})
    assert resp.status_code == 201, resp.text
    dep = _until(
        lambda: http.get(f"/v0/deployments/{resp.json()['id']}").json(),
        lambda d: d["status"] != "creating",
        "the deployment",
    )
    assert dep["status"] == "in_service", dep
    return str(dep["id"])


@pytest.fixture(scope="module")
def deployed(openai_server: OpenAIServer, finetuned: FineTuned) -> Iterator[Deployed]:
    """The model of the job fine-tuned through /v1 (``finetuned``), deployed locally: the chain an
    OpenAI client runs (files → fine_tuning.jobs → deploy → chat.completions)."""
    key = finetuned.key
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=openai_server.url, headers=headers, timeout=60) as http:
        dep = Deployed(openai_server, key, http, finetuned.adapter_id, "")
        dep.deployment_id = _deploy(http, dep.adapter_id)
        try:
            yield dep
        finally:
            http.delete(f"/v0/deployments/{dep.deployment_id}")


def _chat(client: Any, deployed: Deployed, **kw: Any) -> Any:
    kw.setdefault("model", deployed.adapter_id)
    kw.setdefault("messages", MESSAGES)
    kw.setdefault("max_tokens", 8)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(**kw)


@slow
def test_chat_completion_and_its_stream_agree(deployed: Deployed) -> None:
    deployed.ensure_deployed()
    with deployed.client() as client:
        resp = _chat(client, deployed, seed=7)
        assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
        assert resp.model == deployed.adapter_id and resp.system_fingerprint == deployed.deployment_id
        [choice] = resp.choices
        assert choice.index == 0 and choice.message.role == "assistant"
        assert choice.finish_reason in ("stop", "length")
        text = choice.message.content
        assert text

        # The same counts /v0/inference reports for the same request.
        v0 = deployed.http.post(
            "/v0/inference",
            json={
                "adapter_id": deployed.adapter_id,
                "inputs": MESSAGES,
                "parameters": {"max_new_tokens": 8, "temperature": 0, "seed": 7},
            },
        )
        assert v0.status_code == 200, v0.text
        out = v0.json()["outputs"][0]
        assert out["generated_text"] == text
        usage = resp.usage
        assert (usage.prompt_tokens, usage.completion_tokens) == (
            out["prompt_tokens"],
            out["completion_tokens"],
        )
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

        stream = _chat(client, deployed, seed=7, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
        assert chunks[0].choices[0].delta.role == "assistant"
        deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
        assert "".join(deltas) == text
        finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finals == [choice.finish_reason]
        assert chunks[-1].choices == [] and chunks[-1].usage == usage


@slow
def test_v0_inference_stream_matches_the_plain_call(deployed: Deployed) -> None:
    """Token streaming end to end (API → local inference server): the pieces of a greedy streamed
    ``POST /v0/inference`` join to the text of the plain call, and arrive as several events."""
    from fastuner_sdk._sse import iter_sse

    deployed.ensure_deployed()
    body = {"adapter_id": deployed.adapter_id, "inputs": MESSAGES, "parameters": {"max_new_tokens": 8}}
    plain = deployed.http.post("/v0/inference", json=body)
    assert plain.status_code == 200, plain.text
    [out] = plain.json()["outputs"]
    with deployed.http.stream("POST", "/v0/inference", json={**body, "stream": True}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = [(e.event, json.loads(e.data)) for e in iter_sse(resp.iter_lines())]
    tokens = [data["text"] for kind, data in events if kind == "token"]
    kind, done = events[-1]
    assert kind == "done", events
    assert "".join(tokens) == done["outputs"][0]["generated_text"] == out["generated_text"]
    if out["completion_tokens"] > 1 and out["generated_text"].strip():
        assert len(tokens) > 1, "the text came as one piece: the server did not stream"


@slow
def test_stream_wire_format(deployed: Deployed) -> None:
    """OpenAI's SSE framing on the wire: ``data: {json}`` events and a final ``data: [DONE]``."""
    deployed.ensure_deployed()
    body = {
        "model": deployed.adapter_id,
        "messages": MESSAGES,
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
        "user": "ignored",
        "some_future_field": {"x": 1},
    }
    with deployed.http.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read().decode()
    events = [e for e in raw.split("\n\n") if e.strip() and not e.startswith(":")]
    assert all(e.startswith("data: ") for e in events), raw
    assert events[-1] == "data: [DONE]"


@slow
def test_completions_usage_and_prompt_lists(deployed: Deployed) -> None:
    deployed.ensure_deployed()
    prompts = ["Shout this: amber lotus", "Shout this: ember"]
    with deployed.client() as client:
        singles = [
            client.completions.create(model=deployed.adapter_id, prompt=p, max_tokens=6, temperature=0)
            for p in prompts
        ]
        both = client.completions.create(
            model=deployed.adapter_id, prompt=prompts, max_tokens=6, temperature=0
        )
        assert both.object == "text_completion" and both.id.startswith("cmpl-")
        assert [c.index for c in both.choices] == [0, 1]
        assert [c.text for c in both.choices] == [s.choices[0].text for s in singles]
        assert both.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
        assert both.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)

        streamed = client.completions.create(
            model=deployed.adapter_id, prompt=prompts[0], max_tokens=6, temperature=0, stream=True
        )
        chunks = list(streamed)
        assert all(c.object == "text_completion" for c in chunks)
        assert "".join(c.choices[0].text for c in chunks) == singles[0].choices[0].text
        assert chunks[-1].choices[0].finish_reason == singles[0].choices[0].finish_reason


@slow
def test_n_choices(deployed: Deployed) -> None:
    deployed.ensure_deployed()
    with deployed.client() as client:
        greedy = _chat(client, deployed, n=2)
        assert [c.index for c in greedy.choices] == [0, 1]
        assert greedy.choices[0].message.content == greedy.choices[1].message.content
        single = _chat(client, deployed).usage
        assert greedy.usage.completion_tokens == 2 * single.completion_tokens
        assert greedy.usage.prompt_tokens == single.prompt_tokens  # the prompt is counted once

        sampled = [_chat(client, deployed, n=2, temperature=1.0, seed=123) for _ in range(2)]
        texts = [[c.message.content for c in s.choices] for s in sampled]
        assert texts[0] == texts[1]  # reproducible with a seed
        assert texts[0][0] != texts[0][1]  # yet the choices differ (seed + index each)

        streamed = list(_chat(client, deployed, n=2, stream=True))
        for i in (0, 1):
            mine = [c.choices[0] for c in streamed if c.choices and c.choices[0].index == i]
            assert "".join(c.delta.content or "" for c in mine) == greedy.choices[i].message.content
            assert mine[-1].finish_reason == greedy.choices[i].finish_reason


@slow
def test_stop(deployed: Deployed) -> None:
    deployed.ensure_deployed()
    with deployed.client() as client:
        full = _chat(client, deployed, max_tokens=16).choices[0].message.content
        assert len(full) >= 4, full
        stop = full[2:4] if full[2:4].strip() else full[1:3]
        cut = full[: full.find(stop)]
        stopped = _chat(client, deployed, max_tokens=16, stop=stop).choices[0]
        assert stopped.message.content == cut and stopped.finish_reason == "stop"
        listed = _chat(client, deployed, max_tokens=16, stop=["\u2603never", stop]).choices[0]
        assert listed.message.content == cut


@slow
def test_message_shapes_and_the_base_model(deployed: Deployed, tiny_model: Path) -> None:
    """Text content parts are joined, ``developer`` is a system message, and ``model`` = the base
    model's name is served (adapters off) by a deployment of it."""
    deployed.ensure_deployed()
    with deployed.client() as client:
        plain = _chat(
            client,
            deployed,
            messages=[{"role": "system", "content": "Be loud."}, {"role": "user", "content": "a\nb"}],
        )
        parts = _chat(
            client,
            deployed,
            messages=[
                {"role": "developer", "content": [{"type": "text", "text": "Be loud."}]},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                    "name": "ignored",
                },
            ],
        )
        assert parts.choices[0].message.content == plain.choices[0].message.content
        base = _chat(client, deployed, model=str(tiny_model), max_tokens=12)
        adapted = _chat(client, deployed, max_tokens=12)
        assert base.model == str(tiny_model) and base.system_fingerprint == deployed.deployment_id
        assert base.choices[0].message.content != adapted.choices[0].message.content


@slow
def test_errors_after_the_stream_opened_are_error_events(deployed: Deployed) -> None:
    """A prompt over the model's context is refused by the inference server: a 400 without
    streaming; with streaming the stream is already open, so it is an error event (APIError)."""
    deployed.ensure_deployed()
    long = [{"role": "user", "content": "lotus " * 800}]
    with deployed.client() as client:
        with pytest.raises(openai.BadRequestError) as info:
            _chat(client, deployed, messages=long)
        assert "context" in info.value.message
        with pytest.raises(openai.APIError) as streamed:
            list(_chat(client, deployed, messages=long, stream=True))
        assert "context" in streamed.value.message


@slow
def test_bad_values_are_400_in_openai_shape(deployed: Deployed) -> None:
    deployed.ensure_deployed()
    with deployed.client() as client:
        for kw, param in [
            ({"temperature": 3}, "temperature"),
            ({"max_tokens": 100_000}, "max_tokens"),
            ({"n": 0}, "n"),
            ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
            ({"stop": [""]}, "stop"),
        ]:
            with pytest.raises(openai.BadRequestError) as info:
                _chat(client, deployed, **kw)
            assert info.value.status_code == 400
            body = info.value.body
            assert isinstance(body, dict) and body["type"] == "invalid_request_error", body
            assert (body["param"] or "").startswith(param), body
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=deployed.adapter_id, messages=[])


@slow
def test_other_tenants_and_unknown_models_are_404(deployed: Deployed) -> None:
    stranger = deployed.server.new_key()
    with deployed.client(stranger) as client:
        with pytest.raises(openai.NotFoundError) as info:
            _chat(client, deployed)
        assert info.value.code == "model_not_found" and deployed.adapter_id in info.value.message
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model=deployed.adapter_id, prompt="x", max_tokens=2)
    with deployed.client() as client, pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="adp_doesnotexist", messages=MESSAGES)


@slow
def test_undeployed_adapter_is_409_with_the_deploy_command(deployed: Deployed) -> None:
    """Tears the deployment down (later tests redeploy through ``ensure_deployed``)."""
    deployed.ensure_deployed()
    assert deployed.http.delete(f"/v0/deployments/{deployed.deployment_id}").status_code == 200
    with deployed.client() as client:
        for call in (
            lambda: _chat(client, deployed),
            lambda: _chat(client, deployed, stream=True),
            lambda: client.completions.create(model=deployed.adapter_id, prompt="x", max_tokens=2),
        ):
            with pytest.raises(openai.ConflictError) as info:
                call()
            assert info.value.status_code == 409 and info.value.code == "model_not_deployed"
            assert f"fastuner deployments create {deployed.adapter_id}" in info.value.message


# -- fast: request mapping and the choice layout, without a deployment ---------------------------
def test_parameters_follow_openai_defaults_and_fields() -> None:
    chat = ChatCompletionRequest.model_validate({"model": "adp_x", "messages": MESSAGES})
    assert chat.parameters() == GenerationParameters(max_new_tokens=512, temperature=1.0, top_p=1.0)
    legacy = CompletionRequest.model_validate({"model": "adp_x", "prompt": "hi"})
    assert legacy.parameters().max_new_tokens == 16 and legacy.prompts() == ["hi"]
    chat = ChatCompletionRequest.model_validate(
        {
            "model": "adp_x",
            "messages": MESSAGES,
            "max_tokens": 9,
            "max_completion_tokens": 5,
            "temperature": 0.7,
            "top_p": 0.9,
            "stop": "END",
            "seed": -1,
            "user": "u",
            "unknown": [1],
        }
    )
    assert chat.parameters() == GenerationParameters(
        max_new_tokens=5, temperature=0.7, top_p=0.9, stop=["END"], seed=(1 << 63) - 1
    )
    greedy = ChatCompletionRequest.model_validate({"model": "adp_x", "messages": MESSAGES, "top_p": 0})
    assert greedy.parameters().temperature == 0


@pytest.mark.parametrize(
    "extra",
    [
        {"tools": [{"type": "function"}]},
        {"logprobs": True},
        {"presence_penalty": 0.5},
        {"logit_bias": {"1": 2}},
        {"response_format": {"type": "json_object"}},
    ],
    ids=lambda e: next(iter(e)),
)
def test_unsupported_parameters_are_refused_by_name(extra: dict[str, Any]) -> None:
    req = ChatCompletionRequest.model_validate({"model": "adp_x", "messages": MESSAGES, **extra})
    with pytest.raises(UnsupportedParameter) as info:
        req.parameters()
    assert info.value.details == {"param": next(iter(extra))}
    neutral = {"presence_penalty": 0, "logprobs": False, "response_format": {"type": "text"}, "tools": []}
    ChatCompletionRequest.model_validate({"model": "adp_x", "messages": MESSAGES, **neutral}).parameters()


class FakeDeployments:
    """DeploymentService's surface the chat service uses: outputs name their prompt and seed."""

    def __init__(self, *, serving: bool = True, creating: bool = False) -> None:
        self.serving = serving
        self.creating = creating
        self.calls: list[InferenceRequest] = []

    def resolve_target(self, tenant_id: str, deployment_id: str | None, adapter_id: str | None) -> Any:
        if adapter_id != "adp_x":
            raise NotFound("adapter not found")
        if not self.serving:
            raise Conflict("no deployment in service serves it")
        return SimpleNamespace(id="dep_1")

    def list_page(self, tenant_id: str, **_: Any) -> tuple[list[Any], None]:
        status = DeploymentStatus.CREATING if self.creating else DeploymentStatus.IN_SERVICE
        return [SimpleNamespace(id="dep_2", base_model="base-1", adapter_ids=["adp_x"], status=status)], None

    def infer(self, tenant_id: str, req: InferenceRequest) -> InferenceResponse:
        self.resolve_target(tenant_id, req.deployment_id, req.adapter_id)
        self.calls.append(req)
        assert isinstance(req.inputs, list)
        outputs = [
            GenerationOutput(
                generated_text=f"{p}|{req.parameters.seed}",
                prompt_tokens=len(str(p)),
                completion_tokens=2,
                finish_reason="stop",
            )
            for p in req.inputs
        ]
        return InferenceResponse(
            deployment_id="dep_1", adapter_id=req.adapter_id, outputs=outputs, latency_ms=1
        )


def test_choices_are_laid_out_prompt_major_and_seeded_samples_differ() -> None:
    fake = FakeDeployments()
    service = OpenAIChatService(fake)  # type: ignore[arg-type]
    target = service.resolve("t", "adp_x")
    assert target == Target(adapter_id="adp_x", deployment_id="dep_1")
    greedy = service.generate("t", "adp_x", target, ["a", "bb"], 2, GenerationParameters(seed=5))
    assert [c.generated_text for c in greedy.choices] == ["a|5", "a|5", "bb|5", "bb|5"]
    assert len(fake.calls) == 1 and greedy.prompt_tokens == 3 and greedy.completion_tokens == 8
    sampled = service.generate(
        "t", "adp_x", target, ["a", "bb"], 2, GenerationParameters(temperature=1, seed=5)
    )
    assert [c.generated_text for c in sampled.choices] == ["a|5", "a|6", "bb|5", "bb|6"]
    assert len(fake.calls) == 3 and sampled.prompt_tokens == 3
    base = service.resolve("t", "base-1")  # a base model a deployment of yours serves
    assert base == Target(adapter_id=None, deployment_id="dep_2")


def test_unknown_undeployed_and_creating_models() -> None:
    with pytest.raises(ModelNotFound, match="`adp_other` does not exist"):
        OpenAIChatService(FakeDeployments()).resolve("t", "adp_other")  # type: ignore[arg-type]
    with pytest.raises(ModelNotDeployed, match="fastuner deployments create adp_x"):
        OpenAIChatService(FakeDeployments(serving=False)).resolve("t", "adp_x")  # type: ignore[arg-type]
    creating = OpenAIChatService(FakeDeployments(serving=False, creating=True))  # type: ignore[arg-type]
    with pytest.raises(ModelNotDeployed, match="dep_2 is still creating"):
        creating.resolve("t", "adp_x")
    gone = FakeDeployments()  # torn down between resolve() and the call
    service = OpenAIChatService(gone)  # type: ignore[arg-type]
    target = service.resolve("t", "adp_x")
    gone.serving = False
    with pytest.raises(ModelNotDeployed, match="fastuner deployments create adp_x"):
        service.generate("t", "adp_x", target, ["a"], 1, GenerationParameters())
