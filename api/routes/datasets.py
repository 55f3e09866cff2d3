"""/v0/datasets: upload (multipart, streamed to disk), validate, list, get, preview, delete."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, BinaryIO, TypeVar

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from api.deps import Ctx, Tenant
from api.domain.datasets import Dataset, DatasetOptions, Manifest, SplitRatios, ValidationReport
from api.domain.enums import DatasetFormat, TaskType
from api.domain.errors import BadRequest
from api.errors import error_responses
from api.routes.paging import Page, PageSize
from api.services import scratch

T = TypeVar("T")
router = APIRouter(prefix="/datasets", tags=["datasets"], responses=error_responses(401))

_FORM_FIELDS = {"name", "task_type", "format", "seed", "split"}
# The dataset options of an upload form (also taken by POST /v1/files), enums from the domain's.
OPTION_PROPERTIES: dict[str, Any] = {
    "task_type": {"type": "string", "enum": [t.value for t in TaskType]},
    "format": {"type": "string", "enum": [f.value for f in DatasetFormat]},
    "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
    "split": {"type": "string", "example": "0.8,0.1,0.1"},
}


def upload_doc(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI for a multipart upload of a JSONL ``file`` with these other form fields."""
    file = {"type": "string", "format": "binary", "description": "JSONL file"}
    schema = {"type": "object", "required": required, "properties": {"file": file, **properties}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


_UPLOAD_DOC = upload_doc(
    ["file", "name"],
    {"name": {"type": "string", "minLength": 1, "maxLength": 128}, **OPTION_PROPERTIES},
)


class DatasetPage(Page):
    items: list[Dataset]
    next_cursor: str | None


class Preview(BaseModel):
    dataset_id: str
    split: str
    rows: list[dict[str, Any]]


def _options(form: FormData, ctx: Ctx) -> DatasetOptions:
    unknown = set(form.keys()) - _FORM_FIELDS - {"file"}
    if unknown:
        raise BadRequest(f"unknown form field(s): {', '.join(sorted(unknown))}")
    raw: dict[str, Any] = {
        k: v for k, v in form.items() if k in _FORM_FIELDS and isinstance(v, str) and v != ""
    }
    try:
        if "split" in raw:
            raw["split"] = SplitRatios.parse(raw["split"])
        raw["limits"] = ctx.settings.limits
        return DatasetOptions.model_validate(raw)
    except (ValidationError, ValueError) as exc:
        raise BadRequest(_first_error(exc)) from exc


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return f"{where}: {err['msg']}" if where else str(err["msg"])
    return str(exc)


@contextmanager
def _spooled_upload(form: FormData, work_dir: Path) -> Iterator[tuple[Path, str | None]]:
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise BadRequest("multipart field 'file' (the JSONL dataset) is required")
    # In this process's owned scratch: a crash leaves nothing a sweep would not remove.
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=".jsonl", dir=scratch.owner_dir(work_dir))
    path = Path(name)
    try:
        with open(fd, "wb") as out:
            _copy(upload.file, out)
        yield path, upload.filename
    finally:
        path.unlink(missing_ok=True)


async def handle_upload(
    form: FormData,
    ctx: Ctx,
    options_of: Callable[[FormData], DatasetOptions],
    handle: Callable[[Path, str | None, DatasetOptions], T],
) -> T:
    """The form's options, then ``handle(path, filename, options)`` in a thread on its file spooled
    to scratch; the form is closed whatever happens."""
    try:
        options = options_of(form)
        with _spooled_upload(form, ctx.settings.work_dir) as (path, filename):
            return await run_in_threadpool(handle, path, filename, options)
    finally:
        await form.close()


def _copy(src: BinaryIO, dst: BinaryIO) -> None:
    src.seek(0)
    shutil.copyfileobj(src, dst, 1 << 20)


async def _form(request: Request) -> FormData:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequest("expected a multipart/form-data upload with a 'file' field")
    return await request.form(max_files=1, max_fields=len(_FORM_FIELDS))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=Dataset,
    openapi_extra=_UPLOAD_DOC,
    responses=error_responses(400, 413, 422, 502),
)
async def upload_dataset(request: Request, ctx: Ctx, tenant: Tenant) -> Dataset:
    """Upload a JSONL file: validate, dedup, split and store it. 422 with the full report if invalid."""

    def create(path: Path, filename: str | None, options: DatasetOptions) -> Dataset:
        return ctx.datasets.create(tenant, path, options, filename=filename)

    return await handle_upload(await _form(request), ctx, lambda form: _options(form, ctx), create)


@router.post(
    "/validate",
    response_model=ValidationReport,
    openapi_extra=_UPLOAD_DOC,
    responses=error_responses(400, 413),
)
async def validate_dataset(request: Request, ctx: Ctx, tenant: Tenant) -> ValidationReport:
    """Dry run: the validation report and split counts; nothing is stored."""
    form = await _form(request)
    return await handle_upload(
        form, ctx, lambda f: _options(f, ctx), lambda path, _, options: ctx.datasets.validate(path, options)
    )


@router.get("", response_model=DatasetPage, responses=error_responses(400, 422))
def list_datasets(
    ctx: Ctx,
    tenant: Tenant,
    limit: PageSize = 50,
    cursor: str | None = None,
) -> DatasetPage:
    return DatasetPage.of(ctx.datasets.list_page(tenant, limit=limit, cursor=cursor))


@router.get("/{dataset_id}", response_model=Dataset, responses=error_responses(404, 422))
def get_dataset(dataset_id: str, ctx: Ctx, tenant: Tenant) -> Dataset:
    return ctx.datasets.get(tenant, dataset_id)


@router.get("/{dataset_id}/manifest", response_model=Manifest, responses=error_responses(404, 422, 502))
def get_manifest(dataset_id: str, ctx: Ctx, tenant: Tenant) -> Manifest:
    return ctx.datasets.manifest(tenant, dataset_id)


@router.get("/{dataset_id}/preview", response_model=Preview, responses=error_responses(400, 404, 422, 502))
def preview_dataset(
    dataset_id: str,
    ctx: Ctx,
    tenant: Tenant,
    split: str = "train",
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> Preview:
    rows = ctx.datasets.preview(tenant, dataset_id, split=split, limit=limit)
    return Preview(dataset_id=dataset_id, split=split, rows=rows)


@router.delete(
    "/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404, 409, 422, 502)
)
def delete_dataset(dataset_id: str, ctx: Ctx, tenant: Tenant) -> Response:
    ctx.datasets.delete(tenant, dataset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
