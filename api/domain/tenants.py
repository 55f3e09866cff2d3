"""Tenants, their API keys and quotas (pure models; no I/O)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Final

from pydantic import BaseModel, Field

from api.domain.errors import BadRequest

# Tenant ids name S3 prefixes and tag values, so they are short slugs, never free text.
TENANT_PATTERN: Final = r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$"
_TENANT_RE: Final = re.compile(TENANT_PATTERN)
KEY_PREFIX: Final = "fsk_"


def is_tenant_id(value: str) -> bool:
    return bool(_TENANT_RE.fullmatch(value))


def check_tenant_id(value: str) -> str:
    if not is_tenant_id(value):
        raise BadRequest(
            f"invalid tenant id {value!r}: 1-40 characters of a-z, 0-9 and '-', "
            "starting and ending with a letter or digit"
        )
    return value


class Quotas(BaseModel):
    """What a tenant may use at once; ``None`` means the deployment-wide default applies."""

    max_concurrent_jobs: Annotated[int, Field(ge=0)] | None = None
    max_endpoints: Annotated[int, Field(ge=0)] | None = None
    # fnmatch patterns of instance types (``ml.g5.*``); None: any priced instance type.
    allowed_instance_types: list[str] | None = None


class EffectiveQuotas(BaseModel):
    max_concurrent_jobs: int
    max_endpoints: int
    allowed_instance_types: list[str] | None


class Usage(BaseModel):
    active_jobs: int
    active_endpoints: int


class TenantInfo(BaseModel):
    tenant_id: str
    quotas: EffectiveQuotas
    usage: Usage


class ApiKeyInfo(BaseModel):
    """An API key as listed: never the secret, only its id and a short display prefix."""

    id: str
    tenant_id: str
    name: str | None
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None


class CreatedApiKey(ApiKeyInfo):
    secret: str = Field(description="shown once; only its SHA-256 is stored")
