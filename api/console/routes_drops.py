"""Drops: the tenant's recent drop-and-train objects (``drop/{tenant}/…``) and their status."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from api.console.web import CtxDep, SessionDep, render
from api.db.models import DropObjectRow
from api.db.session import Database

router = APIRouter(prefix="/ui/drops", include_in_schema=False)
RECENT = 100


class DropView(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)

    key: str
    status: str
    attempts: int
    dataset_id: str | None
    job_id: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime | None
    next_attempt_at: datetime | None


def recent_drops(db: Database, tenant: str, limit: int = RECENT) -> list[DropView]:
    """The tenant's latest drop objects, newest first (read straight from the drop ledger)."""
    with db.session() as session:
        rows = session.scalars(
            select(DropObjectRow)
            .where(DropObjectRow.tenant_id == tenant)
            .order_by(DropObjectRow.id.desc())
            .limit(limit)
        )
        return [DropView.model_validate(r) for r in rows]


@router.get("", response_class=HTMLResponse)
def drops_page(request: Request, ctx: CtxDep, session: SessionDep) -> Response:
    drops = recent_drops(ctx.db, session.tenant)
    return render(
        request,
        "drops.html",
        session,
        drops=drops,
        prefix=f"drop/{session.tenant}/",
        scanning=ctx.settings.drop_scan,
    )
