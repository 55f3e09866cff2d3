"""The web console over plain HTTP: cookie flags, CSRF refusals, the CSP header, tenant isolation,
no API key in any page, single-use sign-in links, and the vendored files' pinned hashes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.console.session import SESSION_COOKIE
from api.console.web import CSP
from api.settings import Settings
from tests.api.support import rows, upload, write_jsonl
from tests.console.support import csrf_of, sign_in

VENDOR = Path(__file__).resolve().parents[2] / "api" / "console" / "static" / "vendor"
PAGES = ["/ui/jobs", "/ui/datasets", "/ui/adapters", "/ui/deployments", "/ui/drops"]


class World:
    def __init__(self, app: Any, key_a: str, key_b: str, dataset_id: str) -> None:
        self.app, self.key_a, self.key_b, self.dataset_id = app, key_a, key_b, dataset_id

    def client(self) -> TestClient:
        return TestClient(self.app)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    settings = Settings(home=tmp_path / "home", log_json=False, background_tasks=False)
    app = create_app(settings)
    key_a = app.state.local_api_key
    key_b = app.state.ctx.auth.create_key("tenant-b").secret
    with TestClient(app) as api:
        api.headers["Authorization"] = f"Bearer {key_a}"
        ds = upload(
            api,
            write_jsonl(tmp_path / "d.jsonl", rows(120, label=True)),
            name="labelled",
            task_type="classification",
        )
        assert ds.status_code == 201, ds.text
        yield World(app, key_a, key_b, ds.json()["id"])


def _cookie_header(resp: Any, name: str) -> str:
    headers = [v for k, v in resp.headers.multi_items() if k == "set-cookie" and v.startswith(name + "=")]
    assert len(headers) == 1, resp.headers
    return str(headers[0])


def test_sign_in_sets_a_strict_httponly_session_cookie_and_never_the_key(world: World) -> None:
    client = world.client()
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui/jobs"
    resp = client.get("/ui/jobs", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/signin"
    form = client.get("/ui/signin")
    resp = client.post(
        "/ui/signin", data={"api_key": world.key_a, "csrf": csrf_of(form.text)}, follow_redirects=False
    )
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/jobs"
    cookie = _cookie_header(resp, SESSION_COOKIE)
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/ui"} <= flags
    token = cookie.split(";")[0].split("=", 1)[1]
    assert world.key_a not in token and world.key_a[4:20] not in token
    pages = [*PAGES, f"/ui/datasets/{world.dataset_id}", f"/ui/datasets/{world.dataset_id}?split=test"]
    for page in pages:
        html = client.get(page)
        assert html.status_code == 200, (page, html.text)
        assert world.key_a not in html.text and world.key_a[4:16] not in html.text, page
    assert "labelled" in client.get("/ui/datasets").text


def test_a_wrong_key_is_refused_and_the_api_does_not_take_the_cookie(world: World) -> None:
    client = world.client()
    form = client.get("/ui/signin")
    resp = client.post("/ui/signin", data={"api_key": "fsk_wrong", "csrf": csrf_of(form.text)})
    assert resp.status_code == 401 and "not valid" in resp.text
    assert SESSION_COOKIE not in client.cookies
    sign_in(client, world.key_a)
    assert client.get("/v0/datasets").status_code == 401  # the API wants the bearer key, not the cookie


def test_every_page_has_the_strict_csp_and_no_inline_script_or_style(world: World) -> None:
    client = sign_in(world.client(), world.key_a)
    assert CSP == (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    for page in ["/ui/signin", *PAGES, f"/ui/datasets/{world.dataset_id}", "/ui/jobs/ftj_missing"]:
        resp = client.get(page)
        assert resp.headers["content-security-policy"] == CSP, page
        assert resp.headers["x-frame-options"] == "DENY" and resp.headers["cache-control"] == "no-store"
        assert resp.headers["referrer-policy"] == "no-referrer"
        html = resp.text
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), page  # every script is a file
        assert not re.search(r"\sstyle=|<style|\son[a-z]+=", html), page
        for src in re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', html):
            assert client.get(src).status_code == 200, src
        assert "http://" not in html and "https://" not in html  # nothing from another origin
    static = client.get("/ui/static/console.js")
    assert static.headers["content-security-policy"] == CSP and "cache-control" not in static.headers


def test_form_posts_without_the_csrf_token_are_refused(world: World) -> None:
    client = sign_in(world.client(), world.key_a)
    token = csrf_of(client.get("/ui/jobs").text)
    posts = [
        "/ui/signout",
        "/ui/jobs/ftj_x/cancel",
        "/ui/adapters/ad_x/deploy",
        "/ui/deployments/dep_x/delete",
    ]
    for path in posts:
        for data in ({}, {"csrf": "forged"}, {"csrf": token[:-2] + "xx"}):
            resp = client.post(path, data=data, follow_redirects=False)
            assert resp.status_code == 403 and "CSRF" in resp.text, (path, data, resp.status_code)
    resp = client.post("/ui/deployments/dep_x/try", data={"prompt": "hi"}, follow_redirects=False)
    assert resp.status_code == 403
    # Another session's token is refused too (session-bound, not a global token).
    other = sign_in(world.client(), world.key_a)
    assert client.post("/ui/signout", data={"csrf": csrf_of(other.get("/ui/jobs").text)}).status_code == 403
    # With the token, sign-out works and ends the session.
    resp = client.post("/ui/signout", data={"csrf": token}, follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/signin"
    assert client.get("/ui/jobs", follow_redirects=False).status_code == 303
    # The sign-in form has its own (double-submit) token.
    fresh = world.client()
    fresh.get("/ui/signin")
    resp = fresh.post("/ui/signin", data={"api_key": world.key_a}, follow_redirects=False)
    assert resp.status_code == 403 and SESSION_COOKIE not in fresh.cookies


def test_another_tenant_gets_the_same_404_as_the_api(world: World) -> None:
    a = sign_in(world.client(), world.key_a)
    b = sign_in(world.client(), world.key_b)
    page = f"/ui/datasets/{world.dataset_id}"
    assert a.get(page).status_code == 200
    resp = b.get(page)
    api = world.client().get(
        f"/v0/datasets/{world.dataset_id}", headers={"Authorization": f"Bearer {world.key_b}"}
    )
    assert resp.status_code == api.status_code == 404
    assert api.json()["message"] in resp.text  # the same "not found" as the API, nothing more
    assert "labelled" not in b.get("/ui/datasets").text
    assert b.get("/ui/jobs/ftj_none").status_code == 404
    assert b.get("/ui/jobs/ftj_none/stream").status_code == 404
    assert b.get("/ui/adapters/ad_none/download").status_code == 404


def test_sign_in_links_are_single_use_and_need_the_key(world: World) -> None:
    api = world.client()
    assert api.post("/v0/console/signin-token").status_code == 401
    resp = api.post("/v0/console/signin-token", headers={"Authorization": f"Bearer {world.key_a}"})
    assert resp.status_code == 200
    link = resp.json()
    assert link["expires_in"] == 60 and world.key_a not in link["path"]
    browser = world.client()
    first = browser.get(link["path"], follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/ui/jobs"
    assert browser.get("/ui/jobs").status_code == 200
    again = world.client().get(link["path"], follow_redirects=False)
    assert again.status_code == 401 and SESSION_COOKIE not in again.cookies
    forged = link["path"][:-4] + "AAAA"
    assert world.client().get(forged, follow_redirects=False).status_code == 401


def test_revoking_the_key_ends_its_sessions(world: World) -> None:
    client = sign_in(world.client(), world.key_b)
    assert client.get("/ui/jobs").status_code == 200
    ctx = world.app.state.ctx
    key_id = next(k.id for k in ctx.auth.list("tenant-b"))
    ctx.auth.revoke(key_id)
    resp = client.get("/ui/jobs", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/signin"
    assert client.get("/ui/jobs/ftj_x/stream", follow_redirects=False).status_code == 401


def test_expired_sessions_are_refused(world: World) -> None:
    signer = world.app.state.console_signer
    key_id = next(k.id for k in world.app.state.ctx.auth.list("default"))
    signer.session_seconds = -1
    client = world.client()
    client.cookies.set(SESSION_COOKIE, signer.new_session(key_id, "default"), path="/ui")
    assert client.get("/ui/jobs", follow_redirects=False).status_code == 303
    signer.session_seconds = 3600
    client.cookies.set(SESSION_COOKIE, signer.new_session(key_id, "tenant-b"), path="/ui")  # wrong tenant
    assert client.get("/ui/jobs", follow_redirects=False).status_code == 303
    client.cookies.set(SESSION_COOKIE, signer.new_session(key_id, "default"), path="/ui")
    assert client.get("/ui/jobs", follow_redirects=False).status_code == 200


def test_the_dataset_page_shows_the_report_splits_labels_and_preview(world: World) -> None:
    html = sign_in(world.client(), world.key_a).get(f"/ui/datasets/{world.dataset_id}").text
    assert "120 valid rows" in html and "duplicates dropped" in html
    assert re.search(r"<td>train</td><td>96</td>", html), html
    assert '<th scope="col">even</th>' in html and '<th scope="col">odd</th>' in html
    assert "question number" in html  # the preview


def test_vendored_assets_match_their_pinned_hashes() -> None:
    readme = (VENDOR / "README.md").read_text()
    files = {
        "htmx-2.0.11.min.js": "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717",
        "uPlot-1.6.32.iife.min.js": "19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f",
        "uPlot-1.6.32.min.css": "df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04",
    }
    for name, sha in files.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == sha, name
        assert sha in readme
    assert (VENDOR / "htmx-LICENSE").is_file() and (VENDOR / "uPlot-LICENSE").is_file()


def test_user_text_is_escaped(world: World, tmp_path: Path) -> None:
    evil = '<script>alert("x")</script>'
    rows_ = [{"input": f"{evil} {i}", "target": f"<b>{i}</b>"} for i in range(120)]
    with TestClient(world.app) as api:
        api.headers["Authorization"] = f"Bearer {world.key_a}"
        ds = upload(api, write_jsonl(tmp_path / "evil.jsonl", rows_), name="evil")
    assert ds.status_code == 201, ds.text
    html = sign_in(world.client(), world.key_a).get(f"/ui/datasets/{ds.json()['id']}").text
    assert "&lt;script&gt;alert(" in html and "<script>alert" not in html
    assert "&lt;b&gt;" in html and "<b>" not in html


def test_the_console_files_ship_in_the_package() -> None:
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "api"
    ]
    console = root / "api" / "console"
    files = [p for d in ("static", "templates") for p in (console / d).rglob("*") if p.is_file()]
    assert len(files) >= 20
    for path in files:
        rel = path.relative_to(root / "api").as_posix()
        assert any(fnmatch.fnmatch(rel, pat) and rel.count("/") == pat.count("/") for pat in patterns), rel


def _seed_completed_job(world: World) -> tuple[str, str]:
    """A completed job and its adapter (with task metrics) of tenant A, written as the reconciler
    would: the pages read them back through the services."""
    from api.db.models import AdapterRow, FineTuneJobRow

    job_id, adapter_id = "ft_seededjob001", "adp_seededjob001"
    task = {
        "kind": "classification",
        "rows": 24,
        "base": {"accuracy": 0.5, "macro_f1": 0.33},
        "adapter": {"accuracy": 0.875, "macro_f1": 0.86},
        "samples": [{"input": "question number 3?", "target": "odd", "base": "even", "adapter": "odd"}],
    }
    with world.app.state.ctx.db.session() as session:
        session.add(
            FineTuneJobRow(
                id=job_id,
                tenant_id="default",
                dataset_id=world.dataset_id,
                base_model="tiny/model",
                method="lora",
                hyperparameters={"max_steps": 12},
                backend="local",
                instance_type="local",
                status="completed",
                adapter_id=adapter_id,
                billable_seconds=30,
                cost_estimate_usd=0.0,
            )
        )
        session.flush()
        session.add(
            AdapterRow(
                id=adapter_id,
                tenant_id="default",
                job_id=job_id,
                dataset_id=world.dataset_id,
                dataset_sha256="ab" * 32,
                base_model="tiny/model",
                uri="store://adapters/x",
                eval_metrics={"base": {"bpt": 9.1}, "adapter": {"bpt": 4.2}, "tokens": 512, "task": task},
            )
        )
    return job_id, adapter_id


def test_job_and_adapter_pages_and_their_tenant_404(world: World) -> None:
    job_id, adapter_id = _seed_completed_job(world)
    a = sign_in(world.client(), world.key_a)
    jobs = a.get("/ui/jobs").text
    assert f'href="/ui/jobs/{job_id}"' in jobs and "step 0/12" in jobs
    job = a.get(f"/ui/jobs/{job_id}").text
    assert f'data-stream="/ui/jobs/{job_id}/stream"' in job and f'href="/ui/adapters/{adapter_id}"' in job
    assert "Cancel this job" not in job  # completed: nothing to cancel
    adapter = a.get(f"/ui/adapters/{adapter_id}").text
    eval_table = adapter.split('id="eval"')[1].split("</table>")[0]
    assert re.search(r"<td>bits per token</td><td>9\.1</td><td>4\.2</td>", eval_table), eval_table
    assert re.search(r"<td>accuracy</td>\s*<td>50%</td>\s*<td>88%</td>", eval_table), eval_table
    assert re.search(r"<td>macro-F1</td>\s*<td>33%</td>\s*<td>86%</td>", eval_table), eval_table
    assert "ab" * 32 in adapter and f'href="/ui/jobs/{job_id}"' in adapter  # lineage
    assert f'action="/ui/adapters/{adapter_id}/deploy"' in adapter
    b = sign_in(world.client(), world.key_b)
    for path in (
        f"/ui/jobs/{job_id}",
        f"/ui/jobs/{job_id}/cancel",
        f"/ui/adapters/{adapter_id}",
        f"/ui/adapters/{adapter_id}/download",
    ):
        resp = b.get(path)
        assert resp.status_code == 404, (path, resp.status_code)
    assert job_id not in b.get("/ui/jobs").text and adapter_id not in b.get("/ui/adapters").text
    token = csrf_of(b.get("/ui/jobs").text)
    assert b.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": token}).status_code == 404
    resp = b.post(f"/ui/adapters/{adapter_id}/deploy", data={"csrf": token, "ttl_minutes": "5"})
    assert resp.status_code == 404
    api = world.client().get(f"/v0/finetune/{job_id}", headers={"Authorization": f"Bearer {world.key_b}"})
    assert api.status_code == 404 and api.json()["message"] in b.get(f"/ui/jobs/{job_id}").text


def test_the_drops_page_lists_the_tenants_own_drop_objects(world: World) -> None:
    from api.db.models import DropObjectRow

    with world.app.state.ctx.db.session() as session:
        session.add(
            DropObjectRow(
                tenant_id="default",
                bucket="b",
                key="drop/default/mine.jsonl",
                etag="e1",
                status="done",
                dataset_id=world.dataset_id,
                job_id="ft_fromdrop0001",
                attempts=1,
            )
        )
        session.add(
            DropObjectRow(
                tenant_id="default",
                bucket="b",
                key="drop/default/bad.jsonl",
                etag="e2",
                status="rejected",
                error="line 3: not JSON",
                attempts=1,
            )
        )
        session.add(
            DropObjectRow(
                tenant_id="tenant-b",
                bucket="b",
                key="drop/tenant-b/theirs.jsonl",
                etag="e3",
                status="done",
                attempts=1,
            )
        )
    a = sign_in(world.client(), world.key_a).get("/ui/drops").text
    assert "drop/default/mine.jsonl" in a and f'href="/ui/datasets/{world.dataset_id}"' in a
    assert "drop/default/bad.jsonl" in a and "line 3: not JSON" in a and "status-rejected" in a
    assert "theirs.jsonl" not in a and "drop/default/" in a
    b = sign_in(world.client(), world.key_b).get("/ui/drops").text
    assert "theirs.jsonl" in b and "mine.jsonl" not in b


def test_try_it_sends_the_prompt_as_a_user_turn_unless_plain_text(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.domain.errors import NotFound

    sent: list[Any] = []

    def infer(tenant: str, req: Any) -> Any:
        sent.append(req.inputs)
        raise NotFound("no deployment dep_x")

    monkeypatch.setattr(world.app.state.ctx.deployments, "infer", infer)
    client = sign_in(world.client(), world.key_a)
    token = csrf_of(client.get("/ui/deployments").text)
    for extra in ({}, {"raw": "true"}):
        resp = client.post("/ui/deployments/dep_x/try", data={"csrf": token, "prompt": "Shout: hi", **extra})
        assert resp.status_code == 404
    assert sent == [[{"role": "user", "content": "Shout: hi"}], "Shout: hi"]
