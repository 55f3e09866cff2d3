"""Console sessions: signed, expiring tokens (never the API key) and the CSRF tokens bound to them.

A session token is ``base64url(json payload) "." base64url(HMAC-SHA256)`` signed with the console
secret (``settings.console_secret``, else a random one kept in ``{home}/console_secret``). The
payload names the API key's id (not its secret), the tenant, an expiry and a random nonce; each
request re-checks that the key still exists and is not revoked, so revoking a key ends its sessions.
The CSRF token of a session is an HMAC of its nonce: a form must post it back (session-bound).
A sign-in token (``fastuner ui``) is a signed, 60-second, single-use token naming a key id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from api.db.models import ApiKeyRow
from api.db.repositories import tenants as key_repo
from api.db.session import Database
from api.services.auth import digest, read_secret, write_secret
from api.settings import Settings

SESSION_COOKIE = "fastuner_console"
SIGNIN_COOKIE = "fastuner_signin"  # double-submit token of the sign-in form (before any session)
COOKIE_PATH = "/ui"
SIGNIN_TOKEN_SECONDS = 60


@dataclass(frozen=True)
class Session:
    key_id: str
    tenant: str
    nonce: str
    expires: float


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signs and checks the console's tokens; one per app."""

    def __init__(self, secret: bytes, db: Database, session_seconds: float) -> None:
        self._secret = secret
        self.db = db
        self.session_seconds = session_seconds
        self._used: dict[str, float] = {}  # spent sign-in token nonces → expiry (this process)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, db: Database) -> Signer:
        secret = settings.console_secret
        if not secret:
            path = settings.home.expanduser() / "console_secret"
            secret = read_secret(path)
            if not secret:
                write_secret(path, secrets.token_urlsafe(48))
                secret = read_secret(path)
        assert secret
        return cls(secret.encode(), db, settings.console_session_hours * 3600)

    # -- signing ---------------------------------------------------------------------------------
    def _mac(self, purpose: str, body: str) -> str:
        return _b64(hmac.new(self._secret, f"{purpose}|{body}".encode(), hashlib.sha256).digest())

    def _sign(self, purpose: str, payload: dict[str, Any]) -> str:
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{self._mac(purpose, body)}"

    def _open(self, purpose: str, token: str | None) -> dict[str, Any] | None:
        body, _, mac = (token or "").partition(".")
        if not body or not mac or not hmac.compare_digest(mac, self._mac(purpose, body)):
            return None
        try:
            payload = json.loads(_unb64(body))
        except ValueError:
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("e"), int | float):
            return None
        return payload if payload["e"] > time.time() else None

    # -- keys --------------------------------------------------------------------------------------
    def key_for_secret(self, secret: str) -> tuple[str, str] | None:
        """(key id, tenant) of a live API key, looked up by its SHA-256 like the API's auth."""
        if not secret:
            return None
        with self.db.session() as session:
            row = key_repo.key_by_hash(session, digest(secret))
            if row is None or row.revoked_at is not None:
                return None
            return row.id, row.tenant_id

    def _key_live(self, key_id: str, tenant: str) -> bool:
        with self.db.session() as session:
            row = session.get(ApiKeyRow, key_id)
            return row is not None and row.revoked_at is None and row.tenant_id == tenant

    # -- sessions ------------------------------------------------------------------------------------
    def new_session(self, key_id: str, tenant: str) -> str:
        expires = int(time.time() + self.session_seconds)
        return self._sign("session", {"k": key_id, "t": tenant, "n": secrets.token_urlsafe(16), "e": expires})

    def session(self, token: str | None) -> Session | None:
        payload = self._open("session", token)
        if payload is None:
            return None
        key_id, tenant, nonce = payload.get("k"), payload.get("t"), payload.get("n")
        if not (isinstance(key_id, str) and isinstance(tenant, str) and isinstance(nonce, str)):
            return None
        if not self._key_live(key_id, tenant):
            return None
        return Session(key_id=key_id, tenant=tenant, nonce=nonce, expires=float(payload["e"]))

    def csrf_token(self, session: Session) -> str:
        return self._mac("csrf", session.nonce)

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf_token(session))

    # -- one-time sign-in tokens (fastuner ui) ---------------------------------------------------------
    def new_signin_token(self, key_id: str) -> str:
        expires = int(time.time() + SIGNIN_TOKEN_SECONDS)
        return self._sign("signin", {"k": key_id, "n": secrets.token_urlsafe(16), "e": expires})

    def redeem_signin_token(self, token: str | None) -> tuple[str, str] | None:
        """(key id, tenant) once per token; None when forged, expired, spent or the key is gone."""
        payload = self._open("signin", token)
        if payload is None or not isinstance(payload.get("k"), str) or not isinstance(payload.get("n"), str):
            return None
        now = time.time()
        with self._lock:
            self._used = {n: e for n, e in self._used.items() if e > now}
            if payload["n"] in self._used:
                return None
            self._used[payload["n"]] = float(payload["e"])
        with self.db.session() as session:
            row = session.get(ApiKeyRow, payload["k"])
            if row is None or row.revoked_at is not None:
                return None
            return row.id, row.tenant_id
