"""Base models as the API shows them (``/v0/models``): what a model is and whether a backend can get it.

Wire models only (pydantic, no I/O): the SDK imports this module.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.domain.errors import BadRequest

ModelKind = Literal["hub", "folder"]
FactsSource = Literal["config", "static catalog", "unknown"]
OnDisk = Literal["pulled", "hf_cache", "folder"]
PullStage = Literal["locating", "dequantising", "saving", "done"]


class BaseModelInfo(BaseModel):
    """A base model this control plane can fine-tune (an allow-listed hub id or a local folder)."""

    id: str = Field(description="hub id (org/name), or a local model folder's absolute path")
    kind: ModelKind = Field(description="hub: a Hugging Face hub id; folder: a folder on the server")
    parameters: int | None = Field(default=None, description="parameter count (None: unknown)")
    context_length: int | None = Field(default=None, description="max positions of the model")
    chat_template: bool | None = Field(default=None, description="the tokenizer has a chat template")
    gated: bool | None = Field(
        default=None, description="the hub repository needs an accepted licence and a token (None: unknown)"
    )
    facts_source: FactsSource = Field(
        description="where the facts come from: the model's own files (config), or Fastuner's static "
        "catalog of well-known hub models (not read from the hub)"
    )
    on_disk: OnDisk | None = Field(
        default=None,
        description="where the server has it: pulled ($FASTUNER_HOME/models), hf_cache (the Hugging "
        "Face cache) or folder (a model root); None: not on this machine",
    )
    pullable: bool = Field(default=False, description="`fastuner models pull` can fetch it offline")
    backend: str = Field(description="the compute backend availability is judged for")
    available: bool = Field(description="whether that backend can get this model now")
    reason: str = Field(description="why it is (not) available, with the fix when it is not")


class ModelList(BaseModel):
    items: list[BaseModelInfo]


class PullProgress(BaseModel):
    """One step of a pull (the ``progress`` events of ``POST /v0/models/{id}/pull`` as a stream)."""

    stage: PullStage
    message: str
    elapsed_s: float = 0.0


class PullResult(BaseModel):
    model: BaseModelInfo
    pulled: bool = Field(description="false when it was there already (a pull is idempotent)")
    source: str = Field(description="where the weights came from")


class ModelUnavailable(BadRequest):
    """The chosen backend cannot get the base model (not on this machine, or gated without a token)."""

    code = "model_unavailable"
    status = 422
