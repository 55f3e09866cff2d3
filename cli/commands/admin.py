"""``fastuner admin``: operator commands on the control plane's own database (API keys, quotas).

These run where the database is (they build the services from FASTUNER_* settings), not over the
REST API: the first key has to come from somewhere, and key management is not a tenant's business.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from rich.markup import escape
from rich.table import Table

from api.db.session import Database
from api.domain.errors import FastunerError
from api.domain.tenants import Quotas, TenantInfo
from api.services.auth import AuthService
from api.services.tenants import TenantService
from api.settings import get_settings
from cli.output import console, err_console, kv_table, print_json, table


@contextmanager
def _services() -> Iterator[tuple[AuthService, TenantService]]:
    settings = get_settings()
    db = Database(settings.resolved_database_url)
    try:
        if settings.auto_migrate:
            db.migrate()
        yield AuthService(db), TenantService(db, settings)
    except FastunerError as exc:
        err_console.print(f"[bold red]error[/] {escape(f'[{exc.code}] {exc.message}')}", highlight=False)
        raise SystemExit(1) from exc
    finally:
        db.dispose()


@click.group()
def admin() -> None:
    """Manage API keys and tenant quotas (runs against the database directly)."""


@admin.command("create-key")
@click.option("--tenant", required=True, help="tenant id (a-z, 0-9, '-'); created if new")
@click.option("--name", default=None, help="a label for the key (who or what uses it)")
@click.pass_obj
def create_key(state: object, tenant: str, name: str | None) -> None:
    """Issue an API key for TENANT. The secret is printed once; only its hash is stored."""
    with _services() as (auth, _):
        created = auth.create_key(tenant, name)
    if _json(state):
        print_json(created)
        return
    console.print(f"API key [bold]{created.id}[/] for tenant [bold]{escape(tenant)}[/] (shown once):")
    click.echo(created.secret)
    console.print("[dim]use it as FASTUNER_API_KEY, or `Authorization: Bearer <key>` over HTTP[/]")


@admin.command("list-keys")
@click.option("--tenant", default=None, help="only this tenant's keys")
@click.pass_obj
def list_keys(state: object, tenant: str | None) -> None:
    """List API keys (ids and prefixes, never secrets)."""
    with _services() as (auth, _):
        keys = auth.list(tenant)
    if _json(state):
        print_json(keys)
        return
    rows = [
        (k.id, k.tenant_id, escape(k.prefix) + "…", escape(k.name or ""), k.created_at, k.revoked_at or "")
        for k in keys
    ]
    console.print(table("API keys", ["id", "tenant", "prefix", "name", "created", "revoked"], rows))


@admin.command("revoke-key")
@click.argument("key_id")
@click.pass_obj
def revoke_key(state: object, key_id: str) -> None:
    """Revoke an API key; requests using it are refused from now on."""
    with _services() as (auth, _):
        info = auth.revoke(key_id)
    if _json(state):
        print_json(info)
    else:
        console.print(f"revoked {info.id} (tenant {escape(info.tenant_id)})")


@admin.command("set-quota")
@click.argument("tenant")
@click.option("--max-concurrent-jobs", type=click.IntRange(min=0), default=None)
@click.option("--max-endpoints", type=click.IntRange(min=0), default=None)
@click.option(
    "--allowed-instance-types",
    default=None,
    help="comma-separated fnmatch patterns (ml.g5.*,ml.p4d.24xlarge); '' allows none",
)
@click.pass_obj
def set_quota(
    state: object,
    tenant: str,
    max_concurrent_jobs: int | None,
    max_endpoints: int | None,
    allowed_instance_types: str | None,
) -> None:
    """Set TENANT's quotas; an option left out goes back to the deployment-wide default."""
    allowed = None
    if allowed_instance_types is not None:
        allowed = [p.strip() for p in allowed_instance_types.split(",") if p.strip()]
    quotas = Quotas(
        max_concurrent_jobs=max_concurrent_jobs, max_endpoints=max_endpoints, allowed_instance_types=allowed
    )
    with _services() as (_, tenants):
        info = tenants.set_quotas(tenant, quotas)
    _print_tenant(state, info)


@admin.command("show-tenant")
@click.argument("tenant")
@click.pass_obj
def show_tenant(state: object, tenant: str) -> None:
    """TENANT's effective quotas and current usage."""
    with _services() as (_, tenants):
        if not tenants.exists(tenant):
            err_console.print(f"[bold red]error[/] tenant {escape(tenant)} not found")
            raise SystemExit(1)
        info = tenants.info(tenant)
    _print_tenant(state, info)


def _print_tenant(state: object, info: TenantInfo) -> None:
    if _json(state):
        print_json(info)
    else:
        console.print(tenant_table(info))


def tenant_table(info: TenantInfo) -> Table:
    allowed = info.quotas.allowed_instance_types
    return kv_table(
        f"tenant {info.tenant_id}",
        [
            ("concurrent jobs", f"{info.usage.active_jobs} / {info.quotas.max_concurrent_jobs}"),
            ("endpoints", f"{info.usage.active_endpoints} / {info.quotas.max_endpoints}"),
            ("instance types", "any" if allowed is None else ", ".join(allowed) or "none"),
        ],
    )


def _json(state: object) -> bool:
    return bool(getattr(state, "json", False))
