"""Datasets: the list, and a dataset's page (validation report, split counts, labels, preview)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from api.console import web
from api.console.web import CtxDep, SessionDep, page_errors, render
from api.domain.datasets import SPLIT_NAMES

router = APIRouter(prefix="/ui/datasets", include_in_schema=False)
PREVIEW_ROWS = 10
CELL_CHARS = 300


@router.get("", response_class=HTMLResponse)
def datasets_page(request: Request, ctx: CtxDep, session: SessionDep, cursor: str | None = None) -> Response:
    return web.render_list(request, session, "datasets.html", "datasets", ctx.datasets.list_page, cursor)


@router.get("/{dataset_id}", response_class=HTMLResponse)
async def dataset_page(
    dataset_id: str, request: Request, ctx: CtxDep, session: SessionDep, split: str = "train"
) -> Response:
    split = split if split in SPLIT_NAMES else "train"
    with page_errors():
        dataset = await run_in_threadpool(ctx.datasets.get, session.tenant, dataset_id)
        manifest = await run_in_threadpool(ctx.datasets.manifest, session.tenant, dataset_id)
        rows = await run_in_threadpool(
            lambda: ctx.datasets.preview(session.tenant, dataset_id, split=split, limit=PREVIEW_ROWS)
        )
    preview, columns = _preview_table(rows)
    shown: dict[str, Any] = {"preview": preview, "columns": columns, "split": split, "splits": SPLIT_NAMES}
    return render(
        request, "dataset.html", session, dataset=dataset, report=manifest.report, manifest=manifest, **shown
    )


def _preview_table(rows: list[dict[str, Any]]) -> tuple[list[dict[str, str]], list[str]]:
    """The preview rows as text cells (cut at ``CELL_CHARS``) and their columns, the row's
    input, target and label first."""
    preview = [
        {
            k: (v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))[:CELL_CHARS]
            for k, v in r.items()
        }
        for r in rows
    ]
    columns = sorted(
        {k for r in preview for k in r}, key=lambda k: (k not in ("input", "target", "label"), k)
    )
    return preview, columns
