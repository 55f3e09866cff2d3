"""/v1/models (OpenAI-compatible): the base models on hand and the tenant's adapters."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from api.deps import Tenant
from api.domain.openai import Model, ModelList
from api.errors import openai_error_responses
from api.routes.openai_files import Compat

router = APIRouter(prefix="/models", tags=["openai"], responses=openai_error_responses(401))


@router.get("", response_model=ModelList)
async def list_models(tenant: Tenant, compat: Compat) -> ModelList:
    """Base models (``owned_by: fastuner``): hub models in the local Hugging Face cache that the
    allow-list admits and, on the local backend, the model folders under FASTUNER_MODEL_ROOTS (their
    path is the id); then the tenant's adapters (``owned_by``: the tenant), usable as ``model`` of
    chat/completions once deployed."""
    return ModelList(data=await run_in_threadpool(compat.models, tenant))


@router.get("/{model_id:path}", response_model=Model, responses=openai_error_responses(404))
async def retrieve_model(model_id: str, tenant: Tenant, compat: Compat) -> Model:
    return await run_in_threadpool(compat.model, tenant, model_id)
