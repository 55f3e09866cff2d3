"""The web console in a real Chromium (Playwright), against a real server on the local backend
with the tiny model: sign in with the bootstrap key; a dataset uploaded through the CLI and its
report; a job's chart gaining points while it trains; cancel a second job from its page; deploy
the adapter, run one inference, delete the deployment; another tenant gets 404 on the first
tenant's job; a form post without the CSRF token is refused.

Screenshots of the job page and the costs page go to the test's temporary folder, and to
docs/console-job.png and docs/console-costs.png with FASTUNER_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.console.conftest import LiveServer

pytestmark = pytest.mark.slow
expect: Any = pytest.importorskip("playwright.sync_api").expect
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "uppercase.jsonl"
DOCS = Path(__file__).resolve().parents[2] / "docs"
TRAIN_S = 420_000  # ms: training-driven waits on a loaded 2-core machine
UI_MS = 30_000


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    return {}


@pytest.fixture
def errors() -> list[str]:
    """Script errors and console errors (a CSP violation is one) of the test's page."""
    return []


@pytest.fixture
def page(browser: Any, live_server: LiveServer, errors: list[str]) -> Iterator[Any]:
    """A fresh browser context (no cookies), signed in with the bootstrap key."""
    context = browser.new_context(base_url=live_server.base, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(UI_MS)
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    sign_in(page, live_server.key)
    try:
        yield page
    finally:
        context.close()


def sign_in(page: Any, key: str) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/ui/signin$"))
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/ui/jobs$"))
    expect(page.get_by_role("heading", name="Fine-tune jobs")).to_be_visible()


def api(server: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {server.key}"}, timeout=60)


def start_job(server: LiveServer, dataset_id: str, max_steps: int) -> str:
    body = {
        "dataset_id": dataset_id,
        "base_model": str(server.tiny_model),
        "max_steps": max_steps,
        "hyperparameters": {"log_every": 1, "checkpoint_every": 1000},
    }
    with api(server) as client:
        resp = client.post("/v0/finetune", json=body)
    assert resp.status_code == 201, resp.text
    job_id: str = resp.json()["id"]
    return job_id


INK = """canvas => {
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
  return n;
}"""


def ink(page: Any, selector: str) -> int:
    """How many pixels of a canvas are drawn on (0: blank)."""
    return int(page.locator(selector).evaluate(INK))


def save_shot(page: Any, shots: Path, name: str) -> None:
    path = shots / name
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("FASTUNER_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS / name)


def test_sign_in_with_the_bootstrap_key_and_sign_out(page: Any, live_server: LiveServer) -> None:
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["fastuner_console"]
    assert session["httpOnly"] and session["sameSite"] == "Strict" and session["path"] == "/ui"
    assert live_server.key not in page.content() and live_server.key not in session["value"]
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/ui/signin$"))
    page.goto("/ui/jobs")
    expect(page).to_have_url(re.compile(r"/ui/signin$"))  # signed out: back to the form


def test_cli_upload_shows_the_dataset_and_its_report(
    page: Any, live_server: LiveServer, state: dict[str, Any]
) -> None:
    res = CliRunner().invoke(
        cli,
        [
            "--api-url",
            live_server.base,
            "--api-key",
            live_server.key,
            "--json",
            "datasets",
            "upload",
            str(SAMPLE),
            "--name",
            "upper-cli",
        ],
    )
    assert res.exit_code == 0, res.output
    dataset = json.loads(res.stdout)
    state["dataset"] = dataset["id"]
    page.goto("/ui/datasets")
    link = page.get_by_role("link", name=dataset["id"])
    expect(link).to_be_visible()
    expect(page.get_by_role("row", name=re.compile("upper-cli"))).to_be_visible()
    link.click()
    expect(page.get_by_role("heading", name=re.compile("Dataset upper-cli"))).to_be_visible()
    valid = (
        dataset["row_counts"]["train"] + dataset["row_counts"]["validation"] + dataset["row_counts"]["test"]
    )
    expect(page.locator("#report-summary")).to_contain_text(f"{valid} valid rows")
    expect(page.locator("#split-counts")).to_contain_text(str(dataset["row_counts"]["train"]))
    expect(page.locator("#preview tbody tr")).to_have_count(10)


def test_start_a_job_and_find_it_in_the_list(
    page: Any, live_server: LiveServer, state: dict[str, Any]
) -> None:
    job_id = start_job(live_server, state["dataset"], max_steps=12)  # completes: the adapter below
    state["job"] = job_id
    page.goto("/ui/jobs")
    row = page.get_by_role("row", name=re.compile(job_id))
    expect(row).to_contain_text(str(live_server.tiny_model))
    expect(row).to_contain_text(state["dataset"])
    row.get_by_role("link", name=job_id).click()
    expect(page.get_by_role("heading", name=f"Job {job_id}")).to_be_visible()


def test_watch_the_chart_gain_points_then_cancel_the_job(
    page: Any, live_server: LiveServer, state: dict[str, Any], errors: list[str]
) -> None:
    job_id = start_job(live_server, state["dataset"], max_steps=5000)  # trains until cancelled
    page.goto(f"/ui/jobs/{job_id}")
    counter = page.locator("#points-count")
    expect(counter).not_to_have_text("0", timeout=TRAIN_S)  # the first point arrives over SSE
    expect(page.locator("#stream-state")).to_have_text("running")
    seen = int(counter.inner_text())
    expect(counter).not_to_have_text(str(seen), timeout=TRAIN_S)  # … and more while it trains
    assert int(counter.inner_text()) > seen
    for chart in ("bpt", "s", "lambda", "lr"):
        expect(page.locator(f"#chart-{chart} canvas")).to_have_count(1)
    assert errors == []  # no script error, nothing refused by the CSP
    page.get_by_role("link", name="Cancel this job…").click()
    expect(page.get_by_role("heading", name=f"Cancel job {job_id}?")).to_be_visible()
    page.get_by_role("button", name="Yes, cancel the job").click()
    expect(page).to_have_url(re.compile(f"/ui/jobs/{job_id}$"))
    expect(page.locator("#job-status")).to_contain_text(re.compile("cancelling|cancelled"))
    expect(page.locator("#stream-state")).to_contain_text("cancelled", timeout=TRAIN_S)
    with api(live_server) as client:
        assert client.get(f"/v0/finetune/{job_id}").json()["status"] == "cancelled"


def test_the_first_job_completes_with_its_curves(
    page: Any, live_server: LiveServer, state: dict[str, Any], shots: Path, errors: list[str]
) -> None:
    page.goto(f"/ui/jobs/{state['job']}")
    expect(page.locator("#stream-state")).to_contain_text("completed", timeout=TRAIN_S)
    expect(page.locator("#points-count")).to_have_text("12")
    adapter = page.locator("dd a[href^='/ui/adapters/']")
    page.reload()
    expect(page.locator("#points-count")).to_have_text("12")  # the stream replays the whole run
    expect(adapter).to_be_visible()
    state["adapter"] = adapter.inner_text()
    for chart in ("bpt", "s", "lambda", "lr"):
        assert ink(page, f"#chart-{chart} canvas") > 2000, chart  # axes, ticks and a curve drawn
    assert errors == []
    save_shot(page, shots, "console-job.png")


def test_deploy_try_and_delete(
    page: Any, live_server: LiveServer, state: dict[str, Any], shots: Path, errors: list[str]
) -> None:
    page.goto("/ui/adapters")
    page.get_by_role("link", name=state["adapter"]).click()
    expect(page.locator("#eval")).to_contain_text("bits per token")
    page.get_by_label("Idle TTL (minutes)").fill("30")
    page.get_by_label("Max lifetime (hours, optional)").fill("2")
    page.get_by_role("button", name="Deploy").click()
    expect(page).to_have_url(re.compile(r"/ui/deployments/[a-z0-9_]+$"))
    deployment_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#dep-status")).to_contain_text("in_service", timeout=TRAIN_S)
    page.get_by_label("Prompt").fill("Shout this: amber lotus")
    page.get_by_label("Max new tokens").fill("8")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#answer")).to_be_visible(timeout=TRAIN_S // 2)
    expect(page.locator("#try-result")).to_contain_text("tokens")
    page.goto("/ui/deployments")
    expect(page.locator("#live")).to_contain_text(deployment_id)
    expect(page.locator("#live time[data-countdown]")).to_contain_text(re.compile(r"\d+m \d\ds"))
    assert errors == []  # htmx (polling, the "try it" form) and the countdown ran within the CSP
    save_shot(page, shots, "console-costs.png")
    page.get_by_role("row", name=re.compile(deployment_id)).get_by_role("button", name="Delete").click()
    expect(page).to_have_url(re.compile(f"/ui/deployments/{deployment_id}$"))
    expect(page.locator("#dep-status")).to_contain_text("deleted", timeout=TRAIN_S // 2)
    with api(live_server) as client:
        assert client.get(f"/v0/deployments/{deployment_id}").json()["status"] == "deleted"


def test_another_tenant_gets_404_on_the_job(
    browser: Any, live_server: LiveServer, state: dict[str, Any]
) -> None:
    context = browser.new_context(base_url=live_server.base)
    try:
        page = context.new_page()
        sign_in(page, live_server.other_key)
        resp = page.goto(f"/ui/jobs/{state['job']}")
        assert resp is not None and resp.status == 404
        expect(page.get_by_role("heading", name=re.compile("404"))).to_be_visible()
        expect(page.get_by_role("alert")).to_have_text(f"fine-tune job {state['job']} not found")
        assert page.goto(f"/ui/jobs/{state['job']}/stream").status == 404
        page.goto("/ui/jobs")
        expect(page.get_by_role("link", name=state["job"])).to_have_count(0)
    finally:
        context.close()


def test_a_form_post_without_the_csrf_token_is_refused(page: Any) -> None:
    page.locator("form.signout input[name=csrf]").evaluate("node => node.remove()")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name=re.compile("403"))).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("CSRF")
    resp = page.request.post("/ui/signout", form={"csrf": "forged"}, max_redirects=0)
    assert resp.status == 403
    page.goto("/ui/jobs")  # still signed in: nothing happened
    expect(page.get_by_role("heading", name="Fine-tune jobs")).to_be_visible()


def test_readable_on_a_phone(browser: Any, live_server: LiveServer, state: dict[str, Any]) -> None:
    context = browser.new_context(base_url=live_server.base, viewport={"width": 390, "height": 844})
    context.set_default_timeout(UI_MS)
    try:
        page = context.new_page()
        sign_in(page, live_server.key)
        for path in (
            "/ui/jobs",
            f"/ui/jobs/{state['job']}",
            f"/ui/datasets/{state['dataset']}",
            f"/ui/adapters/{state['adapter']}",
            "/ui/deployments",
        ):
            page.goto(path)
            expect(page.get_by_role("heading", level=1)).to_be_visible()
            overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{path} is {overflow}px wider than the phone"  # tables scroll inside
    finally:
        context.close()
