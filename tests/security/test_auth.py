"""API keys: every request needs one, only hashes are stored, revocation bites, and the embedded
default bootstraps a local key so a newcomer is never blocked."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from api.app import create_app
from api.db.models import ApiKeyRow
from api.settings import Settings
from cli.main import cli


def _app(home: Path, **overrides: object) -> TestClient:
    settings = Settings(home=home, log_json=False, background_tasks=False, **overrides)  # type: ignore[arg-type]
    return TestClient(create_app(settings), raise_server_exceptions=False)


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token fsk_x", "Bearer fsk_not-a-real-key"],
    ids=["none", "empty", "no-token", "blank-token", "basic", "other-scheme", "unknown-key"],
)
def test_requests_without_a_valid_key_are_401(tmp_path: Path, header: str | None) -> None:
    with _app(tmp_path) as client:
        headers = {} if header is None else {"Authorization": header}
        for method, path in [
            ("GET", "/v0/datasets"),
            ("GET", "/v0/finetune/ft_x"),
            ("POST", "/v0/janitor/run"),
        ]:
            resp = client.request(method, path, headers=headers)
            assert resp.status_code == 401, (method, path, resp.text)
            body = resp.json()
            assert body["code"] == "unauthorized" and body["request_id"] and body["message"]
        assert client.get("/v0/healthz", headers=headers).status_code == 200  # health needs no key


def test_only_the_hash_is_stored_and_a_revoked_key_stops_working(tmp_path: Path) -> None:
    with _app(tmp_path) as client:
        auth = client.app.state.ctx.auth  # type: ignore[attr-defined]
        created = auth.create_key("acme", "ci")
        assert created.secret.startswith("fsk_") and len(created.secret) > 40
        with client.app.state.ctx.db.session() as s:  # type: ignore[attr-defined]
            dump = json.dumps([list(r) for r in s.execute(text("SELECT * FROM api_keys"))], default=str)
            row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.id == created.id))
        assert created.secret not in dump and created.secret[PREFIX_LEN:] not in dump
        assert row is not None and row.prefix == created.secret[:PREFIX_LEN]

        headers = {"Authorization": f"Bearer {created.secret}"}
        assert client.get("/v0/tenant", headers=headers).json()["tenant_id"] == "acme"
        assert created.secret not in json.dumps([k.model_dump(mode="json") for k in auth.list()])
        auth.revoke(created.id)
        resp = client.get("/v0/tenant", headers=headers)
        assert resp.status_code == 401 and "revoked" in resp.json()["message"]


PREFIX_LEN = 12


def test_a_fresh_install_bootstraps_one_local_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with _app(home) as first:
        key_file = home / "api_key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        secret = key_file.read_text().strip()
        resp = first.get("/v0/tenant", headers={"Authorization": f"Bearer {secret}"})
        assert resp.status_code == 200 and resp.json()["tenant_id"] == "default"
    with _app(home) as second:  # a restart issues nothing new and the saved key still works
        assert (home / "api_key").read_text().strip() == secret
        assert len(second.app.state.ctx.auth.list()) == 1  # type: ignore[attr-defined]


def test_no_bootstrap_when_keys_are_managed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with _app(home, bootstrap_api_key=False) as client:
        assert not (home / "api_key").exists()
        assert client.app.state.ctx.auth.list() == []  # type: ignore[attr-defined]
        assert client.get("/v0/datasets").status_code == 401


@pytest.mark.parametrize("tenant", ["", "A", "-x", "x-", "a/b", "../etc", "a b", "x" * 41, "ü"])
def test_tenant_ids_are_slugs(tmp_path: Path, tenant: str) -> None:
    with _app(tmp_path) as client:
        from api.domain.errors import BadRequest

        with pytest.raises(BadRequest):
            client.app.state.ctx.auth.create_key(tenant)  # type: ignore[attr-defined]


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("FASTUNER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FASTUNER_LOG_JSON", "false")
    monkeypatch.setenv("FASTUNER_BACKGROUND_TASKS", "false")
    for name in ("FASTUNER_API_URL", "FASTUNER_API_KEY", "FASTUNER_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    from api.settings import get_settings

    get_settings.cache_clear()
    return CliRunner()


def test_admin_cli_manages_keys_and_quotas(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["--json", "admin", "create-key", "--tenant", "acme", "--name", "laptop"])
    assert res.exit_code == 0, res.output
    created = json.loads(res.stdout)
    secret, key_id = created["secret"], created["id"]

    res = runner.invoke(cli, ["--api-key", secret, "--json", "whoami"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["tenant_id"] == "acme"

    res = runner.invoke(cli, ["admin", "list-keys", "--tenant", "acme"])
    assert res.exit_code == 0 and key_id in res.output and secret not in res.output

    set_quota = ["--json", "admin", "set-quota", "acme", "--max-concurrent-jobs", "1"]
    res = runner.invoke(cli, [*set_quota, "--allowed-instance-types", "ml.g5.*,ml.g6.xlarge"])
    assert res.exit_code == 0, res.output
    quotas = json.loads(res.stdout)["quotas"]
    allowed = ["ml.g5.*", "ml.g6.xlarge"]
    assert quotas == {"max_concurrent_jobs": 1, "max_endpoints": 4, "allowed_instance_types": allowed}
    res = runner.invoke(cli, ["admin", "show-tenant", "acme"])
    assert res.exit_code == 0 and "0 / 1" in res.output and "ml.g5.*" in res.output
    res = runner.invoke(cli, ["admin", "set-quota", "nobody", "--max-endpoints", "1"])
    assert res.exit_code == 1 and "not_found" in res.output

    res = runner.invoke(cli, ["admin", "revoke-key", key_id])
    assert res.exit_code == 0
    res = runner.invoke(cli, ["--api-key", secret, "whoami"])
    assert res.exit_code == 1 and "unauthorized" in res.output


def test_the_cli_uses_the_local_key_without_being_told(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["--json", "whoami"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["tenant_id"] == "default"
