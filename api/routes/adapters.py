"""/v0/adapters: list, get, download (.tar.gz of the PEFT folder)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import Ctx, Tenant
from api.domain.finetune import Adapter
from api.errors import error_responses
from api.routes.paging import Page, PageSize

router = APIRouter(prefix="/adapters", tags=["adapters"], responses=error_responses(401))


class AdapterPage(Page):
    items: list[Adapter]
    next_cursor: str | None


@router.get("", response_model=AdapterPage, responses=error_responses(400, 422))
def list_adapters(ctx: Ctx, tenant: Tenant, limit: PageSize = 50, cursor: str | None = None) -> AdapterPage:
    return AdapterPage.of(ctx.adapters.list_page(tenant, limit=limit, cursor=cursor))


@router.get("/{adapter_id}", response_model=Adapter, responses=error_responses(404, 422))
def get_adapter(adapter_id: str, ctx: Ctx, tenant: Tenant) -> Adapter:
    return ctx.adapters.get(tenant, adapter_id)


@router.get(
    "/{adapter_id}/download",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/gzip": {}}, "description": "the adapter folder as .tar.gz"},
        **error_responses(404, 422, 502),
    },
)
async def download_adapter(adapter_id: str, ctx: Ctx, tenant: Tenant) -> StreamingResponse:
    """The adapter folder (adapter_config.json, adapter_model.safetensors, eval.json, …) as .tar.gz."""
    stream = await run_in_threadpool(ctx.adapters.archive, tenant, adapter_id)
    return StreamingResponse(
        stream,
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{adapter_id}.tar.gz"'},
    )
