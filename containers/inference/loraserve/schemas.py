"""Request and response bodies of ``POST /invocations`` (pydantic v2, torch-free)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from loraserve.config import valid_adapter_id

MAX_NEW_TOKENS_LIMIT = 2048
MAX_STOP_STRINGS = 16

_INPUTS_HELP = (
    "inputs must be a string, a list of strings, a list of chat messages "
    "[{role, content}], or a list whose items are strings or such message lists"
)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str = Field(min_length=1, max_length=64)
    content: str


# One prompt: plain text, or a conversation rendered with the tokenizer's chat template.
Prompt = str | list[ChatMessage]


class GenerationParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(default=64, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    temperature: float = Field(default=0.0, ge=0.0, le=10.0, description="0 = greedy decoding")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, description="0 or null = no top-k filter")
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOP_STRINGS)
    seed: int | None = Field(default=None, ge=0, lt=2**63)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        return value

    @field_validator("stop")
    @classmethod
    def _stop_nonempty(cls, value: list[str]) -> list[str]:
        if any(s == "" for s in value):
            raise ValueError("stop strings must not be empty")
        return value


def _message(item: Any, where: str) -> ChatMessage:
    if not isinstance(item, dict):
        raise ValueError(f"{_INPUTS_HELP}; {where} is a {type(item).__name__}")
    try:
        return ChatMessage.model_validate(item)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}" for err in exc.errors()
        )
        raise ValueError(f"{where} is not a chat message {{role, content}}: {detail}") from None


def _conversation(items: list[Any], where: str) -> list[ChatMessage]:
    if not items:
        raise ValueError(f"{where} is an empty conversation")
    return [_message(m, f"{where}[{i}]") for i, m in enumerate(items)]


def normalise_inputs(value: Any) -> list[Prompt]:
    """Turn every accepted shape of ``inputs`` into a list of prompts."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ValueError(f"{_INPUTS_HELP}; got {type(value).__name__}")
    if not value:
        raise ValueError("inputs must not be empty")
    if all(isinstance(v, str) for v in value):
        return list(value)
    if all(isinstance(v, dict) for v in value):
        return [_conversation(value, "inputs")]
    if all(isinstance(v, str | list) for v in value):
        return [v if isinstance(v, str) else _conversation(v, f"inputs[{i}]") for i, v in enumerate(value)]
    raise ValueError(f"{_INPUTS_HELP}; got a list mixing {sorted({type(v).__name__ for v in value})}")


class InvocationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[Prompt] = Field(description=_INPUTS_HELP)
    adapter: str | None = Field(default=None, description="adapter id (e.g. adp_abc123); null = base model")
    parameters: GenerationParameters = Field(default_factory=GenerationParameters)
    stream: bool = Field(
        default=False, description="answer with Server-Sent Events (token deltas, then done); one input only"
    )
    deadline_s: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="seconds until the request ends with what it has; default and cap: the server's setting",
    )

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> list[Prompt]:
        return normalise_inputs(value)

    @field_validator("adapter")
    @classmethod
    def _adapter(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not valid_adapter_id(value):
            raise ValueError("adapter must be 1-128 letters, digits, '_' or '-' (e.g. adp_abc123)")
        return value

    @field_validator("parameters", mode="before")
    @classmethod
    def _parameters(cls, value: Any) -> Any:
        return {} if value is None else value


class Output(BaseModel):
    generated_text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length", "deadline"]


class InvocationResponse(BaseModel):
    outputs: list[Output]
    adapter: str | None
    latency_ms: float


class ErrorBody(BaseModel):
    code: str
    message: str


def describe_validation_error(exc: ValidationError) -> str:
    """One readable line: ``parameters.max_new_tokens: Input should be less than or equal to 2048``."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
