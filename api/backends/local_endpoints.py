"""The ``local`` endpoint backend: the inference container's server as a detached subprocess.

Each deployment runs ``python -m loraserve.entry`` on a free loopback port, with the base model and
the store's adapter folder passed through the same environment variables SageMaker would set. Its
launch file (pid, port, tags) lets a restarted control plane find it again, and lets the janitor
find orphans.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Generator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from api.backends.endpoints import (
    EndpointSpec,
    EndpointStatus,
    InvocationError,
    ManagedEndpoint,
    parse_sse_events,
)
from api.backends.hub_env import HF_TOKEN_SECRET_ENV
from api.backends.local_models import LocalModels
from api.backends.processes import alive, free_port, spawn_detached, tail_file, terminate
from api.domain.enums import DeploymentStatus
from api.domain.errors import BackendError
from api.logging import get_logger
from api.storage.base import ObjectStore
from api.storage.local import LocalStore

log = get_logger("backend.local_endpoints")

SERVER_MARKER = b"loraserve.entry"
LAUNCH_FILE = "launch.json"
LOG_FILE = "logs.txt"
INVOKE_TIMEOUT = httpx.Timeout(10.0, read=600.0)


class LocalEndpoints:
    name = "local"

    def __init__(
        self,
        store: ObjectStore,
        endpoints_dir: Path,
        *,
        python: str | None = None,
        models: LocalModels | None = None,
        hf_token_secret: str | None = None,
    ) -> None:
        self.store = store
        self.endpoints_dir = endpoints_dir
        self.python = python or sys.executable
        self.models = models  # hub ids served from this machine (pulled or cached) instead of the hub
        self.hf_token_secret = hf_token_secret

    def create_endpoint(self, spec: EndpointSpec) -> dict[str, Any]:
        root = self.endpoints_dir / spec.endpoint_name
        launch = root / LAUNCH_FILE
        if launch.is_file():
            state: dict[str, Any] = json.loads(launch.read_text())
            if alive(int(state["pid"]), SERVER_MARKER):
                return state
        root.mkdir(parents=True, exist_ok=True)
        port = free_port()
        env = dict(
            os.environ,
            FASTUNER_BASE_MODEL=self.models.resolve(spec.base_model) if self.models else spec.base_model,
            FASTUNER_ADAPTER_PREFIX=(  # a path the server on this host can read, or s3://
                self.store.file_uri(spec.adapter_prefix)
                if isinstance(self.store, LocalStore)
                else self.store.uri(spec.adapter_prefix)
            ),
            FASTUNER_PRELOAD_ADAPTERS=",".join(spec.adapter_ids),
            FASTUNER_ADAPTER_CACHE_DIR=str(root / "adapter-cache"),
            FASTUNER_LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
        )
        if self.models is not None and self.models.offline:  # no network: fail fast, never wait on the hub
            env.setdefault("HF_HUB_OFFLINE", "1")
        if self.hf_token_secret:
            env[HF_TOKEN_SECRET_ENV] = self.hf_token_secret
        cmd = [self.python, "-m", "loraserve.entry", "serve", "--host", "127.0.0.1", "--port", str(port)]
        pid = spawn_detached(cmd, log_path=root / LOG_FILE, env=env, cwd=root)
        state = {
            "root": str(root),
            "pid": pid,
            "port": port,
            "url": f"http://127.0.0.1:{port}",
            "created_at": datetime.now(UTC).isoformat(),
            "tags": spec.tags,
        }
        tmp = root / (LAUNCH_FILE + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(launch)
        log.info("local endpoint started", extra={"endpoint": spec.endpoint_name, "port": port, "pid": pid})
        return state

    def describe_endpoint(self, endpoint_name: str, state: dict[str, Any]) -> EndpointStatus:
        root = self._root(endpoint_name, state)
        if not (root / LAUNCH_FILE).is_file():
            return EndpointStatus(DeploymentStatus.DELETED)
        if not alive(int(state.get("pid", 0)), SERVER_MARKER):
            tail = " | ".join(tail_file(root / LOG_FILE, 5))
            return EndpointStatus(DeploymentStatus.FAILED, f"the inference server exited: {tail}"[:2000])
        try:
            resp = httpx.get(f"{state['url']}/ping", timeout=2.0)
        except httpx.HTTPError:
            return EndpointStatus(DeploymentStatus.CREATING)
        return EndpointStatus(
            DeploymentStatus.IN_SERVICE if resp.status_code == 200 else DeploymentStatus.CREATING
        )

    def delete_endpoint(self, endpoint_name: str, state: dict[str, Any]) -> None:
        root = self._root(endpoint_name, state)
        launch = root / LAUNCH_FILE
        pid = int(state.get("pid", 0))
        if launch.is_file():
            pid = int(json.loads(launch.read_text()).get("pid", pid))
        terminate(pid, SERVER_MARKER)
        if alive(pid, SERVER_MARKER):
            raise BackendError(f"the inference server of {endpoint_name} (pid {pid}) would not stop")
        shutil.rmtree(root, ignore_errors=True)

    def invoke(self, endpoint_name: str, state: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = httpx.post(f"{state['url']}/invocations", json=payload, timeout=INVOKE_TIMEOUT)
        except httpx.HTTPError as exc:
            raise BackendError(f"endpoint {endpoint_name} did not answer: {exc}") from exc
        if resp.status_code >= 400:
            raise _invocation_error(resp)
        data: dict[str, Any] = resp.json()
        return data

    def invoke_stream(
        self, endpoint_name: str, state: dict[str, Any], payload: dict[str, Any]
    ) -> Generator[dict[str, Any], None, None]:
        """``stream: true`` to the server's ``/invocations``: its SSE events as dicts. Closing the
        generator closes the connection (the server cancels the request and frees its slot)."""
        body = {**payload, "stream": True}
        headers = {"Accept": "text/event-stream"}
        try:
            with httpx.stream(
                "POST", f"{state['url']}/invocations", json=body, headers=headers, timeout=INVOKE_TIMEOUT
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise _invocation_error(resp)
                yield from parse_sse_events(resp.iter_raw())
        except httpx.HTTPError as exc:
            raise BackendError(f"endpoint {endpoint_name} stream failed: {exc}") from exc

    def list_managed(self) -> list[ManagedEndpoint]:
        out: list[ManagedEndpoint] = []
        if not self.endpoints_dir.is_dir():
            return out
        for launch in sorted(self.endpoints_dir.glob(f"*/{LAUNCH_FILE}")):
            try:
                state = json.loads(launch.read_text())
            except (OSError, ValueError):
                continue
            if not alive(int(state.get("pid", 0)), SERVER_MARKER):
                continue
            created = state.get("created_at")
            out.append(
                ManagedEndpoint(
                    name=launch.parent.name,
                    created_at=datetime.fromisoformat(created) if isinstance(created, str) else None,
                    tags=dict(state.get("tags", {})),
                )
            )
        return out

    def _root(self, endpoint_name: str, state: dict[str, Any]) -> Path:
        return Path(state["root"]) if "root" in state else self.endpoints_dir / endpoint_name


def _invocation_error(resp: httpx.Response) -> InvocationError:
    """The server's ``{code, message}`` error answer (a read response)."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    return InvocationError(
        resp.status_code,
        str(body.get("code", "invocation_failed")),
        str(body.get("message", resp.text[:500])),
    )
