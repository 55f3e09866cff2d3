"""``make demo`` (``python -m cli.demo``): its scoring and table, and the whole pipeline on the tiny
model (upload → fine-tune --wait → adapter → deploy → batched base/adapter inference on the held-out
prompts → side-by-side table and exact-match line → teardown). The real-model run (SmolLM2, minutes)
is measured in the README, not here."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from cli import demo


def test_exact_match_normalises_whitespace_but_keeps_case() -> None:
    targets = ["AMBER LOTUS", "RIVER STONE", "OPAL"]
    assert demo.exact_match([" AMBER  LOTUS\n", "River Stone", "OPAL!"], targets) == pytest.approx(1 / 3)
    assert demo.exact_match(["AMBER LOTUS", "RIVER\tSTONE", "OPAL"], targets) == 1.0
    assert demo.exact_match([], []) == 0.0


def test_held_out_takes_user_prompt_and_assistant_target_of_each_record() -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": "Shout this: opal"},
                {"role": "assistant", "content": "OPAL"},
            ]
        },
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "u"},
                {"role": "assistant", "content": "A"},
            ]
        },
        {"messages": [{"role": "user", "content": "only a prompt"}]},
        {"messages": [{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"text": "plain"},
    ]
    assert demo.held_out(rows) == [("Shout this: opal", "OPAL"), ("u", "A")]


def test_score_line_and_new_token_bound() -> None:
    assert demo.score_line(40, 0.0, 0.925) == "exact match on 40 held-out prompts: base 0% → adapter 92%"
    assert demo.new_tokens_bound({"task": {"max_new_tokens": 17}}) == 17
    assert demo.new_tokens_bound({"bpt": 1.0}) == demo.DEFAULT_NEW_TOKENS
    assert demo.new_tokens_bound(None) == demo.DEFAULT_NEW_TOKENS


def test_side_by_side_marks_each_answer() -> None:
    table = demo.side_by_side([("Shout this: opal", "OPAL")], ["opal"], ["OPAL"])
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(table)
    text = out.getvalue()
    assert "held-out prompt" in text and "adapter" in text
    line = next(ln for ln in text.splitlines() if "Shout this: opal" in ln)
    assert "✗ opal" in line and "✓ OPAL" in line


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline_on_the_tiny_model(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("FASTUNER_HOME", str(home))
    monkeypatch.setenv("FASTUNER_DEMO_MODEL", str(tiny_model))
    monkeypatch.setenv("FASTUNER_RECONCILE_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("FASTUNER_LOG_JSON", "false")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("FASTUNER_API_URL", raising=False)
    from api.settings import get_settings

    get_settings.cache_clear()
    demo.main(["--model", demo.TINY, "--max-steps", "2", "--shown", "3"])
    out = capsys.readouterr().out
    shown = ["datasets upload", "finetune start", "adapters get", "deployments create", "deployments delete"]
    for command in shown:
        assert f"$ fastuner {command}" in out
    assert "models pull" not in out  # a local folder is never pulled
    (test_file,) = (home / "store").rglob("test.jsonl")
    assert len(test_file.read_text().splitlines()) == 40  # 400 sample rows, split 0.8/0.1/0.1
    assert "POST /v0/inference × 2: 3 held-out prompts" in out
    assert "exact match on 3 held-out prompts: base " in out
    # the engine's task metrics cover the whole test split
    assert "exact match on 40 held-out prompts: base " in out and "(the engine's, whole test split)" in out
    table_rows = [ln for ln in out.splitlines() if "Shout this:" in ln and ("✓" in ln or "✗" in ln)]
    assert len(table_rows) == 3
    from cli.client import connect

    with connect(None) as client:
        assert client.list_deployments(limit=5, live=True)[0] == []
        job = client.list_jobs(limit=1)[0][0]
        assert job.status.value == "completed" and job.adapter_id is not None
