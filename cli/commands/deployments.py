"""``fastuner deployments``, ``janitor`` and ``costs`` (``inference``: cli/commands/inference.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from api.domain.deployments import Deployment, DeploymentRequest
from api.domain.enums import DeploymentStatus
from cli.durations import Duration, format_duration
from cli.output import console, kv_table, print_json, table
from cli.state import State, pass_state


@click.group()
def deployments() -> None:
    """Serve adapters on inference endpoints (torn down when idle)."""


@deployments.command()
@click.argument("adapter_ids", nargs=-1, required=True)
@click.option("--instance-type", help="e.g. ml.g5.xlarge (SageMaker) or local")
@click.option("--instance-count", type=int, default=1, show_default=True)
@click.option("--ttl", type=Duration(), default="1h", show_default=True, help="idle time before teardown")
@click.option("--max-lifetime", type=Duration(), help="hard limit from creation, e.g. 8h")
@click.option("--wait/--no-wait", default=True, show_default=True, help="wait until it is in service")
@click.option("--timeout", type=Duration(), default="30m", show_default=True)
@pass_state
def create(
    state: State,
    adapter_ids: tuple[str, ...],
    instance_type: str | None,
    instance_count: int,
    ttl: int,
    max_lifetime: int | None,
    wait: bool,
    timeout: int,
) -> None:
    """Deploy ADAPTER_IDS (same base model) on one endpoint."""
    client = state.client()
    req = DeploymentRequest(
        adapter_ids=list(adapter_ids),
        instance_type=instance_type,
        instance_count=instance_count,
        ttl_seconds=ttl,
        max_lifetime_seconds=max_lifetime,
    )
    dep = client.create_deployment(req)
    if wait:
        import time

        deadline = time.monotonic() + timeout
        with console.status(f"waiting for {dep.id} to be in service…", spinner="dots"):
            while dep.status is DeploymentStatus.CREATING and time.monotonic() < deadline:
                time.sleep(2)
                dep = client.get_deployment(dep.id)
    state.show(dep, print_deployment)
    if wait and dep.status is not DeploymentStatus.IN_SERVICE:
        raise SystemExit(1)


@deployments.command("list")
@click.option("--all", "show_all", is_flag=True, help="include deleted and failed ones")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 200))
@pass_state
def list_(state: State, show_all: bool, limit: int) -> None:
    """List deployments (live ones unless --all)."""
    items, _ = state.client().list_deployments(limit=limit, live=not show_all)
    if state.json:
        print_json(items)
        return
    rows = [
        (d.id, d.status.value, ",".join(d.adapter_ids), d.instance_type, _price(d), _until(d)) for d in items
    ]
    console.print(table(None, ["id", "status", "adapters", "instance", "$/h", "teardown in"], rows))


@deployments.command()
@click.argument("deployment_id")
@pass_state
def get(state: State, deployment_id: str) -> None:
    """Show a deployment."""
    state.show(state.client().get_deployment(deployment_id), print_deployment)


@deployments.command()
@click.argument("deployment_id")
@pass_state
def delete(state: State, deployment_id: str) -> None:
    """Tear a deployment down now."""
    dep = state.client().delete_deployment(deployment_id)
    state.show(dep, lambda d: console.print(f"[yellow]■[/] {d.id} {d.status.value}"))


@click.group()
def janitor() -> None:
    """Tear down idle, expired and orphaned endpoints."""


@janitor.command("run")
@click.option("--once", is_flag=True, help="one pass, then exit (default: loop)")
@click.option("--dry-run", is_flag=True, help="print what would be deleted and the hourly cost it would stop")
@click.option("--interval", type=Duration(), default="60s", show_default=True)
@pass_state
def janitor_run(state: State, once: bool, dry_run: bool, interval: int) -> None:
    """Run the janitor."""
    import time

    client = state.client()
    while True:
        report = client.run_janitor(dry_run=dry_run)
        if state.json:
            print_json(report)
        else:
            verb = "would delete" if dry_run else "deleted"
            rows = [
                (
                    a.deployment_id or "—",
                    a.endpoint_name,
                    a.reason,
                    f"{a.hourly_price_usd:.3f}" if a.hourly_price_usd is not None else "?",
                    "dry run"
                    if dry_run
                    else ("done" if a.done else f"error: {a.error}" if a.error else "skipped"),
                )
                for a in report.actions
            ]
            if rows:
                console.print(table(None, ["deployment", "endpoint", "reason", "$/h", "result"], rows))
            console.print(
                f"{verb} {len(report.actions)} endpoint(s); ${report.hourly_savings_usd:.3f}/h stopped"
            )
        if once or dry_run:
            return
        time.sleep(interval)


@click.command()
@pass_state
def costs(state: State) -> None:
    """Running endpoints, their hourly price and time to teardown."""
    data = state.client().costs()
    items = [Deployment.model_validate(d) for d in data["running"]]
    if state.json:
        print_json(data)
        return
    rows = [(d.id, d.status.value, d.instance_type, _price(d), _until(d)) for d in items]
    console.print(table(None, ["deployment", "status", "instance", "$/h", "teardown in"], rows))
    console.print(f"total ${data['hourly_usd']:.3f}/h")


def _price(d: Deployment) -> str:
    return f"{d.hourly_price_usd:.3f}" if d.hourly_price_usd is not None else "?"


def _until(d: Deployment) -> str:
    if d.teardown_at is None:
        return "never" if d.status in (DeploymentStatus.CREATING, DeploymentStatus.IN_SERVICE) else "—"
    return format_duration((d.teardown_at - datetime.now(UTC)).total_seconds())


def print_deployment(d: Deployment) -> None:
    rows: list[tuple[str, Any]] = [
        ("id", d.id),
        ("status", d.status.value),
        ("adapters", ", ".join(d.adapter_ids)),
        ("base model", d.base_model),
        ("backend", f"{d.backend} · {d.instance_count} × {d.instance_type}"),
        ("endpoint", d.endpoint_name),
        ("price", f"${_price(d)}/h"),
        ("ttl (idle)", format_duration(d.ttl_seconds) if d.ttl_seconds else "none"),
        ("max lifetime", format_duration(d.max_lifetime_seconds) if d.max_lifetime_seconds else "none"),
        ("teardown in", _until(d)),
    ]
    if d.failure_reason:
        rows.append(("failure", d.failure_reason))
    if d.deleted_reason:
        rows.append(("deleted", f"{d.deleted_reason} at {d.deleted_at}"))
    console.print(kv_table(None, rows))
