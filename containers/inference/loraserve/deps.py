"""FastAPI dependencies of the routes: the engine the app serves (``app.state.engine``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from loraserve.engine import Engine


async def get_engine(request: Request) -> Engine:
    """Async, so that routes on the event loop never wait for a worker thread."""
    engine: Engine = request.app.state.engine
    return engine


EngineDep = Annotated[Engine, Depends(get_engine)]
