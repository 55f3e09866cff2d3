"""The client: one method per API call, typed with the API's own models."""

from __future__ import annotations

import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from api.domain.catalog import BaseModelInfo, ModelList, PullProgress, PullResult
from api.domain.datasets import Dataset, Manifest, ValidationReport
from api.domain.deployments import (
    Deployment,
    DeploymentRequest,
    InferenceRequest,
    InferenceResponse,
    InferenceStreamError,
    InferenceToken,
    JanitorReport,
)
from api.domain.enums import JobStatus
from api.domain.finetune import Adapter, DryRun, FineTuneJob, FineTuneRequest, JobEvent, MetricPoint
from api.domain.tenants import TenantInfo
from fastuner_sdk import _retry
from fastuner_sdk._sse import ServerSentEvent, iter_sse
from fastuner_sdk.errors import StreamError, api_error

T = TypeVar("T", bound=BaseModel)
DEFAULT_TIMEOUT = httpx.Timeout(30.0, read=600.0)
PAGE_SIZE = 100  # items per request when an iterator pages through a list (the API allows 200)


class StatusUpdate(BaseModel):
    """A job's status as the metrics stream reports it (``event: status``)."""

    status: str
    adapter_id: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in {s.value for s in JobStatus if s.terminal}


class _ProgressReader:
    """File wrapper reporting bytes read, so uploads can drive a progress bar."""

    def __init__(self, fh: IO[bytes], on_read: Callable[[int], None]) -> None:
        self._fh = fh
        self._on_read = on_read

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self._on_read(len(data))
        return data

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(1 << 16):
            yield chunk


def _pages(fetch: Callable[[str | None], tuple[list[T], str | None]]) -> Iterator[T]:
    cursor: str | None = None
    while True:
        items, cursor = fetch(cursor)
        yield from items
        if not cursor:
            return


