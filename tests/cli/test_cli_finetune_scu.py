"""What `fastuner finetune` shows of the SCU controller: bits per token, Ŝ against the target band,
λ, and a warning while the target is unreachable (--wait view, `metrics` table, `get`, `--plot`)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from api.domain.finetune import MetricPoint
from cli import plot as plot_module
from cli.client import FastunerClient
from cli.main import cli
from cli.state import State
from tests.support.api_json import job_json

JOB_ID = "ft_scu0001"
PNG = b"\x89PNG\r\n\x1a\n"


def record(step: int, *, s_hat: float = 0.031, lam: float = 1.02, unreachable: int = 0) -> dict[str, float]:
    """One record as the engine writes it (scu/metrics_format.py TRAIN_KEYS)."""
    fixed = {"epoch": step / 100, "loss_bpt": 3.35, "data_bpt": 3.33, "param_bpt": 0.0123, "s": 0.0036}
    scu = {"s_hat": s_hat, "target_s": 0.03, "band": 0.1, "lambda": lam, "unreachable": unreachable}
    return {"step": step, **fixed, **scu, "lr": 2e-4, "tokens_per_s": 812.3, "eta_s": 41}


def old_record(step: int) -> dict[str, float]:
    """A record from an engine before loss_bpt: ``loss`` in nats, no Ŝ, target or band."""
    return {"step": step, "loss": 2.31, "data_bpt": 3.33, "param_bpt": 0.012, "s": 0.0036, "lambda": 1.02}


def job(latest: dict[str, float] | None, *, status: str = "completed", **hp: Any) -> dict[str, Any]:
    return job_json(JOB_ID, status, latest=latest, hyperparameters={"max_steps": 100, **hp})


def points(records: list[dict[str, float]]) -> list[dict[str, Any]]:
    return [{"step": int(r["step"]), "values": {k: v for k, v in r.items() if k != "step"}} for r in records]


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The API the CLI talks to, as canned JSON per path; the CLI goes through the real SDK client."""
    answers: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/v0/finetune":
            return httpx.Response(201, json=answers[f"/v0/finetune/{JOB_ID}"])
        if request.url.params.get("follow") == "true":  # the event stream: the job's status
            j = answers[f"/v0/finetune/{JOB_ID}"]
            data = json.dumps({"status": j["status"], "adapter_id": j["adapter_id"]})
            return httpx.Response(200, text=f"event: status\ndata: {data}\n\n")
        return httpx.Response(200, json=answers[request.url.path])

    client = FastunerClient(httpx.Client(transport=httpx.MockTransport(handler), base_url="http://api"))
    monkeypatch.setattr(State, "client", lambda self: client)
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    return answers


def run(*args: str) -> str:
    res = CliRunner().invoke(cli, list(args))
    assert res.exit_code == 0, res.output
    return res.output


def start_wait() -> str:
    return run("finetune", "start", "--dataset", "ds_x", "--model", "tiny", "--wait")


# -- the --wait view ----------------------------------------------------------------------------
def test_wait_view_shows_bits_per_token_and_s_hat_in_band(api: dict[str, Any]) -> None:
    api[f"/v0/finetune/{JOB_ID}"] = job(record(40, s_hat=0.031))
    out = start_wait()
    assert "3.3500 bits/token" in out and "DataBPT" in out and "ParamBPT" in out
    assert "Ŝ" in out and "0.031 (target 0.03, band 0.0271–0.0332) ✓ in band" in out
    assert "λ" in out and "1.02" in out and "812" in out
    assert "⚠" not in out and "pinned" not in out


@pytest.mark.parametrize("controller", ["off", "fixed"])
def test_wait_view_shows_no_target_when_the_scu_holds_lambda(api: dict[str, Any], controller: str) -> None:
    api[f"/v0/finetune/{JOB_ID}"] = job(record(40, s_hat=0.9), scu=controller)
    out = start_wait()
    assert f"{controller} (λ held; no target for S)" in out
    s_hat_rows = [line for line in out.splitlines() if line.startswith("Ŝ")]
    assert s_hat_rows and all("0.9" in r and "target" not in r and "band" not in r for r in s_hat_rows)


