"""/v0/deployments, /v0/inference, /v0/costs and /v0/janitor/run."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from api.deps import Ctx, Tenant
from api.domain.deployments import (
    Deployment,
    DeploymentRequest,
    InferenceRequest,
    InferenceResponse,
    JanitorReport,
)

router = APIRouter(prefix="/deployments", tags=["deployments"])
inference_router = APIRouter(tags=["inference"])
ops_router = APIRouter(tags=["operations"])


class DeploymentPage(BaseModel):
    items: list[Deployment]
    next_cursor: str | None


class Costs(BaseModel):
    running: list[Deployment]
    hourly_usd: float


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Deployment)
async def create_deployment(req: DeploymentRequest, ctx: Ctx, tenant: Tenant) -> Deployment:
    """Serve adapters (same base model) on a new endpoint; idle ``ttl_seconds`` later it is torn down."""
    return await run_in_threadpool(ctx.deployments.create, tenant, req)


@router.get("", response_model=DeploymentPage)
def list_deployments(
    ctx: Ctx,
    tenant: Tenant,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    live: bool = False,
) -> DeploymentPage:
    items, next_cursor = ctx.deployments.list_page(tenant, limit=limit, cursor=cursor, live_only=live)
    return DeploymentPage(items=items, next_cursor=next_cursor)


@router.get("/{deployment_id}", response_model=Deployment)
def get_deployment(deployment_id: str, ctx: Ctx, tenant: Tenant) -> Deployment:
    return ctx.deployments.get(tenant, deployment_id)


@router.delete("/{deployment_id}", response_model=Deployment)
async def delete_deployment(deployment_id: str, ctx: Ctx, tenant: Tenant) -> Deployment:
    return await run_in_threadpool(ctx.deployments.delete, tenant, deployment_id)


@inference_router.post("/inference", response_model=InferenceResponse)
async def inference(req: InferenceRequest, ctx: Ctx, tenant: Tenant) -> InferenceResponse:
    """Generate with an adapter (or a deployment's base model); resets the deployment's idle clock."""
    return await run_in_threadpool(ctx.deployments.infer, tenant, req)


@ops_router.get("/costs", response_model=Costs)
def costs(ctx: Ctx, tenant: Tenant) -> Costs:
    """Running deployments, their hourly price and when the janitor will tear each down."""
    items, _ = ctx.deployments.list_page(tenant, limit=200, live_only=True)
    return Costs(running=items, hourly_usd=round(sum(d.hourly_price_usd or 0.0 for d in items), 4))


@ops_router.post("/janitor/run", response_model=JanitorReport)
async def run_janitor(ctx: Ctx, tenant: Tenant, dry_run: bool = False) -> JanitorReport:
    """One janitor pass now (the API also runs it periodically)."""
    return await run_in_threadpool(ctx.janitor.run_once, dry_run=dry_run)
