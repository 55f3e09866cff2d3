"""App-level behaviour: health, request ids, error shape, auth and body limits."""

from __future__ import annotations

from pathlib import Path

from tests.api.support import MakeClient, upload


def test_healthz_and_request_id(make_client: MakeClient) -> None:
    client = make_client()
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json()["status"] == "ok"
    assert resp.headers["x-request-id"].startswith("req_")
    resp = client.get("/v0/healthz", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["x-request-id"] == "abc-123"
    bad = client.get("/v0/healthz", headers={"X-Request-ID": "no spaces allowed\t!"})
    assert bad.headers["x-request-id"].startswith("req_")


def test_errors_have_code_message_request_id(make_client: MakeClient) -> None:
    client = make_client()
    resp = client.get("/v0/datasets/ds_missing", headers={"X-Request-ID": "rid-1"})
    assert resp.status_code == 404
    assert resp.json() == {
        "code": "not_found",
        "message": "dataset ds_missing not found",
        "request_id": "rid-1",
    }
    resp = client.get("/v0/datasets", params={"limit": 0})
    assert resp.status_code == 422
    body = resp.json()
    assert body["code"] == "invalid_request" and "limit" in body["message"] and body["request_id"]
    resp = client.get("/v0/nowhere")
    assert resp.status_code == 404 and resp.json()["code"] == "not_found"


def test_openapi_documents_the_routes(make_client: MakeClient) -> None:
    spec = make_client().get("/openapi.json").json()
    assert "/v0/datasets" in spec["paths"]
    assert "multipart/form-data" in spec["paths"]["/v0/datasets"]["post"]["requestBody"]["content"]


def test_body_limit_is_enforced(make_client: MakeClient, good_file: Path) -> None:
    client = make_client(max_upload_bytes=1000)
    resp = upload(client, good_file)
    assert resp.status_code == 413
    assert resp.json()["code"] == "payload_too_large"
    assert resp.json()["request_id"]


def test_body_limit_while_streaming_without_content_length(make_client: MakeClient) -> None:
    client = make_client(max_upload_bytes=1000)

    def chunks():  # type: ignore[no-untyped-def]
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jsonl"\r\n\r\n'
        for _ in range(50):
            yield b"x" * 100
        yield b"\r\n--b--\r\n"

    resp = client.post(
        "/v0/datasets", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert resp.status_code == 413
    assert resp.json()["code"] == "payload_too_large"
