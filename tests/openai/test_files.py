"""/v1/files and the /v1 error shape, driven by the real ``openai`` package against a real server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.api.support import rows, write_jsonl
from tests.openai.conftest import OpenAIServer, upload_sample


def _upload(client: Any, path: Path, **kw: Any) -> Any:
    with path.open("rb") as fh:
        return client.files.create(file=(path.name, fh, "application/jsonl"), purpose="fine-tune", **kw)


def test_upload_retrieve_list_delete(openai_client: Any, tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", rows())
    file = _upload(openai_client, good)
    assert file.id.startswith("ds_") and file.object == "file" and file.purpose == "fine-tune"
    assert file.filename == "good.jsonl" and file.bytes == good.stat().st_size and file.status == "processed"
    assert file.created_at > 1_600_000_000  # unix seconds
    assert openai_client.files.retrieve(file.id) == file
    assert [f.id for f in openai_client.files.list()] == [file.id]
    deleted = openai_client.files.delete(file.id)
    assert deleted.id == file.id and deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        openai_client.files.retrieve(file.id)
    assert list(openai_client.files.list()) == []


def test_files_page_with_after_and_limit(openai_client: Any, tmp_path: Path) -> None:
    ids = [_upload(openai_client, write_jsonl(tmp_path / f"f{i}.jsonl", rows(100 + i))).id for i in range(3)]
    first = openai_client.files.list(limit=2)
    assert [f.id for f in first.data] == ids[::-1][:2] and first.has_more  # newest first
    rest = openai_client.files.list(limit=2, after=first.data[-1].id)
    assert [f.id for f in rest.data] == [ids[0]] and not rest.has_more
    assert [f.id for f in openai_client.files.list(limit=1)] == ids[::-1]  # the client pages on


def test_an_invalid_file_is_a_bad_request_naming_its_lines(openai_client: Any, tmp_path: Path) -> None:
    lines = [*(f'{{"input": "q{i}", "target": "a{i}"}}' for i in range(110)), "not json", '{"input": 7}']
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(openai.BadRequestError) as err:
        _upload(openai_client, bad)
    message = err.value.message
    assert "invalid_json at line 111" in message and "wrong_type at line 112" in message, message
    body = err.value.body
    assert isinstance(body, dict) and body["param"] == "file" and body["code"] == "invalid_file"
    assert err.value.response.headers["x-request-id"]
    assert list(openai_client.files.list()) == []  # nothing stored


def test_purpose_must_be_fine_tune(openai_client: Any, tmp_path: Path) -> None:
    with pytest.raises(openai.BadRequestError) as err, (tmp_path / "x.jsonl").open("wb+") as fh:
        openai_client.files.create(file=("x.jsonl", fh), purpose="assistants")
    assert isinstance(err.value.body, dict) and err.value.body["param"] == "purpose"


def test_another_tenants_file_is_not_found(openai_server: OpenAIServer, openai_client: Any) -> None:
    theirs = upload_sample(openai_client)
    with openai_server.client(openai_server.new_key()) as other:
        with pytest.raises(openai.NotFoundError):
            other.files.retrieve(theirs.id)
        with pytest.raises(openai.NotFoundError):
            other.files.delete(theirs.id)
        with pytest.raises(openai.NotFoundError):
            other.files.list(after=theirs.id)
        assert list(other.files.list()) == []
    assert openai_client.files.retrieve(theirs.id).id == theirs.id  # untouched


def test_errors_are_openai_shaped_on_v1_only(openai_server: OpenAIServer) -> None:
    with openai_server.client("fk_not-a-key") as anonymous, pytest.raises(openai.AuthenticationError) as err:
        anonymous.files.list()
    assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
    resp = httpx.get(f"{openai_server.base_url}/files/ds_000000000000", headers={"X-Request-ID": "rid-1"})
    assert resp.status_code == 401 and resp.headers["x-request-id"] == "rid-1"
    assert set(resp.json()) == {"error"} and set(resp.json()["error"]) == {"message", "type", "param", "code"}
    auth = {"Authorization": f"Bearer {openai_server.key}"}
    missing = httpx.get(f"{openai_server.base_url}/files/ds_000000000000", headers=auth).json()
    assert missing["error"]["type"] == "invalid_request_error" and missing["error"]["code"] == "not_found"
    bad = httpx.get(f"{openai_server.base_url}/fine_tuning/jobs", params={"limit": 0}, headers=auth)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"  # OpenAI: 400, not 422
    ours = httpx.get(f"{openai_server.url}/v0/datasets/ds_000000000000", headers=auth).json()
    assert ours["code"] == "not_found" and ours["request_id"]  # /v0 keeps its own shape
