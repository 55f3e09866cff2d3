"""OpenAI-compatible ``/v1/chat/completions`` and ``/v1/completions``: the wire models and how a
request maps onto Fastuner's :class:`~api.domain.deployments.GenerationParameters`.

``model`` is an adapter id (``adp_…``): the request is routed to the deployment serving it.
Fields OpenAI knows and Fastuner cannot honour (tools, logprobs, penalties, …) are refused with a
400 naming the parameter, rather than silently ignored; fields nobody knows are ignored, as OpenAI
does. Defaults follow OpenAI: ``temperature`` 1 (sampling), ``top_p`` 1, ``n`` 1; ``max_tokens``
defaults to 512 for chat and to 16 for (legacy) completions.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from api.domain.deployments import ChatMessage, GenerationParameters
from api.domain.errors import BadRequest, Conflict, NotFound
from api.domain.text import RequestBody

MAX_NEW_TOKENS = 2048  # GenerationParameters' cap (and the inference server's)
MAX_CHOICES = 16  # n
MAX_INPUTS = 32  # prompts × n: what the inference server takes in one request
MAX_STOP = 16
MAX_MESSAGES = 1024
DEFAULT_CHAT_MAX_TOKENS = 512
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
SEED_MASK = (1 << 63) - 1  # the inference server takes 0 <= seed < 2**63; OpenAI any int64

FinishReason = Literal["stop", "length"]


# -- errors ----------------------------------------------------------------------------------------
class ModelNotFound(NotFound):
    code = "model_not_found"


class ModelNotDeployed(Conflict):
    """The adapter exists but no deployment serves it (yet): the message says how to deploy it."""

    code = "model_not_deployed"


class UnsupportedParameter(BadRequest):
    code = "unsupported_parameter"

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message, details={"param": param})


# -- requests --------------------------------------------------------------------------------------
class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class ChatMessageIn(BaseModel):
    """One message as OpenAI clients send it; ``name`` and unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None

    def to_input(self, index: int) -> ChatMessage:
        """The ``{role, content}`` our inference server renders with the chat template."""
        role = "system" if self.role == "developer" else self.role
        if self.content is None:
            raise UnsupportedParameter(
                f"messages[{index}].content",
                f"messages[{index}] has no content (tool calls are not supported)",
            )
        if isinstance(self.content, str):
            return {"role": role, "content": self.content}
        texts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise UnsupportedParameter(
                    f"messages[{index}].content",
                    f"messages[{index}] has a {part.type!r} content part; only text is supported",
                )
            texts.append(part.text)
        return {"role": role, "content": "\n".join(texts)}


class _GenerationRequest(RequestBody):
    """What both endpoints share: sampling, length, stop, seed, n, stream."""

    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, Field(min_length=1, max_length=512, description="an adapter id (adp_…)")]
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] = 1
    max_tokens: Annotated[int | None, Field(ge=1, le=MAX_NEW_TOKENS)] = None
    temperature: Annotated[float | None, Field(ge=0, le=2)] = None
    top_p: Annotated[float | None, Field(ge=0, le=1)] = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    seed: Annotated[int | None, Field(ge=-(1 << 63), lt=1 << 63)] = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="accepted and ignored")
    # Known to OpenAI, not honoured here: refused unless left at their neutral value.
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    logprobs: Any = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return value

    @model_validator(mode="after")
    def _stream_options(self) -> _GenerationRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def _refuse_unsupported(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise UnsupportedParameter(name, f"{name} is not supported; leave it unset or 0")
        if self.logit_bias:
            raise UnsupportedParameter("logit_bias", "logit_bias is not supported")
        if self.logprobs not in (None, False, 0):
            raise UnsupportedParameter("logprobs", "logprobs are not supported")

    def max_new_tokens(self) -> int:
        return self.max_tokens or DEFAULT_COMPLETION_MAX_TOKENS

    def parameters(self) -> GenerationParameters:
        """Our generation parameters. ``temperature`` 0 or ``top_p`` 0 is greedy decoding."""
        self._refuse_unsupported()
        temperature = 1.0 if self.temperature is None else self.temperature
        top_p = 1.0 if self.top_p is None else self.top_p
        if top_p == 0:
            temperature, top_p = 0.0, 1.0
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return GenerationParameters(
            max_new_tokens=self.max_new_tokens(),
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            seed=None if self.seed is None else self.seed & SEED_MASK,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_GenerationRequest):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[ChatMessageIn], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: Annotated[int | None, Field(ge=1, le=MAX_NEW_TOKENS)] = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    top_logprobs: int | None = None

    def max_new_tokens(self) -> int:
        return self.max_completion_tokens or self.max_tokens or DEFAULT_CHAT_MAX_TOKENS

    def _refuse_unsupported(self) -> None:
        super()._refuse_unsupported()
        for name in ("tools", "functions"):
            if getattr(self, name):
                raise UnsupportedParameter(name, f"{name} (function calling) is not supported")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise UnsupportedParameter(
                "response_format", "response_format other than {'type': 'text'} is not supported"
            )
        if self.top_logprobs:
            raise UnsupportedParameter("top_logprobs", "logprobs are not supported")

    def conversation(self) -> list[ChatMessage]:
        return [m.to_input(i) for i, m in enumerate(self.messages)]


class CompletionRequest(_GenerationRequest):
    """``POST /v1/completions`` (legacy): ``prompt`` is a string or a list of strings."""

    prompt: str | list[Any]
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = None

    def prompts(self) -> list[str]:
        if isinstance(self.prompt, str):
            return [self.prompt]
        if not self.prompt:
            raise BadRequest("prompt must not be empty", details={"param": "prompt"})
        if not all(isinstance(p, str) for p in self.prompt):
            raise UnsupportedParameter(
                "prompt", "prompt must be a string or a list of strings (token ids are not supported)"
            )
        return list(self.prompt)

    def _refuse_unsupported(self) -> None:
        super()._refuse_unsupported()
        if self.echo:
            raise UnsupportedParameter("echo", "echo is not supported")
        if self.suffix:
            raise UnsupportedParameter("suffix", "suffix (insertion) is not supported")
        if self.best_of not in (None, 1, self.n):
            raise UnsupportedParameter("best_of", "best_of other than n is not supported")


# -- responses -------------------------------------------------------------------------------------
class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class _Response(BaseModel):
    """What every response and chunk carries besides its choices (each class narrows ``object``
    and ``choices``; the field order is this one)."""

    id: str
    object: str
    created: int
    model: str
    choices: list[Any]
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None


class ChatCompletion(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: CompletionUsage
    system_fingerprint: str | None = Field(None, description="the deployment that served it")


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChunkChoice]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: None = None


class Completion(_Response):
    """A ``text_completion``: the whole response, or (streamed) one chunk of it."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


def finish_reason(ours: str) -> FinishReason:
    """OpenAI's reason for ours: anything but a natural stop (e.g. a deadline) is a cut: length."""
    return "stop" if ours == "stop" else "length"
