from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from api.storage.base import ObjectStore
from tests.api.support import MakeClient, authorize, rows, write_jsonl


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "good.jsonl", rows())


@pytest.fixture
def make_client(settings_factory: Callable[..., Settings]) -> Iterator[MakeClient]:
    clients: list[TestClient] = []

    def make(*, store: ObjectStore | None = None, **overrides: Any) -> TestClient:
        client = TestClient(
            create_app(settings_factory(**overrides), store=store), raise_server_exceptions=False
        )
        client.__enter__()
        authorize(client)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)