class FastunerClient:
    """Typed calls over an ``httpx.Client`` whose ``base_url`` is the API (see :func:`connect`).

    Errors raise :class:`fastuner_sdk.ApiError` subclasses; ``list_*`` return one page
    ``(items, next_cursor)``; ``iter_*`` go through every page.
    """

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def close(self) -> None:
        self.http.close()

    # -- plumbing -----------------------------------------------------------------------------
    def _send(self, method: str, path: str, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        request = self.http.build_request(method, path, **kwargs)
        policy = _retry.Policy.for_request(method, request.headers, streamed_body="files" in kwargs)
        resp = _retry.send(policy, lambda: self.http.send(request, stream=stream))
        if resp.status_code >= 400:
            resp.read()
            resp.close()
            raise api_error(resp)
        return resp

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self._send(method, path, **kwargs)

    @contextmanager
    def _stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        resp = self._send(method, path, stream=True, **kwargs)
        try:
            yield resp
        finally:
            resp.close()

    def _model(self, model: type[T], method: str, path: str, **kwargs: Any) -> T:
        return model.model_validate(self._request(method, path, **kwargs).json())

    def _page(self, model: type[T], path: str, params: dict[str, Any]) -> tuple[list[T], str | None]:
        params = {k: v for k, v in params.items() if v is not None}
        data = self._request("GET", path, params=params).json()
        return [model.model_validate(d) for d in data["items"]], data["next_cursor"]

    # -- health -------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        data: dict[str, Any] = self._request("GET", "/v0/healthz").json()
        return data

    # -- datasets -----------------------------------------------------------------------------
    def upload_dataset(
        self, path: Path, *, on_progress: Callable[[int], None] | None = None, **options: Any
    ) -> Dataset:
        """Validate, dedup, split and store a JSONL file (``name``, ``task_type``, ``format``,
        ``seed``, ``split`` options). An invalid file raises ``UnprocessableError`` whose
        ``details`` is the line-numbered validation report."""
        return self._upload(Dataset, "/v0/datasets", path, on_progress, options)

    def validate_dataset(
        self, path: Path, *, on_progress: Callable[[int], None] | None = None, **options: Any
    ) -> ValidationReport:
        return self._upload(ValidationReport, "/v0/datasets/validate", path, on_progress, options)

    def _upload(
        self,
        model: type[T],
        url: str,
        path: Path,
        on_progress: Callable[[int], None] | None,
        options: dict[str, Any],
    ) -> T:
        fields = {k: str(v) for k, v in options.items() if v is not None}
        with path.open("rb") as fh:
            body: IO[bytes] | _ProgressReader = _ProgressReader(fh, on_progress) if on_progress else fh
            files = {"file": (path.name, body, "application/x-ndjson")}
            return self._model(model, "POST", url, data=fields, files=files)

    def list_datasets(
        self, *, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[Dataset], str | None]:
        return self._page(Dataset, "/v0/datasets", {"limit": limit, "cursor": cursor or None})

    def iter_datasets(self, *, page_size: int = PAGE_SIZE) -> Iterator[Dataset]:
        """Every dataset, newest first, fetching pages as the loop goes."""
        return _pages(lambda cursor: self.list_datasets(limit=page_size, cursor=cursor))

    def get_dataset(self, dataset_id: str) -> Dataset:
        return self._model(Dataset, "GET", f"/v0/datasets/{dataset_id}")

    def get_manifest(self, dataset_id: str) -> Manifest:
        return self._model(Manifest, "GET", f"/v0/datasets/{dataset_id}/manifest")

    def preview_dataset(
        self, dataset_id: str, *, split: str = "train", limit: int = 10
    ) -> list[dict[str, Any]]:
        data = self._request(
            "GET", f"/v0/datasets/{dataset_id}/preview", params={"split": split, "limit": limit}
        ).json()
        rows: list[dict[str, Any]] = data["rows"]
        return rows

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/v0/datasets/{dataset_id}")

    # -- fine-tune ----------------------------------------------------------------------------
    def start_finetune(
        self, req: FineTuneRequest, *, idempotency_key: str | None = None
    ) -> FineTuneJob | DryRun:
        if idempotency_key is None and not req.dry_run:  # so a retried start can't start twice
            idempotency_key = f"sdk-{uuid.uuid4()}"
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = req.model_dump(mode="json", exclude_defaults=True)
        data = self._request("POST", "/v0/finetune", json=body, headers=headers).json()
        return DryRun.model_validate(data) if data.get("dry_run") else FineTuneJob.model_validate(data)

    def list_jobs(
        self, *, limit: int = 50, cursor: str | None = None, status: str | None = None
    ) -> tuple[list[FineTuneJob], str | None]:
        params = {"limit": limit, "cursor": cursor or None, "status": status or None}
        return self._page(FineTuneJob, "/v0/finetune", params)

    def iter_jobs(self, *, status: str | None = None, page_size: int = PAGE_SIZE) -> Iterator[FineTuneJob]:
        """Every fine-tune job (optionally of one status), newest first, page after page."""
        return _pages(lambda cursor: self.list_jobs(limit=page_size, cursor=cursor, status=status))

    def get_job(self, job_id: str) -> FineTuneJob:
        return self._model(FineTuneJob, "GET", f"/v0/finetune/{job_id}")

    def cancel_job(self, job_id: str) -> FineTuneJob:
        return self._model(FineTuneJob, "POST", f"/v0/finetune/{job_id}/cancel")

    def job_events(self, job_id: str, *, after: int = 0) -> list[JobEvent]:
        data = self._request("GET", f"/v0/finetune/{job_id}/events", params={"after": after}).json()
        return [JobEvent.model_validate(d) for d in data]

    def job_metrics(self, job_id: str, *, after: int = 0) -> list[MetricPoint]:
        data = self._request("GET", f"/v0/finetune/{job_id}/metrics", params={"after": after}).json()
        return [MetricPoint.model_validate(d) for d in data]

    def follow_job(self, job_id: str, *, after: int = 0) -> Iterator[MetricPoint | StatusUpdate]:
        """The job live, from the server's event stream (no polling): each new metric point and
        each status change, ending after the terminal status. A dropped stream is reopened from
        the last step seen (bounded; the last error is raised when reopening keeps failing)."""
        failures = 0
        while True:
            error: httpx.TransportError | None = None
            try:
                with self._stream(
                    "GET",
                    f"/v0/finetune/{job_id}/metrics",
                    params={"after": after, "follow": "true"},
                    headers={"Accept": "text/event-stream"},
                ) as resp:
                    for event in iter_sse(resp.iter_lines()):
                        if event.event == "metric":
                            point = MetricPoint.model_validate_json(event.data)
                            after = max(after, point.step)
                            failures = 0
                            yield point
                        elif event.event == "status":
                            update = StatusUpdate.model_validate_json(event.data)
                            failures = 0
                            yield update
                            if update.terminal:
                                return
            except (*_retry.DROPPED, httpx.ReadTimeout) as exc:
                error = exc
            failures += 1  # the stream ended before the job did: reopen it
            if failures > _retry.RETRIES:
                if error is not None:
                    raise error
                return
            _retry._sleep(_retry.backoff(failures))

    def wait_job(self, job_id: str) -> FineTuneJob:
        """Block until the job ends (following its event stream); the final job."""
        for _ in self.follow_job(job_id):
            pass
        return self.get_job(job_id)

    def job_logs(self, job_id: str, *, tail: int = 200) -> list[str]:
        lines: list[str] = self._request("GET", f"/v0/finetune/{job_id}/logs", params={"tail": tail}).json()
        return lines

    def reconcile(self) -> dict[str, Any]:
        data: dict[str, Any] = self._request("POST", "/v0/finetune/reconcile").json()
        return data

    # -- adapters -----------------------------------------------------------------------------
    def list_adapters(
        self, *, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[Adapter], str | None]:
        return self._page(Adapter, "/v0/adapters", {"limit": limit, "cursor": cursor or None})

    def iter_adapters(self, *, page_size: int = PAGE_SIZE) -> Iterator[Adapter]:
        return _pages(lambda cursor: self.list_adapters(limit=page_size, cursor=cursor))

    def get_adapter(self, adapter_id: str) -> Adapter:
        return self._model(Adapter, "GET", f"/v0/adapters/{adapter_id}")

    def download_adapter(self, adapter_id: str, dest: Path) -> Path:
        """Download and unpack the adapter folder into ``dest`` (loadable with PeftModel.from_pretrained)."""
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile() as spool:
            with self._stream("GET", f"/v0/adapters/{adapter_id}/download") as resp:
                for chunk in resp.iter_bytes():
                    spool.write(chunk)
            spool.seek(0)
            with tarfile.open(fileobj=spool, mode="r:gz") as tar:
                tar.extractall(dest, filter="data")
        return dest

    # -- deployments and inference ------------------------------------------------------------
    def create_deployment(self, req: DeploymentRequest) -> Deployment:
        return self._model(Deployment, "POST", "/v0/deployments", json=req.model_dump(mode="json"))

    def list_deployments(
        self, *, limit: int = 50, cursor: str | None = None, live: bool = False
    ) -> tuple[list[Deployment], str | None]:
        return self._page(
            Deployment, "/v0/deployments", {"limit": limit, "live": live, "cursor": cursor or None}
        )

    def iter_deployments(self, *, live: bool = False, page_size: int = PAGE_SIZE) -> Iterator[Deployment]:
        return _pages(lambda cursor: self.list_deployments(limit=page_size, cursor=cursor, live=live))

    def get_deployment(self, deployment_id: str) -> Deployment:
        return self._model(Deployment, "GET", f"/v0/deployments/{deployment_id}")

    def delete_deployment(self, deployment_id: str) -> Deployment:
        return self._model(Deployment, "DELETE", f"/v0/deployments/{deployment_id}")

    def infer(self, req: InferenceRequest) -> InferenceResponse:
        body = req.model_dump(mode="json", exclude_none=True, exclude={"stream"})
        return self._model(InferenceResponse, "POST", "/v0/inference", json=body)

    def infer_stream(self, req: InferenceRequest) -> Iterator[str | InferenceResponse]:
        """One prompt, streamed (``stream: true``): yields each new piece of text as the endpoint
        generates it, then the final :class:`InferenceResponse` (its ``generated_text`` is the
        pieces joined). Refusals raise as ``infer`` does; a failure after the stream opened raises
        :class:`StreamError`. Stopping early (``close()`` / leaving the loop) closes the connection,
        which stops the generation on the endpoint."""
        body = {**req.model_dump(mode="json", exclude_none=True), "stream": True}
        headers = {"Accept": "text/event-stream"}
        with self._stream("POST", "/v0/inference", json=body, headers=headers) as resp:
            for event in _until_done(resp):
                if event.event == "token":
                    yield InferenceToken.model_validate_json(event.data).text
                elif event.event == "done":
                    yield InferenceResponse.model_validate_json(event.data)

    # -- base models --------------------------------------------------------------------------
    def list_models(self) -> list[BaseModelInfo]:
        """The base models this control plane can fine-tune, and whether its backend can get each."""
        return self._model(ModelList, "GET", "/v0/models").items

    def get_model(self, model_id: str) -> BaseModelInfo:
        """One base model by hub id (``org/name``) or folder path."""
        return self._model(BaseModelInfo, "GET", f"/v0/models/{quote(model_id, safe='')}")

    def pull_model(
        self, model_id: str, *, on_progress: Callable[[PullProgress], None] | None = None
    ) -> PullResult:
        """Local backend: put a hub model on the server's machine offline (idempotent); progress
        through ``on_progress`` as the server reports it."""
        path = f"/v0/models/{quote(model_id, safe='')}/pull"
        with self._stream("POST", path, headers={"Accept": "text/event-stream"}) as resp:
            for event in _until_done(resp):
                if event.event == "progress" and on_progress is not None:
                    on_progress(PullProgress.model_validate_json(event.data))
                elif event.event == "done":
                    return PullResult.model_validate_json(event.data)
        raise AssertionError("unreachable: _until_done ends with done or raises")

    def tenant(self) -> TenantInfo:
        return self._model(TenantInfo, "GET", "/v0/tenant")

    def costs(self) -> dict[str, Any]:
        data: dict[str, Any] = self._request("GET", "/v0/costs").json()
        return data

    def run_janitor(self, *, dry_run: bool = False) -> JanitorReport:
        return self._model(JanitorReport, "POST", "/v0/janitor/run", params={"dry_run": dry_run})


__all__ = ["DEFAULT_TIMEOUT", "FastunerClient", "StatusUpdate"]


def _until_done(resp: httpx.Response) -> Iterator[ServerSentEvent]:
    """The events of a stream that ends with a ``done`` event (yielded last); an ``error`` event,
    or the stream ending before ``done``, raises :class:`StreamError`."""
    for event in iter_sse(resp.iter_lines()):
        if event.event == "error":
            err = InferenceStreamError.model_validate_json(event.data)
            raise StreamError(502, err.code, err.message, err.request_id)
        yield event
        if event.event == "done":
            return
    raise StreamError(
        502, "stream_ended", "the stream ended before its done event", resp.headers.get("x-request-id")
    )
