"""Task metrics through the whole control plane on the local backend (the engine as a subprocess):
the dataset's test split reaches the engine, ``eval.json["task"]`` reaches the adapter record,
``GET /v0/adapters/{id}``, ``fastuner adapters get`` and the ``--wait`` view's last line — for a
generation set (uppercase) and a classification set (sentiment, ``--task-type classification``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    ("sample", "task_type", "metrics"),
    [
        ("uppercase.jsonl", "generation", {"exact_match"}),
        ("sentiment.jsonl", "classification", {"accuracy", "macro_f1"}),
    ],
)
def test_task_metrics_reach_the_adapter_and_the_cli(
    tmp_path: Path,
    tiny_model: Path,
    monkeypatch: pytest.MonkeyPatch,
    sample: str,
    task_type: str,
    metrics: set[str],
) -> None:
    monkeypatch.setenv("FASTUNER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FASTUNER_RECONCILE_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("FASTUNER_LOG_JSON", "false")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("FASTUNER_API_URL", raising=False)
    from api.settings import get_settings

    get_settings.cache_clear()
    runner = CliRunner()
    res = runner.invoke(
        cli, ["--json", "datasets", "upload", str(EXAMPLES / sample), "--task-type", task_type]
    )
    assert res.exit_code == 0, res.output
    ds = json.loads(res.stdout)
    n_test = ds["row_counts"]["test"]
    assert n_test > 0
    start = ["finetune", "start", "--dataset", ds["id"], "--model", str(tiny_model), "--max-steps", "6"]
    res = runner.invoke(cli, [*start, "--hp", "log_every=2", "--hp", "task_eval_rows=16", "--wait"])
    assert res.exit_code == 0, res.output
    last = [ln for ln in res.output.splitlines() if ln.strip()][-1]
    rows = min(16, n_test)
    word = "exact match" if task_type == "generation" else "accuracy"
    assert last.startswith(f"✓ {word} ") and last.endswith(f"({rows} held-out rows)"), last

    job = json.loads(runner.invoke(cli, ["--json", "finetune", "list"]).stdout)["items"][0]
    assert job["hyperparameters"]["task_type"] == task_type  # set from the dataset
    adapter = json.loads(runner.invoke(cli, ["--json", "adapters", "get", job["adapter_id"]]).stdout)
    task = adapter["eval_metrics"]["task"]  # the API's adapter record carries eval.json's task
    assert task["kind"] == task_type and task["split"] == "test" and task["rows"] == rows
    for side in ("base", "adapter"):
        assert set(task[side]) == metrics and all(0 <= v <= 1 for v in task[side].values())
    assert len(task["samples"]) == min(8, rows)
    if task_type == "classification":
        assert task["labels"] == ["negative", "positive"]

    res = runner.invoke(cli, ["adapters", "get", job["adapter_id"]])
    assert res.exit_code == 0, res.output
    assert f"task metrics — {task_type} · {rows} rows of test" in res.output
    assert task["samples"][0]["prompt"][:30] in res.output
    get_settings.cache_clear()
