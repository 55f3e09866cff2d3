"""Deployments (inference endpoints serving adapters), inference requests and the janitor's report."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.domain import userjson
from api.domain.enums import DeploymentStatus
from api.domain.text import RequestBody

MAX_TTL_SECONDS = 30 * 86400


class DeploymentRequest(RequestBody):
    """``POST /v0/deployments``: serve one or more adapters of the same base model."""

    model_config = ConfigDict(extra="forbid")

    adapter_ids: Annotated[list[str], Field(min_length=1, max_length=64)]
    instance_type: str | None = None
    instance_count: Annotated[int, Field(ge=1, le=16)] = 1
    ttl_seconds: Annotated[int | None, Field(ge=1, le=MAX_TTL_SECONDS)] = 3600
    max_lifetime_seconds: Annotated[int | None, Field(ge=1, le=MAX_TTL_SECONDS)] = None

    @model_validator(mode="after")
    def _unique(self) -> DeploymentRequest:
        if len(set(self.adapter_ids)) != len(self.adapter_ids):
            raise ValueError("adapter_ids must not repeat")
        return self


class Deployment(BaseModel):
    id: str
    adapter_ids: list[str]
    base_model: str
    backend: str
    endpoint_name: str | None
    instance_type: str
    instance_count: int
    hourly_price_usd: float | None
    status: DeploymentStatus
    failure_reason: str | None
    ttl_seconds: int | None
    max_lifetime_seconds: int | None
    created_at: datetime
    in_service_at: datetime | None
    last_used_at: datetime | None
    deleted_at: datetime | None
    deleted_reason: str | None
    teardown_at: datetime | None = Field(None, description="when the janitor will delete it if left idle")


class GenerationParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: Annotated[int, Field(ge=1, le=2048)] = 64
    temperature: Annotated[float, Field(ge=0, le=5)] = 0.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    stop: Annotated[list[str], Field(max_length=16)] = []
    seed: int | None = None


ChatMessage = dict[str, str]
Inputs = str | list[ChatMessage] | list[str] | list[list[ChatMessage]]


def as_user_turn(prompt: Inputs, raw: bool = False) -> Inputs:
    """A prompt string as the one-user-turn conversation an adapter trained here learnt to answer
    (its pair or chat records were rendered as conversations); ``raw`` or anything else: as it is."""
    return prompt if raw or not isinstance(prompt, str) else [{"role": "user", "content": prompt}]


class InferenceRequest(RequestBody):
    """``POST /v0/inference``: name a deployment, or an adapter served by one of yours."""

    model_config = ConfigDict(extra="forbid")

    deployment_id: str | None = None
    adapter_id: str | None = None
    inputs: Inputs
    parameters: GenerationParameters = GenerationParameters()
    stream: bool = Field(
        False,
        description="answer Server-Sent Events: `token` events ({text}) as the text is generated, "
        "then one `done` event (the InferenceResponse) or one `error` event ({code, message, "
        "request_id}); one prompt per request",
    )

    @model_validator(mode="after")
    def _target(self) -> InferenceRequest:
        if not self.deployment_id and not self.adapter_id:
            raise ValueError("give deployment_id or adapter_id")
        if self.stream and prompt_count(self.inputs) != 1:
            raise ValueError("stream: true takes one prompt (a string or one conversation)")
        return self


def prompt_count(inputs: Inputs) -> int:
    """How many prompts ``inputs`` holds: a string or a list of messages is one."""
    if isinstance(inputs, str):
        return 1
    if inputs and all(isinstance(item, dict) for item in inputs):
        return 1
    return len(inputs)


class InferenceToken(BaseModel):
    """``event: token`` of a streamed ``POST /v0/inference``: the next piece of generated text
    (the pieces, concatenated, are the ``generated_text`` of the final ``done`` event)."""

    text: str


class InferenceStreamError(BaseModel):
    """``event: error`` of a streamed ``POST /v0/inference``: generation failed after the stream
    opened (errors before it are ordinary HTTP errors); the stream ends after it."""

    code: str
    message: str
    request_id: str | None = None


class GenerationOutput(BaseModel):
    generated_text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"] | str


class InferenceResponse(BaseModel):
    deployment_id: str
    adapter_id: str | None
    outputs: list[GenerationOutput]
    latency_ms: float


class JanitorAction(BaseModel):
    deployment_id: str | None
    endpoint_name: str
    reason: str
    hourly_price_usd: float | None
    done: bool
    error: str | None = None


class JanitorReport(BaseModel):
    dry_run: bool
    actions: list[JanitorAction]
    hourly_savings_usd: float
    details: dict[str, Any] = {}


BATCH_INPUT_KEYS = ("messages", "input", "prompt", "inputs", "instruction")


def parse_batch_line(line: str) -> str | list[ChatMessage]:
    """One line of a batch file: a plain prompt, a JSON string, or an object with one of
    ``messages`` / ``input`` / ``prompt`` / ``inputs`` / ``instruction``. Raises ValueError."""
    try:
        obj = userjson.loads(line)
    except userjson.JSONDepthError as exc:
        raise ValueError(f"invalid line: {exc}") from None
    except ValueError:
        return line.strip()
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        for key in BATCH_INPUT_KEYS:
            value = obj.get(key)
            if isinstance(value, str) or (
                isinstance(value, list) and all(isinstance(m, dict) for m in value)
            ):
                return value
    raise ValueError("expected a prompt string or an object with input, prompt or messages")