@pytest.mark.parametrize(("s_hat", "where"), [(0.05, "▲ above band"), (0.01, "▼ below band")])
def test_wait_view_says_where_s_hat_is_outside_the_band(
    api: dict[str, Any], s_hat: float, where: str
) -> None:
    api[f"/v0/finetune/{JOB_ID}"] = job(record(40, s_hat=s_hat))
    out = start_wait()
    assert where in out and "in band" not in out


def test_wait_view_warns_while_the_target_is_unreachable(api: dict[str, Any]) -> None:
    api[f"/v0/finetune/{JOB_ID}"] = job(record(120, s_hat=0.05, lam=10.0, unreachable=1))
    out = " ".join(start_wait().split())  # the warning wraps
    assert out.count("⚠ target") == 2  # the live view's last frame, then the job summary
    assert "SCU target S*=0.03 unreachable: λ pinned at its maximum 10" in out
    assert "S stays above the target" in out and "raise lambda_max or target_s" in out


def test_wait_view_warns_at_the_lower_bound_too(api: dict[str, Any]) -> None:
    api[f"/v0/finetune/{JOB_ID}"] = job(record(120, s_hat=0.001, lam=1e-4, unreachable=-1))
    out = " ".join(start_wait().split())
    assert "λ pinned at its minimum 0.0001" in out and "lower target_s or lambda_min" in out


def test_wait_view_shows_the_latest_validation_bpt_and_its_step(api: dict[str, Any]) -> None:
    api[f"/v0/finetune/{JOB_ID}"] = job({**record(40), "val_bpt": 3.125})
    out = start_wait()
    assert "validation" in out and "3.1250 bits/token (step 40)" in out


def test_the_view_carries_validation_forward_between_evaluations() -> None:
    from cli.job_view import carry_validation

    first = carry_validation({}, {**record(10), "val_bpt": 3.5})
    assert first["val_bpt"] == 3.5 and first["val_step"] == 10
    later = carry_validation(first, record(12))  # a record without a validation
    assert later["val_bpt"] == 3.5 and later["val_step"] == 10 and later["step"] == 12
    assert "val_bpt" not in carry_validation({}, record(12))


def test_wait_view_reads_old_records(api: dict[str, Any]) -> None:
    api[f"/v0/finetune/{JOB_ID}"] = job(old_record(10), target_s=0.004)
    out = start_wait()
    assert f"{2.31 / math.log(2):.4f} bits/token" in out  # nats -> bits
    assert "0.0036 (target 0.004)" in out and "⚠" not in out


def test_get_warns_while_the_target_is_unreachable(api: dict[str, Any]) -> None:
    api[f"/v0/finetune/{JOB_ID}"] = job(record(120, lam=10.0, unreachable=1), status="running")
    out = " ".join(run("finetune", "get", JOB_ID).split())
    assert "unreachable: λ pinned at its maximum 10" in out


# -- `finetune metrics` -------------------------------------------------------------------------
EPISODES = [
    record(10, s_hat=0.031),
    record(20, s_hat=0.05),
    record(30, s_hat=0.05, lam=10.0, unreachable=1),
    record(40, s_hat=0.05, lam=10.0, unreachable=1),
    record(50, s_hat=0.03),
    record(60, s_hat=0.001, lam=1e-4, unreachable=-1),
]


def test_metrics_table_in_bits_with_band_and_one_warning_per_episode(api: dict[str, Any]) -> None:
    api[f"/v0/finetune/{JOB_ID}/metrics"] = points(EPISODES)
    out = run("finetune", "metrics", JOB_ID)
    assert "target S* 0.03, band 0.02715–0.03316; bits per token" in out
    for header in ("loss bpt", "DataBPT", "ParamBPT", "Ŝ", "λ", "Ŝ vs band"):
        assert header in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.startswith("│")}
    assert "3.35" in rows["10"] and "✓" in rows["10"]
    assert "▲ above" in rows["20"]
    assert "⚠ λ at max" in rows["30"] and "⚠ λ at max" in rows["40"]
    assert "✓" in rows["50"] and "⚠ λ at min" in rows["60"]
    flat = " ".join(out.split())
    assert flat.count("⚠ SCU target") == 2
    assert "unreachable since step 30: λ pinned at its maximum 10" in flat
    assert "unreachable since step 60: λ pinned at its minimum 0.0001" in flat


