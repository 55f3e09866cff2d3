"""``GET /ping`` and ``GET /adapters``.

Both run on the event loop and never wait for the model lock, so health checks answer at once even
while every worker thread is queued behind a long generation.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from loraserve.deps import EngineDep

router = APIRouter()


@router.get("/ping")
async def ping(engine: EngineDep) -> JSONResponse:
    body: dict[str, Any] = {"status": engine.state, "base_model": engine.config.base_model}
    if engine.state == "failed":
        body["error"] = engine.error
    return JSONResponse(status_code=200 if engine.ready else 503, content=body)


@router.get("/adapters")
async def adapters(engine: EngineDep) -> dict[str, Any]:
    return {
        "loaded": engine.loaded_adapters(),
        "max_adapters": engine.config.max_adapters,
        "source": engine.source.description,
        "evictions": engine.evictions,
        "bytes": engine.adapter_bytes(),
        "memory_budget_bytes": engine.config.adapter_memory_bytes,
        "disk_evictions": getattr(engine.source, "evictions", 0),
        "disk_budget_bytes": engine.config.adapter_disk_bytes,
        "queued": engine.scheduler.queued(),
        "running": engine.scheduler.running,
    }
