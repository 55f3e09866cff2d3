"""The `fastuner` CLI end to end (in-process API), human and --json output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.api.support import rows, write_jsonl


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("FASTUNER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FASTUNER_LOG_JSON", "false")
    monkeypatch.delenv("FASTUNER_API_URL", raising=False)
    from api.settings import get_settings

    get_settings.cache_clear()
    return CliRunner()


def test_upload_list_get_preview_delete(runner: CliRunner, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "cls.jsonl", rows(150, label=True))
    res = runner.invoke(
        cli,
        [
            "--json",
            "datasets",
            "upload",
            str(path),
            "--name",
            "cls",
            "--task-type",
            "classification",
            "--split",
            "0.8,0.2",
        ],
    )
    assert res.exit_code == 0, res.output
    ds = json.loads(res.stdout)
    assert ds["row_counts"] == {"train": 120, "validation": 30}

    res = runner.invoke(cli, ["--json", "datasets", "list"])
    assert [d["id"] for d in json.loads(res.stdout)["items"]] == [ds["id"]]

    res = runner.invoke(cli, ["datasets", "get", ds["id"]])
    assert res.exit_code == 0 and ds["id"] in res.output and "labels" in res.output

    res = runner.invoke(cli, ["--json", "datasets", "preview", ds["id"], "--limit", "2"])
    assert len(json.loads(res.stdout)) == 2

    res = runner.invoke(cli, ["datasets", "upload", str(path), "--name", "again"])
    assert res.exit_code == 0 and "stored" in res.output

    res = runner.invoke(cli, ["datasets", "delete", ds["id"], "--yes"])
    assert res.exit_code == 0
    res = runner.invoke(cli, ["datasets", "get", ds["id"]])
    assert res.exit_code == 1 and "not_found" in res.output and "request id" in res.output


def test_validate_reports_errors_and_exit_code(runner: CliRunner, tmp_path: Path) -> None:
    data = rows(120)
    data[3] = {"input": "", "target": "x"}
    path = write_jsonl(tmp_path / "bad.jsonl", data)
    res = runner.invoke(cli, ["datasets", "validate", str(path)])
    assert res.exit_code == 1
    assert "empty_text" in res.output and "4" in res.output
    res = runner.invoke(cli, ["--json", "datasets", "validate", str(path)])
    assert res.exit_code == 1 and json.loads(res.stdout)["ok"] is False

    res = runner.invoke(cli, ["datasets", "upload", str(path)])
    assert res.exit_code == 1 and "validation_failed" in res.output and "empty_text" in res.output


def test_health(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["--json", "health"])
    assert res.exit_code == 0 and json.loads(res.stdout)["status"] == "ok"
