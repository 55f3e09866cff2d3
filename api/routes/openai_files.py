"""/v1/files (OpenAI-compatible): a file of purpose ``fine-tune`` is uploaded through the dataset
pipeline (validated, deduplicated, split, stored); its id is the dataset's."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from api.deps import Ctx, Tenant
from api.domain.datasets import DatasetOptions, SplitRatios
from api.domain.openai import File, FileDeleted, FileList, InvalidParam
from api.errors import openai_error_responses
from api.routes.datasets import OPTION_PROPERTIES, handle_upload, upload_doc
from api.services.openai_compat import OpenAICompat, safe_filename

router = APIRouter(prefix="/files", tags=["openai"], responses=openai_error_responses(401))

# Besides OpenAI's fields, the dataset options of POST /v0/datasets (`extra_body` of openai's
# files.create): how the file is read and split.
_OPTION_FIELDS = {"task_type", "format", "seed", "split"}
_FORM_FIELDS = {"purpose", "file", *_OPTION_FIELDS}
_UPLOAD_DOC = upload_doc(
    ["file", "purpose"], {"purpose": {"type": "string", "enum": ["fine-tune"]}, **OPTION_PROPERTIES}
)


def get_compat(ctx: Ctx) -> OpenAICompat:
    return OpenAICompat(ctx)


Compat = Annotated[OpenAICompat, Depends(get_compat)]


def _options(form: FormData, ctx: Ctx, filename: str | None) -> DatasetOptions:
    unknown = sorted(set(form.keys()) - _FORM_FIELDS)
    if unknown:
        raise InvalidParam(f"unknown form field(s): {', '.join(unknown)}", param=unknown[0])
    purpose = form.get("purpose")
    if purpose != "fine-tune":
        raise InvalidParam(
            f"purpose must be 'fine-tune' (the only files Fastuner keeps), not {purpose!r}", param="purpose"
        )
    raw: dict[str, Any] = {
        k: v for k, v in form.items() if k in _OPTION_FIELDS and isinstance(v, str) and v != ""
    }
    raw["name"] = safe_filename(filename)
    raw["limits"] = ctx.settings.limits
    try:
        if "split" in raw:
            raw["split"] = SplitRatios.parse(raw["split"])
        return DatasetOptions.model_validate(raw)
    except ValueError as exc:  # pydantic's ValidationError is one
        if isinstance(exc, ValidationError):
            err = exc.errors()[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            raise InvalidParam(f"{param}: {err['msg']}" if param else err["msg"], param=param) from exc
        raise InvalidParam(str(exc), param="split") from exc


@router.post(
    "",
    response_model=File,
    openapi_extra=_UPLOAD_DOC,
    responses=openai_error_responses(400, 413, 502),
)
async def create_file(request: Request, ctx: Ctx, tenant: Tenant, compat: Compat) -> File:
    """Upload a JSONL training file (``purpose=fine-tune``): validated, deduplicated and split like
    ``POST /v0/datasets``. An invalid file is a 400 whose message lists each problem with its line
    numbers."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidParam("expected a multipart/form-data upload with 'file' and 'purpose'", param="file")
    form = await request.form(max_files=1, max_fields=len(_FORM_FIELDS))

    def options_of(form: FormData) -> DatasetOptions:
        return _options(form, ctx, getattr(form.get("file"), "filename", None))

    def create(path: Path, name: str | None, options: DatasetOptions) -> File:
        return compat.create_file(tenant, path, options, name)

    return await handle_upload(form, ctx, options_of, create)


@router.get("", response_model=FileList, responses=openai_error_responses(400, 404))
def list_files(
    tenant: Tenant,
    compat: Compat,
    purpose: str | None = None,
    after: Annotated[
        str | None, Query(max_length=64, description="the last file id of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Annotated[str, Query(pattern="^desc$", description="newest first (only)")] = "desc",
) -> FileList:
    """The tenant's files, newest first."""
    if purpose not in (None, "fine-tune"):
        return FileList.of([])
    items, more = compat.files(tenant, after=after, limit=min(limit, 200))
    return FileList.of(items, more)


@router.get("/{file_id}", response_model=File, responses=openai_error_responses(404))
def retrieve_file(file_id: str, tenant: Tenant, compat: Compat) -> File:
    return compat.file(tenant, file_id)


@router.delete("/{file_id}", response_model=FileDeleted, responses=openai_error_responses(404, 409, 502))
async def delete_file(file_id: str, ctx: Ctx, tenant: Tenant, compat: Compat) -> FileDeleted:
    """Delete the file (its dataset): 409 while a running job uses it."""
    compat.file(tenant, file_id)
    await run_in_threadpool(ctx.datasets.delete, tenant, file_id)
    return FileDeleted(id=file_id)
