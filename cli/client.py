"""Python SDK: a thin typed client over the Fastuner REST API (httpx)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from pydantic import BaseModel

from api.domain.datasets import Dataset, Manifest, ValidationReport
from api.domain.deployments import (
    Deployment,
    DeploymentRequest,
    InferenceRequest,
    InferenceResponse,
    JanitorReport,
)
from api.domain.finetune import Adapter, DryRun, FineTuneJob, FineTuneRequest, JobEvent, MetricPoint
from api.domain.tenants import TenantInfo

T = TypeVar("T", bound=BaseModel)
DEFAULT_TIMEOUT = httpx.Timeout(30.0, read=600.0)
RETRIES = 2
RETRY_DELAY_S = 0.2
RATE_LIMIT_RETRIES = 3
MAX_RETRY_AFTER_S = 30.0
RETRYABLE = (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


def _retry_after(resp: httpx.Response) -> float:
    """The server's ``Retry-After`` in seconds (capped), or the base delay when absent or odd."""
    try:
        return min(max(float(resp.headers.get("Retry-After", "")), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return RETRY_DELAY_S


class ApiError(Exception):
    """An error answered by the API: ``{code, message, request_id}`` (plus ``details``)."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None, details: Any = None):
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.details = details


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


class FastunerClient:
    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    # -- plumbing -----------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        # A request that is safe to repeat (a read, or a POST carrying an Idempotency-Key) is
        # retried when the connection drops under it, e.g. a keep-alive connection the server
        # closed just as the request went out.
        headers = kwargs.get("headers") or {}
        retries = RETRIES if method in ("GET", "HEAD") or "Idempotency-Key" in headers else 0
        # A 429 was refused before any work, so it is safe to repeat whatever the method, after
        # the server's Retry-After; a streamed upload is not repeated (its file has been read).
        throttle_retries = RATE_LIMIT_RETRIES if "files" not in kwargs else 0
        attempt = 0
        while True:
            try:
                resp = self.http.request(method, path, **kwargs)
            except RETRYABLE:
                if attempt >= retries:
                    raise
                time.sleep(RETRY_DELAY_S * 2**attempt)
                attempt += 1
                continue
            if resp.status_code == 429 and throttle_retries > 0:
                throttle_retries -= 1
                time.sleep(_retry_after(resp))
                continue
            break
        if resp.status_code >= 400:
            raise _api_error(resp)
        return resp

    def _model(self, model: type[T], method: str, path: str, **kwargs: Any) -> T:
        return model.model_validate(self._request(method, path, **kwargs).json())

    # -- health -------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        data: dict[str, Any] = self._request("GET", "/v0/healthz").json()
        return data

    # -- datasets -----------------------------------------------------------------------------
    def upload_dataset(
        self, path: Path, *, on_progress: Callable[[int], None] | None = None, **options: Any
    ) -> Dataset:
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
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        data = self._request("GET", "/v0/datasets", params=params).json()
        return [Dataset.model_validate(d) for d in data["items"]], data["next_cursor"]

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
        params = {k: v for k, v in {"limit": limit, "cursor": cursor, "status": status}.items() if v}
        data = self._request("GET", "/v0/finetune", params=params).json()
        return [FineTuneJob.model_validate(d) for d in data["items"]], data["next_cursor"]

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
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        data = self._request("GET", "/v0/adapters", params=params).json()
        return [Adapter.model_validate(d) for d in data["items"]], data["next_cursor"]

    def get_adapter(self, adapter_id: str) -> Adapter:
        return self._model(Adapter, "GET", f"/v0/adapters/{adapter_id}")

    def download_adapter(self, adapter_id: str, dest: Path) -> Path:
        """Download and unpack the adapter folder into ``dest`` (loadable with PeftModel.from_pretrained)."""
        import tarfile
        import tempfile

        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile() as spool:
            with self.http.stream("GET", f"/v0/adapters/{adapter_id}/download") as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise _api_error(resp)
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
        params: dict[str, Any] = {"limit": limit, "live": live, **({"cursor": cursor} if cursor else {})}
        data = self._request("GET", "/v0/deployments", params=params).json()
        return [Deployment.model_validate(d) for d in data["items"]], data["next_cursor"]

    def get_deployment(self, deployment_id: str) -> Deployment:
        return self._model(Deployment, "GET", f"/v0/deployments/{deployment_id}")

    def delete_deployment(self, deployment_id: str) -> Deployment:
        return self._model(Deployment, "DELETE", f"/v0/deployments/{deployment_id}")

    def infer(self, req: InferenceRequest) -> InferenceResponse:
        body = req.model_dump(mode="json", exclude_none=True)
        return self._model(InferenceResponse, "POST", "/v0/inference", json=body)

    def tenant(self) -> TenantInfo:
        return self._model(TenantInfo, "GET", "/v0/tenant")

    def costs(self) -> dict[str, Any]:
        data: dict[str, Any] = self._request("GET", "/v0/costs").json()
        return data

    def run_janitor(self, *, dry_run: bool = False) -> JanitorReport:
        return self._model(JanitorReport, "POST", "/v0/janitor/run", params={"dry_run": dry_run})


def _api_error(resp: httpx.Response) -> ApiError:
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return ApiError(
        resp.status_code,
        str(body.get("code", "http_error")),
        str(body.get("message", resp.text[:500] or resp.reason_phrase)),
        body.get("request_id") or resp.headers.get("x-request-id"),
        body.get("details"),
    )


@contextmanager
def connect(api_url: str | None, api_key: str | None = None) -> Iterator[FastunerClient]:
    """A client for ``api_url``; with none, the same app is served in-process (embedded mode).

    Without ``api_key`` the local key of the embedded default (``{home}/api_key``, written by the
    API on a fresh install) is used when there is one.
    """
    with ExitStack() as stack:
        if not api_url:
            from cli.embedded import serve_in_thread

            api_url = stack.enter_context(serve_in_thread())
        api_key = api_key or local_api_key()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        http = stack.enter_context(httpx.Client(base_url=api_url, headers=headers, timeout=DEFAULT_TIMEOUT))
        yield FastunerClient(http)


def local_api_key() -> str | None:
    from api.services.auth import read_secret
    from api.settings import get_settings

    return read_secret(get_settings().api_key_file)
