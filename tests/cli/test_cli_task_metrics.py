"""Task metrics in the CLI: ``fastuner adapters get`` (base vs adapter per metric, samples),
``adapters list`` and the one-line summary at the end of ``finetune wait`` / ``start --wait``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from cli.client import FastunerClient
from cli.main import cli
from cli.state import State
from cli.task_metrics import comparison, pct, summary_line
from tests.cli.test_cli_finetune_wait import JOB, job, sse

ADAPTER = "adp_1"
GENERATION = {
    "kind": "generation",
    "rows": 200,
    "max_new_tokens": 17,
    "seconds": 21.44,
    "split": "test",
    "base": {"exact_match": 0.03},
    "adapter": {"exact_match": 0.91},
    "samples": [
        {
            "prompt": "Shout this: amber lotus",
            "target": "AMBER LOTUS",
            "base": "Amber lotus!",
            "adapter": "AMBER LOTUS",
        },
        {
            "prompt": "Shout this: [bold]koala[/]",
            "target": "[BOLD]KOALA[/]",
            "base": "koala\x1b[31m",
            "adapter": "KOALA " * 30,
        },
    ],
}
CLASSIFICATION = {
    "kind": "classification",
    "rows": 40,
    "max_new_tokens": 6,
    "seconds": 3.0,
    "split": "validation",
    "base": {"accuracy": 0.5, "macro_f1": 1 / 3},
    "adapter": {"accuracy": 0.95, "macro_f1": 0.949},
    "labels": ["negative", "positive"],
    "samples": [{"prompt": "I hated the tent.", "target": "negative", "base": "The", "adapter": "negative"}],
}


def adapter(task: Any | None) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "rows": 40,
        "tokens": 400,
        "base": {"bpt": 9.1, "perplexity": 549.0},
        "adapter": {"bpt": 2.5, "perplexity": 5.66},
    }
    if task is not None:
        ev["task"] = task
    return {
        "id": ADAPTER,
        "job_id": JOB,
        "dataset_id": "ds_x",
        "dataset_sha256": "a" * 64,
        "base_model": "tiny",
        "uri": "store://a",
        "eval_metrics": ev,
        "config": {"lora_r": 8},
        "created_at": datetime(2026, 1, 1, tzinfo=UTC).isoformat(),
    }


def install(monkeypatch: pytest.MonkeyPatch, task: Any | None, *, adapter_status: int = 200) -> list[str]:
    """An API with one completed job whose adapter carries ``task``; returns the paths asked."""
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.url.path == f"/v0/adapters/{ADAPTER}":
            if adapter_status != 200:
                return httpx.Response(adapter_status, json={"code": "x", "message": "no", "request_id": "r"})
            return httpx.Response(200, json=adapter(task))
        if request.url.path == "/v0/adapters":
            return httpx.Response(200, json={"items": [adapter(task)], "next_cursor": None})
        if request.url.params.get("follow") == "true":
            return httpx.Response(200, text=sse([("status", {"status": "completed", "adapter_id": ADAPTER})]))
        if request.url.path == f"/v0/finetune/{JOB}":
            return httpx.Response(200, json=job("completed" if len(paths) > 1 else "running", step=2))
        if request.url.path == "/v0/finetune":
            return httpx.Response(201, json=job("running", step=2))
        return httpx.Response(404, json={"code": "not_found", "message": "nope", "request_id": "r1"})

    client = FastunerClient(httpx.Client(transport=httpx.MockTransport(handler), base_url="http://api"))
    monkeypatch.setattr(State, "client", lambda self: client)
    monkeypatch.setenv("COLUMNS", "220")
    return paths


def test_formatting_helpers() -> None:
    assert summary_line(GENERATION) == "exact match 3% → 91% (200 held-out rows)"
    assert comparison(CLASSIFICATION) == "accuracy 50% → 95%, macro-F1 33% → 95%"
    assert summary_line({"kind": "generation", "base": {}, "adapter": {"exact_match": "x"}}) == (
        "exact match ? → ? (? held-out rows)"
    )
    assert pct(float("nan")) == "?" and pct(True) == "?" and pct(1) == "100%"


def test_adapters_get_shows_generation_metrics_and_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, GENERATION)
    res = CliRunner().invoke(cli, ["adapters", "get", ADAPTER])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "exact match 3% → 91% (200 held-out rows)" in out  # the summary row
    assert "generation · 200 rows of test · ≤ 17 new tokens · 21.4 s" in out
    metric_line = next(ln for ln in out.splitlines() if "exact match" in ln and "→" not in ln)
    assert [c.strip() for c in metric_line.split("│")[1:4]] == ["exact match", "3%", "91%"]
    assert "Shout this: amber lotus" in out and "Amber lotus!" in out and "AMBER LOTUS" in out
    assert "Shout this: [bold]koala[/]" in out  # user text is not read as markup
    assert "\x1b" not in out and "\\x1b" in out  # nor reaches the terminal as an escape
    assert "…" in out  # the long answer is clipped
    assert "val BPT" in out  # the loss evaluation is still shown


def test_adapters_get_shows_classification_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, CLASSIFICATION)
    res = CliRunner().invoke(cli, ["adapters", "get", ADAPTER])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "accuracy 50% → 95%, macro-F1 33% → 95% (40 held-out rows)" in out
    assert "labels: negative, positive" in out and "rows of validation" in out
    rows = {ln.split("│")[1].strip(): ln.split("│")[2:4] for ln in out.splitlines() if ln.count("│") >= 4}
    assert [c.strip() for c in rows["accuracy"]] == ["50%", "95%"]
    assert [c.strip() for c in rows["macro-F1"]] == ["33%", "95%"]
    assert "I hated the tent." in out


@pytest.mark.parametrize("task", [None, "garbage", {"kind": "generation"}])
def test_adapters_get_without_or_with_a_malformed_task(monkeypatch: pytest.MonkeyPatch, task: Any) -> None:
    install(monkeypatch, task)
    res = CliRunner().invoke(cli, ["adapters", "get", ADAPTER])
    assert res.exit_code == 0, res.output
    if isinstance(task, dict):
        assert "exact match ? → ? (? held-out rows)" in res.output
    else:
        assert "task" not in res.output and "val BPT" in res.output


def test_adapters_get_json_carries_the_task_as_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, GENERATION)
    res = CliRunner().invoke(cli, ["--json", "adapters", "get", ADAPTER])
    assert json.loads(res.stdout)["eval_metrics"]["task"] == GENERATION


def test_adapters_list_has_a_task_column(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, CLASSIFICATION)
    res = CliRunner().invoke(cli, ["adapters", "list"])
    assert res.exit_code == 0, res.output
    assert "task base → adapter" in res.output and "accuracy 50% → 95%, macro-F1 33% → 95%" in res.output


def test_wait_ends_with_the_task_summary_line(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = install(monkeypatch, GENERATION)
    res = CliRunner().invoke(cli, ["finetune", "wait", JOB])
    assert res.exit_code == 0, res.output
    last = [ln for ln in res.output.splitlines() if ln.strip()][-1]
    assert last == "✓ exact match 3% → 91% (200 held-out rows)"
    assert paths.count(f"/v0/adapters/{ADAPTER}") == 1


def test_start_wait_ends_with_the_task_summary_line(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, CLASSIFICATION)
    res = CliRunner().invoke(cli, ["finetune", "start", "--dataset", "ds_x", "--model", "tiny", "--wait"])
    assert res.exit_code == 0, res.output
    last = [ln for ln in res.output.splitlines() if ln.strip()][-1]
    assert last == "✓ accuracy 50% → 95%, macro-F1 33% → 95% (40 held-out rows)"


def test_wait_json_and_adapters_without_task_print_no_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = install(monkeypatch, GENERATION)
    res = CliRunner().invoke(cli, ["--json", "finetune", "wait", JOB])
    assert res.exit_code == 0 and json.loads(res.stdout)["adapter_id"] == ADAPTER  # pure JSON
    assert f"/v0/adapters/{ADAPTER}" not in paths
    install(monkeypatch, None)
    res = CliRunner().invoke(cli, ["finetune", "wait", JOB])
    assert res.exit_code == 0 and "held-out rows" not in res.output
    install(monkeypatch, GENERATION, adapter_status=503)  # the summary is best effort
    res = CliRunner().invoke(cli, ["finetune", "wait", JOB])
    assert res.exit_code == 0 and "held-out rows" not in res.output
