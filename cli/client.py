"""Python SDK: a thin typed client over the Fastuner REST API (httpx)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from pydantic import BaseModel

from api.domain.datasets import Dataset, Manifest, ValidationReport

T = TypeVar("T", bound=BaseModel)
DEFAULT_TIMEOUT = httpx.Timeout(30.0, read=600.0)


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
        resp = self.http.request(method, path, **kwargs)
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
    """A client for ``api_url``; with none, the same app is served in-process (embedded mode)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with ExitStack() as stack:
        if not api_url:
            from cli.embedded import serve_in_thread

            api_url = stack.enter_context(serve_in_thread())
        http = stack.enter_context(httpx.Client(base_url=api_url, headers=headers, timeout=DEFAULT_TIMEOUT))
        yield FastunerClient(http)
