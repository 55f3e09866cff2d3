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
    """Base models (``owned_by: fastuner``) on hand where jobs run on this machine: allowed hub models
    pulled or in the Hugging Face cache (their hub id is the id) and the model folders under
    FASTUNER_MODEL_ROOTS (their path is the id); then the tenant's adapters (``owned_by``: the
    tenant), usable as ``model`` of chat/completions once deployed."""
    return ModelList(data=await run_in_threadpool(compat.models, tenant))


@router.get("/{model_id:path}", response_model=Model, responses=openai_error_responses(404))
async def retrieve_model(model_id: str, tenant: Tenant, compat: Compat) -> Model:
    return await run_in_threadpool(compat.model, tenant, model_id)
