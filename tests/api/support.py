"""Helpers shared by the API tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def rows(n: int = 120, *, label: bool = False) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        row: dict[str, Any] = {"input": f"question number {i}?", "target": f"answer {i}"}
        if label:
            row["label"] = "even" if i % 2 == 0 else "odd"
        out.append(row)
    return out


MakeClient = Callable[..., TestClient]


def upload(client: TestClient, path: Path, url: str = "/v0/datasets", **fields: Any) -> Any:
    data = {"name": "ds", **{k: str(v) for k, v in fields.items()}}
    with path.open("rb") as fh:
        return client.post(url, data=data, files={"file": (path.name, fh, "application/x-ndjson")})


def authorize(client: TestClient) -> TestClient:
    """Send the app's bootstrap API key (the embedded default's local key) with every request."""
    key = client.app.state.local_api_key  # type: ignore[attr-defined]
    assert key, "the app issued no local API key (bootstrap_api_key off?)"
    client.headers["Authorization"] = f"Bearer {key}"
    return client
