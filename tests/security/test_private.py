"""Issue 12, item 9: private by default.

* ``fastuner.db`` (and its -wal/-shm), job work dirs and the bootstrap API key are the owner's only
  (0600 / 0700) under the usual umask 022;
* API responses carry store-relative URIs (``store://…``) for ``manifest_uri``, split URIs and
  adapter ``uri``, never absolute server paths;
* CLI tables escape control characters (ESC …) in user-provided strings;
* lower-case ``bearer`` is accepted (documented).
On SQLite and PostgreSQL where a database is involved.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from api.app import create_app
from api.backends.base import TrainingSpec, TrainingStatus
from api.db.session import Database
from api.domain.enums import JobStatus
from api.settings import Settings
from tests.api.support import authorize, rows, upload, write_jsonl

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def _umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


class CompletingBackend:
    """Launches nothing; every job has completed with a small adapter."""

    name = "local"

    def start_training(self, spec: TrainingSpec) -> dict[str, Any]:
        return {"job_name": spec.job_name}

    def find_training(self, job_name: str) -> dict[str, Any] | None:
        return {"job_name": job_name}

    def describe_training(self, job_name: str, state: dict[str, Any]) -> TrainingStatus:
        return TrainingStatus(JobStatus.COMPLETED, secondary_status="Completed", billable_seconds=1)

    def stop_training(self, job_name: str, state: dict[str, Any]) -> None:
        return None

    def read_metrics(self, job_name: str, state: dict[str, Any], after_step: int) -> list[dict[str, float]]:
        return []

    def read_logs(self, job_name: str, state: dict[str, Any], tail: int) -> list[str]:
        return []

    def fetch_model(self, job_name: str, state: dict[str, Any], dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
        (dest / "adapter_model.safetensors").write_bytes(b"0")
        (dest / "eval.json").write_text('{"base": {"bpt": 2.0}, "adapter": {"bpt": 1.5}, "tokens": 10}')


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(home=tmp_path / "home", database_url=db_url, log_json=False, background_tasks=False)
    app = create_app(settings, backend=CompletingBackend())  # type: ignore[arg-type]
    with authorize(TestClient(app, raise_server_exceptions=False)) as c:
        yield c


def test_the_embedded_default_creates_private_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home, log_json=False, background_tasks=False)
    with authorize(TestClient(create_app(settings))) as c:
        assert c.get("/v0/datasets").status_code == 200
        db = home / "fastuner.db"
        assert mode(db) == 0o600
        for side in (home / "fastuner.db-wal", home / "fastuner.db-shm"):
            if side.exists():
                assert mode(side) == 0o600, side
        assert mode(settings.api_key_file) == 0o600


def test_an_existing_readable_database_is_narrowed(tmp_path: Path) -> None:
    db_file = tmp_path / "old" / "fastuner.db"
    Database(f"sqlite:///{db_file}").dispose()
    db_file.chmod(0o644)
    Database(f"sqlite:///{db_file}").dispose()
    assert mode(db_file) == 0o600
    assert mode(db_file.parent) == 0o700  # made by the database, for it


def test_local_job_work_dirs_are_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from api.backends import local as local_mod
    from api.backends.local import LocalBackend
    from api.storage.local import LocalStore

    monkeypatch.setattr(local_mod, "spawn_detached", lambda cmd, **kw: os.getpid())
    jobs = tmp_path / "home" / "work" / "jobs"
    backend = LocalBackend(LocalStore(tmp_path / "store"), jobs)
    state = backend.start_training(TrainingSpec("ft_x", "t", "job-x", {"seed": "1"}, {}, "o", "c", "local"))
    root = Path(state["root"])
    assert mode(jobs) == 0o700 and mode(jobs.parent) == 0o700 and mode(root) == 0o700
    jobs.chmod(0o755)  # a folder from an older version is narrowed at the next launch
    backend.start_training(TrainingSpec("ft_y", "t", "job-y", {"seed": "1"}, {}, "o", "c", "local"))
    assert mode(jobs) == 0o700


def test_responses_carry_store_relative_uris(client: TestClient, tmp_path: Path) -> None:
    ds = upload(client, write_jsonl(tmp_path / "d.jsonl", rows())).json()
    server_path = str(tmp_path)
    assert ds["manifest_uri"] == f"store://default/datasets/{ds['id']}/manifest.json"
    manifest = client.get(f"/v0/datasets/{ds['id']}/manifest")
    assert manifest.status_code == 200 and server_path not in manifest.text and "file://" not in manifest.text
    assert manifest.json()["splits"]["train"]["uri"].startswith("store://default/datasets/")
    job = client.post("/v0/finetune", json={"dataset_id": ds["id"], "base_model": SMOL, "max_steps": 2})
    assert job.status_code == 201, job.text
    client.app.state.ctx.reconciler.run_once()  # type: ignore[attr-defined]
    done = client.get(f"/v0/finetune/{job.json()['id']}").json()
    assert done["status"] == "completed" and done["adapter_id"], done
    adapter = client.get(f"/v0/adapters/{done['adapter_id']}")
    assert adapter.json()["uri"] == f"store://default/adapters/{done['adapter_id']}"
    for url in ("/v0/datasets", "/v0/adapters", "/v0/finetune", f"/v0/datasets/{ds['id']}"):
        body = client.get(url).text
        assert server_path not in body and "file://" not in body, url
    download = client.get(f"/v0/adapters/{done['adapter_id']}/download")
    assert download.status_code == 200  # the relative URI still finds the files


def test_lower_case_bearer_is_accepted(client: TestClient) -> None:
    key = client.headers["Authorization"].split(" ", 1)[1]
    assert client.get("/v0/datasets", headers={"Authorization": f"bearer {key}"}).status_code == 200


def test_cli_tables_escape_control_characters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from api.settings import get_settings
    from cli.main import cli
    from cli.output import cell, kv_table, table

    assert cell("a\x1b[31mred\x07\nb\u202e") == "a\\x1b[31mred\\x07\\nb\\u202e"
    assert cell(None) == "" and cell(3) == "3" and cell("plain ü 🙂") == "plain ü 🙂"
    for t in (table(None, ["x"], [["\x1b]0;owned\x07"]]), kv_table(None, [("k", "\x1b[2J")])):
        assert not any("\x1b" in str(c) for col in t.columns for c in col._cells)

    monkeypatch.setenv("FASTUNER_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        name = "evil\x1b[2J\x1b]0;pwned\x07[bold]x[/bold]"
        made = runner.invoke(cli, ["admin", "create-key", "--tenant", "acme", "--name", name])
        assert made.exit_code == 0, made.output
        listed = runner.invoke(cli, ["admin", "list-keys"])
        assert listed.exit_code == 0, listed.output
        assert "\x1b" not in listed.output and "\x07" not in listed.output
        assert "evil" in listed.output and "\\x" in listed.output  # shown escaped (the cell may wrap)
        assert "\\x1b[2J" in cell(name) and "[bold]" in cell(name)
    finally:
        get_settings.cache_clear()
