from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import text

from api import __version__
from api.deps import Ctx

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    version: str
    database: str
    store: str
    backend: str


@router.get("/healthz", response_model=Health)
def healthz(ctx: Ctx) -> Health:
    with ctx.db.session() as session:
        session.execute(text("SELECT 1"))
    return Health(
        status="ok",
        version=__version__,
        database=ctx.db.engine.dialect.name,
        store=ctx.settings.store,
        backend=ctx.settings.backend,
    )
