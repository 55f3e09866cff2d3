"""Helpers of the console tests: sign in through the form, read a page's CSRF token."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, "the page has no CSRF field"
    return match.group(1)


def sign_in(client: TestClient, api_key: str) -> TestClient:
    """Sign ``client`` in through the sign-in form (as a browser would)."""
    form = client.get("/ui/signin")
    assert form.status_code == 200, form.text
    resp = client.post(
        "/ui/signin", data={"api_key": api_key, "csrf": csrf_of(form.text)}, follow_redirects=False
    )
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/jobs", resp.text
    return client
