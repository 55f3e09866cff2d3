"""Responses as the tests read them."""

from __future__ import annotations

from typing import Any


def ok_json(resp: Any, status: int = 200) -> Any:
    """The JSON body of ``resp`` (httpx or TestClient), which must have ``status`` (else its text is shown)."""
    assert resp.status_code == status, resp.text
    return resp.json()