def test_metrics_table_reads_old_records(api: dict[str, Any]) -> None:
    api[f"/v0/finetune/{JOB_ID}/metrics"] = points([old_record(10), old_record(20)])
    out = run("finetune", "metrics", JOB_ID)
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert len(rows) == 2 and f"{2.31 / math.log(2):.4g}" in rows[0]
    assert "⚠" not in out


def test_metrics_table_has_validation_where_measured(api: dict[str, Any]) -> None:
    api[f"/v0/finetune/{JOB_ID}/metrics"] = points([record(10), {**record(20), "val_bpt": 3.0625}])
    out = run("finetune", "metrics", JOB_ID)
    assert "val BPT" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.startswith("│")}
    assert "3.062" in rows["20"] and "3.062" not in rows["10"]


# -- `finetune metrics --plot` ------------------------------------------------------------------
def test_plot_series_from_new_records() -> None:
    data = plot_module.series([MetricPoint.model_validate(p) for p in points(EPISODES)])
    assert data.loss_bpt == [3.35] * 6 and data.param_bpt == [0.0123] * 6
    assert data.has_band
    assert data.band_low[0] == pytest.approx(0.03 * math.exp(-0.1))
    assert data.band_high[0] == pytest.approx(0.03 * math.exp(0.1))
    assert data.unreachable == [(30, 40, 1), (60, 60, -1)]


def test_plot_series_has_validation_only_where_measured() -> None:
    recs = [record(10), {**record(20), "val_bpt": 3.0}]
    data = plot_module.series([MetricPoint.model_validate(p) for p in points(recs)])
    assert math.isnan(data.val_bpt[0]) and data.val_bpt[1] == 3.0


def test_plot_series_from_old_records() -> None:
    data = plot_module.series([MetricPoint.model_validate(p) for p in points([old_record(10)])])
    assert data.loss_bpt == [pytest.approx(2.31 / math.log(2))]
    assert not data.has_band and data.unreachable == []
    assert math.isnan(data.s_hat[0])


WITH_VALIDATION = [record(10), {**record(20), "val_bpt": 3.0}, record(30), {**record(40), "val_bpt": 2.9}]


@pytest.mark.parametrize(
    "records",
    [EPISODES, [old_record(10), old_record(20)], WITH_VALIDATION],
    ids=["new", "old", "validation"],
)
def test_plot_writes_a_png(api: dict[str, Any], tmp_path: Path, records: list[dict[str, float]]) -> None:
    api[f"/v0/finetune/{JOB_ID}/metrics"] = points(records)
    api[f"/v0/finetune/{JOB_ID}"] = job(records[-1], target_s=0.004)
    out = tmp_path / "plots" / "m.png"
    res = CliRunner().invoke(cli, ["--json", "finetune", "metrics", JOB_ID, "--plot", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == PNG
    assert [p["step"] for p in json.loads(res.stdout)] == [int(r["step"]) for r in records]


def test_events_list_the_unreachable_warning(api: dict[str, Any]) -> None:
    at = datetime(2026, 1, 1, 10, 0, tzinfo=UTC).isoformat()
    message = "SCU target S*=0.03 unreachable since step 30: λ pinned at its maximum 10 [...]"
    api[f"/v0/finetune/{JOB_ID}/events"] = [
        {"id": 1, "kind": "status", "message": "queued → provisioning", "data": {}, "at": at},
        {"id": 2, "kind": "warning", "message": message, "data": {"step": 30, "unreachable": 1}, "at": at},
    ]
    out = " ".join(run("finetune", "logs", JOB_ID, "--events").split())
    assert "warning" in out and "unreachable since step 30" in out and "[...]" in out
