"""API keys: issue (the secret is shown once), authenticate by SHA-256, revoke, and the local key.

Keys are 256-bit random tokens, so a plain SHA-256 (not a slow password hash) is the right digest:
there is nothing to brute-force, and lookups stay one indexed query.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from api.db.models import ApiKeyRow, utcnow
from api.db.repositories import tenants as repo
from api.db.session import Database
from api.domain.errors import NotFound, Unauthorized
from api.domain.ids import new_id
from api.domain.tenants import KEY_PREFIX, ApiKeyInfo, CreatedApiKey, check_tenant_id
from api.logging import get_logger

log = get_logger("auth")
PREFIX_LEN = 12  # "fsk_" + 8 characters: enough to tell keys apart in a listing


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class AuthService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create_key(self, tenant_id: str, name: str | None = None) -> CreatedApiKey:
        check_tenant_id(tenant_id)
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKeyRow(
            id=new_id("key"),
            tenant_id=tenant_id,
            name=name,
            prefix=secret[:PREFIX_LEN],
            secret_sha256=digest(secret),
        )
        with self.db.session() as session:
            repo.ensure(session, tenant_id)
            session.add(row)
        log.info("api key created", extra={"tenant_id": tenant_id, "key_id": row.id})
        return CreatedApiKey(secret=secret, **_info(row).model_dump())

    def authenticate(self, authorization: str | None) -> str:
        """The tenant named by an ``Authorization: Bearer <key>`` header value."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        with self.db.session() as session:
            row = repo.key_by_hash(session, digest(token))
            if row is None or row.revoked_at is not None:
                raise Unauthorized("invalid or revoked API key")
            return row.tenant_id

    def revoke(self, key_id: str) -> ApiKeyInfo:
        with self.db.session() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFound(f"api key {key_id} not found")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            log.info("api key revoked", extra={"tenant_id": row.tenant_id, "key_id": key_id})
            return _info(row)

    def list(self, tenant_id: str | None = None) -> list[ApiKeyInfo]:
        with self.db.session() as session:
            return [_info(r) for r in repo.keys(session, tenant_id)]

    def bootstrap_local_key(self, tenant_id: str, path: Path) -> str | None:
        """On a fresh install (no key at all), issue one for ``tenant_id`` and save it to ``path``.

        The embedded default uses it so a newcomer is never blocked; the CLI reads the file. Returns
        the secret when a key was issued; an install that already has keys is left alone.
        """
        with self.db.session() as session:
            if repo.any_key(session):
                return None
        created = self.create_key(tenant_id, name="local (bootstrap)")
        write_secret(path, created.secret)
        log.info("local api key written", extra={"tenant_id": tenant_id, "path": str(path)})
        return created.secret


def write_secret(path: Path, secret: str) -> None:
    """Write ``secret`` readable by its owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secret + "\n")
    tmp.replace(path)


def read_secret(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _info(row: ApiKeyRow) -> ApiKeyInfo:
    return ApiKeyInfo.model_validate(row, from_attributes=True)
