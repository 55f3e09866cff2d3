"""``fastuner deployments``, ``inference``, ``janitor`` and ``costs``."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from api.domain.deployments import (
    Deployment,
    DeploymentRequest,
    GenerationParameters,
    InferenceRequest,
    InferenceResponse,
    parse_batch_line,
)
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
def create(state: State, adapter_ids: tuple[str, ...], instance_type: str | None, instance_count: int, ttl: int,
           max_lifetime: int | None, wait: bool, timeout: int) -> None:  # fmt: skip
    """Deploy ADAPTER_IDS (same base model) on one endpoint."""
    client = state.client()
    req = DeploymentRequest(
        adapter_ids=list(adapter_ids), instance_type=instance_type, instance_count=instance_count,
        ttl_seconds=ttl, max_lifetime_seconds=max_lifetime,
    )  # fmt: skip
    dep = client.create_deployment(req)
    if wait:
        import time

        deadline = time.monotonic() + timeout
        with console.status(f"waiting for {dep.id} to be in service…", spinner="dots"):
            while dep.status.value == "creating" and time.monotonic() < deadline:
                time.sleep(2)
                dep = client.get_deployment(dep.id)
    if state.json:
        print_json(dep)
    else:
        print_deployment(dep)
    if wait and dep.status.value != "in_service":
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
    dep = state.client().get_deployment(deployment_id)
    if state.json:
        print_json(dep)
    else:
        print_deployment(dep)


@deployments.command()
@click.argument("deployment_id")
@pass_state
def delete(state: State, deployment_id: str) -> None:
    """Tear a deployment down now."""
    dep = state.client().delete_deployment(deployment_id)
    if state.json:
        print_json(dep)
    else:
        console.print(f"[yellow]■[/] {dep.id} {dep.status.value}")


def _params(
    max_new_tokens: int, temperature: float, top_p: float, stop: tuple[str, ...]
) -> GenerationParameters:
    return GenerationParameters(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=list(stop)
    )


def _gen_options(f: Any) -> Any:
    f = click.option("--stop", multiple=True, help="stop string (repeatable)")(f)
    f = click.option("--top-p", type=float, default=1.0, show_default=True)(f)
    f = click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy")(f)
    f = click.option("--max-new-tokens", type=int, default=64, show_default=True)(f)
    f = click.option(
        "--deployment", "deployment_id", help="deployment id (default: one serving the adapter)"
    )(f)
    return click.option("--adapter", "adapter_id", help="adapter id (adp_…)")(f)


@click.group()
def inference() -> None:
    """Generate text with deployed adapters."""


@inference.command()
@click.option("--input", "text", required=True, help="the prompt")
@click.option("--stream", is_flag=True, help="print the text as it is generated")
@_gen_options
@pass_state
def run(state: State, text: str, stream: bool, adapter_id: str | None, deployment_id: str | None,
        max_new_tokens: int, temperature: float, top_p: float, stop: tuple[str, ...]) -> None:  # fmt: skip
    """Generate for one prompt."""
    if not adapter_id and not deployment_id:
        raise click.UsageError("give --adapter or --deployment")
    req = InferenceRequest(
        adapter_id=adapter_id, deployment_id=deployment_id, inputs=text,
        parameters=_params(max_new_tokens, temperature, top_p, stop),
    )  # fmt: skip
    if stream:
        _run_streamed(state, req)
        return
    resp = state.client().infer(req)
    if state.json:
        print_json(resp)
        return
    out = resp.outputs[0]
    console.print(out.generated_text, markup=False, highlight=False)
    _summary(resp)


def _summary(resp: InferenceResponse) -> None:
    out = resp.outputs[0]
    console.print(
        f"[dim]{resp.deployment_id} · {out.prompt_tokens}+{out.completion_tokens} tokens · "
        f"{out.finish_reason} · {resp.latency_ms:.0f} ms[/]"
    )


def _run_streamed(state: State, req: InferenceRequest) -> None:
    """Each piece printed (and flushed) as it arrives, then the summary line; with ``--json``
    one JSON object a line as it arrives: ``{"token": …}`` lines, then ``{"response": {…}}``."""
    final: InferenceResponse | None = None
    for item in state.client().infer_stream(req):
        if isinstance(item, InferenceResponse):
            final = item
        elif state.json:
            click.echo(json.dumps({"token": item}))
        else:
            click.echo(item, nl=False)
            sys.stdout.flush()
    assert final is not None  # infer_stream ends with the response or raises
    if state.json:
        click.echo(json.dumps({"response": final.model_dump(mode="json")}))
        return
    click.echo()
    _summary(final)


@inference.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path))
@_gen_options
@pass_state
def batch(state: State, file: Path, output: Path, adapter_id: str | None, deployment_id: str | None,
          max_new_tokens: int, temperature: float, top_p: float, stop: tuple[str, ...]) -> None:  # fmt: skip
    """Generate for every line of FILE (JSONL with "input" / "prompt" / "messages", or plain text)."""
    if not adapter_id and not deployment_id:
        raise click.UsageError("give --adapter or --deployment")
    client = state.client()
    lines = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    params = _params(max_new_tokens, temperature, top_p, stop)
    written = 0
    with output.open("w", encoding="utf-8") as out, Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, disable=state.json,
    ) as progress:  # fmt: skip
        task = progress.add_task("generating", total=len(lines))
        for number, line in enumerate(lines, 1):
            inputs = _batch_input(line, number)
            resp = client.infer(InferenceRequest(adapter_id=adapter_id, deployment_id=deployment_id,
                                                 inputs=inputs, parameters=params))  # fmt: skip
            out.write(json.dumps({"line": number, "input": inputs, **resp.outputs[0].model_dump()}) + "\n")
            written += 1
            progress.advance(task)
    if state.json:
        print_json({"written": written, "output": str(output)})
    else:
        console.print(f"[green]✓[/] {written} result(s) → {output}")


def _batch_input(line: str, number: int) -> Any:
    try:
        return parse_batch_line(line)
    except ValueError as exc:
        raise click.UsageError(f"line {number}: {exc}") from exc


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
                (a.deployment_id or "—", a.endpoint_name, a.reason,
                 f"{a.hourly_price_usd:.3f}" if a.hourly_price_usd is not None else "?",
                 "dry run" if dry_run else ("done" if a.done else f"error: {a.error}" if a.error else "skipped"))
                for a in report.actions
            ]  # fmt: skip
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
        return "—" if d.status.value not in ("creating", "in_service") else "never"
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
