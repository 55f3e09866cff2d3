"""/v0/tenant: who the API key belongs to, its quotas and what is in use."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import Ctx, Tenant
from api.domain.tenants import TenantInfo
from api.errors import error_responses

router = APIRouter(prefix="/tenant", tags=["tenant"], responses=error_responses(401))


@router.get("", response_model=TenantInfo)
def get_tenant_info(ctx: Ctx, tenant: Tenant) -> TenantInfo:
    return ctx.tenants.info(tenant)
