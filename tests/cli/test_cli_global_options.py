"""--api-url, --api-key and --json work before or after any command (`fastuner datasets validate
FILE --json`), and reach the same place."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import httpx
import pytest
from click.testing import CliRunner

from cli import state as state_module
from cli.client import FastunerClient
from cli.main import cli
from tests.api.support import rows, write_jsonl

GLOBALS = ["--json", "--api-url", "http://api.test", "--api-key", "k"]


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))


PATHS = sorted(command_paths(cli))


def test_the_tree_is_walked() -> None:
    assert ("datasets", "validate") in PATHS and ("finetune", "wait") in PATHS and ("health",) in PATHS
    assert len(PATHS) > 30


@pytest.mark.parametrize("path", PATHS, ids=" ".join)
def test_every_command_takes_the_global_options_in_both_positions(path: tuple[str, ...]) -> None:
    after = CliRunner().invoke(cli, [*path, *GLOBALS, "--help"])
    assert after.exit_code == 0, after.output
    before = CliRunner().invoke(cli, [*GLOBALS, *path, "--help"])
    assert before.exit_code == 0, before.output
    assert "--json" in after.output and "--api-url" in after.output


@pytest.fixture
def connected(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str | None, str | None]]:
    """What the CLI connects to, against a canned API."""
    calls: list[tuple[str | None, str | None]] = []

    @contextmanager
    def fake_connect(api_url: str | None, api_key: str | None = None) -> Iterator[FastunerClient]:
        calls.append((api_url, api_key))
        transport = httpx.MockTransport(lambda r: httpx.Response(200, json={"status": "ok", "db": "ok"}))
        with httpx.Client(transport=transport, base_url="http://canned") as http:
            yield FastunerClient(http)

    monkeypatch.setattr(state_module, "connect", fake_connect)
    monkeypatch.delenv("FASTUNER_API_URL", raising=False)
    monkeypatch.delenv("FASTUNER_API_KEY", raising=False)
    return calls


def test_options_after_the_command_reach_the_client(connected: list[tuple[str | None, str | None]]) -> None:
    res = CliRunner().invoke(cli, ["health", "--api-url", "http://b", "--api-key", "kb", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["status"] == "ok"
    assert connected == [("http://b", "kb")]


def test_the_later_one_wins_and_the_environment_is_the_default(
    connected: list[tuple[str | None, str | None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (
        CliRunner().invoke(cli, ["--api-url", "http://a", "health", "--api-url", "http://b"]).exit_code == 0
    )
    monkeypatch.setenv("FASTUNER_API_URL", "http://env")
    monkeypatch.setenv("FASTUNER_API_KEY", "k-env")
    assert CliRunner().invoke(cli, ["health"]).exit_code == 0
    assert CliRunner().invoke(cli, ["health", "--api-key", "k2"]).exit_code == 0
    assert connected == [("http://b", None), ("http://env", "k-env"), ("http://env", "k2")]


def test_datasets_validate_file_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's example, end to end on the embedded API."""
    monkeypatch.setenv("FASTUNER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FASTUNER_LOG_JSON", "false")
    monkeypatch.delenv("FASTUNER_API_URL", raising=False)
    from api.settings import get_settings

    get_settings.cache_clear()
    path = write_jsonl(tmp_path / "ok.jsonl", rows(120))
    res = CliRunner().invoke(cli, ["datasets", "validate", str(path), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["ok"] is True and report["valid_rows"] == 120
    get_settings.cache_clear()
