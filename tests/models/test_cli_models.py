"""`fastuner models list|show` and the model preflight through the CLI (embedded API, local backend)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.api.support import rows, write_jsonl
from tests.models.support import LLAMA, SMOL, fake_pull


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("FASTUNER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FASTUNER_LOG_JSON", "false")
    monkeypatch.delenv("FASTUNER_API_URL", raising=False)
    from api.settings import get_settings

    get_settings.cache_clear()
    return CliRunner()


def flat(text: str) -> str:
    """Output with Rich's line wrapping undone (the console is as wide as the test's terminal)."""
    return " ".join(text.split())


def test_list_and_show(runner: CliRunner, tmp_path: Path, tiny_folder: Path) -> None:
    res = runner.invoke(cli, ["--json", "models", "list"])
    assert res.exit_code == 0, res.output
    items = {m["id"]: m for m in json.loads(res.stdout)["items"]}
    assert items[SMOL]["available"] is False and items[LLAMA]["gated"] is True
    res = runner.invoke(cli, ["models", "list"])
    assert res.exit_code == 0 and SMOL in res.output and "static catalog" in flat(res.output)
    assert f"fastuner models pull {SMOL}" in flat(res.output)  # the fix for the one that can be pulled

    fake_pull(tiny_folder, tmp_path / "home" / "models")
    res = runner.invoke(cli, ["models", "show", SMOL])
    assert res.exit_code == 0, res.output
    assert "on this machine (pulled into $FASTUNER_HOME/models)" in flat(res.output)
    res = runner.invoke(cli, ["models", "show", "evil-corp/x"])
    assert res.exit_code == 1 and "not_found" in res.output


def test_finetune_start_refuses_a_model_not_on_this_machine(runner: CliRunner, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", rows())
    res = runner.invoke(cli, ["--json", "datasets", "upload", str(path), "--name", "d"])
    ds = json.loads(res.stdout)["id"]
    for extra in ([], ["--dry-run"]):
        res = runner.invoke(
            cli, ["finetune", "start", "--dataset", ds, "--model", SMOL, "--max-steps", "2", *extra]
        )
        assert res.exit_code == 1, res.output
        assert "[model_unavailable]" in flat(res.output) and f"run `fastuner models pull {SMOL}`" in flat(
            res.output
        )
    res = runner.invoke(cli, ["--json", "finetune", "start", "--dataset", ds, "--model", LLAMA])
    assert res.exit_code == 1 and json.loads(res.stdout)["code"] == "model_unavailable"
    res = runner.invoke(cli, ["--json", "finetune", "list"])
    assert json.loads(res.stdout)["items"] == []
