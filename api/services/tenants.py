"""Per-tenant quotas: concurrent jobs, endpoints, allowed instance types.

Admission runs inside the transaction that inserts the job or deployment row, under the tenant's
admission lock (:func:`api.db.repositories.tenants.lock`), so concurrent requests can't both take
the last slot.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from sqlalchemy.orm import Session

from api.db.models import TenantRow
from api.db.repositories import tenants as repo
from api.db.session import Database
from api.domain.errors import Forbidden, NotFound, QuotaExceeded
from api.domain.tenants import EffectiveQuotas, Quotas, TenantInfo, Usage
from api.settings import Settings


class TenantService:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    def exists(self, tenant_id: str) -> bool:
        with self.db.session() as session:
            return repo.get(session, tenant_id) is not None

    def info(self, tenant_id: str) -> TenantInfo:
        with self.db.session() as session:
            return TenantInfo(
                tenant_id=tenant_id,
                quotas=self._effective(repo.get(session, tenant_id)),
                usage=Usage(
                    active_jobs=repo.active_jobs(session, tenant_id),
                    active_endpoints=repo.active_endpoints(session, tenant_id),
                ),
            )

    def set_quotas(self, tenant_id: str, quotas: Quotas) -> TenantInfo:
        """Replace an existing tenant's overrides with the fields set in ``quotas`` (None: default)."""
        with self.db.session() as session:
            row = repo.get(session, tenant_id)
            if row is None:
                raise NotFound(f"tenant {tenant_id} not found")
            row.max_concurrent_jobs = quotas.max_concurrent_jobs
            row.max_endpoints = quotas.max_endpoints
            row.allowed_instance_types = quotas.allowed_instance_types
        return self.info(tenant_id)

    # -- admission (called by the services, inside their insert transaction) -------------------
    def check_instance_type(self, session: Session, tenant_id: str, instance_type: str) -> None:
        _check_instance_type(self._effective(repo.get(session, tenant_id)), tenant_id, instance_type)

    def admit_job(self, session: Session, tenant_id: str, instance_type: str) -> None:
        quotas = self._effective(repo.lock(session, tenant_id))
        _check_instance_type(quotas, tenant_id, instance_type)
        in_use = repo.active_jobs(session, tenant_id)
        _check_count("max_concurrent_jobs", "concurrent fine-tune jobs", quotas.max_concurrent_jobs, in_use)

    def admit_endpoint(self, session: Session, tenant_id: str, instance_type: str) -> None:
        quotas = self._effective(repo.lock(session, tenant_id))
        _check_instance_type(quotas, tenant_id, instance_type)
        in_use = repo.active_endpoints(session, tenant_id)
        _check_count("max_endpoints", "live endpoints", quotas.max_endpoints, in_use)

    def _effective(self, row: TenantRow | None) -> EffectiveQuotas:
        s = self.settings
        return EffectiveQuotas(
            max_concurrent_jobs=_pick(
                row.max_concurrent_jobs if row else None, s.default_max_concurrent_jobs
            ),
            max_endpoints=_pick(row.max_endpoints if row else None, s.default_max_endpoints),
            allowed_instance_types=(
                row.allowed_instance_types
                if row is not None and row.allowed_instance_types is not None
                else s.default_allowed_instance_types
            ),
        )


def _check_instance_type(quotas: EffectiveQuotas, tenant_id: str, instance_type: str) -> None:
    allowed = quotas.allowed_instance_types
    if allowed is not None and not any(fnmatchcase(instance_type, p) for p in allowed):
        raise Forbidden(
            f"instance type {instance_type} is not allowed for tenant {tenant_id} "
            f"(allowed_instance_types: {', '.join(allowed) or 'none'})",
            details={"limit": "allowed_instance_types", "allowed": allowed, "requested": instance_type},
        )


def _pick(override: int | None, default: int) -> int:
    return default if override is None else override


def _check_count(limit_name: str, what: str, limit: int, in_use: int) -> None:
    if in_use >= limit:
        raise QuotaExceeded(
            f"quota {limit_name} reached: {in_use} of {limit} {what} in use; "
            "wait for one to finish or ask an admin to raise the limit",
            details={"limit": limit_name, "value": limit, "in_use": in_use},
        )
