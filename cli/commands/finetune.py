"""``fastuner finetune``: start (a dataset id or a JSONL file; a live view under --wait), wait, list,
get, cancel, logs, metrics. The live view follows the job's event stream (no polling): cli/job_view.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from api.domain.finetune import DryRun, FineTuneJob
from api.domain.metrics import UNREACHABLE_EVENT_KIND
from cli.choices import JOB_STATUSES, METHODS
from cli.client import FastunerClient
from cli.job_metrics import print_metrics_table, target_s_of
from cli.job_view import exit_unless_completed, follow, print_dry_run, print_job, print_task_summary
from cli.output import console, print_json, table
from cli.start_options import StartOptions, stored_dataset_id
from cli.state import State, pass_state


@click.group()
def finetune() -> None:
    """Launch and follow fine-tune jobs."""


@finetune.command()
@click.option(
    "--dataset",
    "dataset_id",
    required=True,
    help="dataset id (ds_…), or a JSONL file: uploaded first (name = file name; also under --dry-run)",
)
@click.option("--model", "base_model", required=True, help="base model: allowed HF id or local folder")
@click.option("--method", type=METHODS, default="lora", show_default=True)
@click.option("--target-s", type=float, help="SCU target S (default: smart default)")
@click.option("--epochs", type=float)
@click.option("--max-steps", type=int)
@click.option("--learning-rate", type=float)
@click.option("--lora-r", type=int)
@click.option("--hp", "hp", multiple=True, metavar="KEY=VALUE", help="any engine hyperparameter (repeatable)")
@click.option("--instance-type", help="e.g. ml.g5.xlarge (SageMaker) or local")
@click.option("--instance-count", type=int, default=1, show_default=True)
@click.option("--spot", is_flag=True, help="managed spot training (checkpoints resume interruptions)")
@click.option("--max-runtime", type=int, default=86400, show_default=True, help="seconds")
@click.option("--dry-run", is_flag=True, help="resolve and estimate; launch nothing")
@click.option("--wait", is_flag=True, help="follow the job live until it ends")
@click.option("--idempotency-key", help="retrying with the same key never launches twice (default: random)")
@pass_state
def start(state: State, /, **options: Any) -> None:
    """Start a fine-tune of MODEL on DATASET (an id, or a JSONL file to upload first)."""
    opts = StartOptions(**options)
    req = opts.request(stored_dataset_id(state, opts.dataset_id))
    client = state.client()
    result = client.start_finetune(req, idempotency_key=opts.launch_key())
    if isinstance(result, DryRun):
        state.show(result, print_dry_run)
        return
    if not state.json:
        console.print(f"[green]✓[/] job [bold]{result.id}[/] {result.status.value} on {result.backend}")
        if result.estimate and result.estimate.estimated_cost_usd is not None:
            console.print(f"  estimated cost ${result.estimate.estimated_cost_usd:.2f}")
    if opts.wait:
        _follow_to_the_end(state, client, result.id)
    else:
        state.show(result, print_job)


@finetune.command()
@click.argument("job_id")
@pass_state
def wait(state: State, job_id: str) -> None:
    """Follow a job live until it ends (its event stream: bits per token, Ŝ vs the band, λ).

    Exit 0 when it completed, 1 when it failed or was cancelled (the reason goes to stderr).
    """
    _follow_to_the_end(state, state.client(), job_id)


def _follow_to_the_end(state: State, client: FastunerClient, job_id: str) -> None:
    """The live view until the job ends, the final job (and its task metrics), exit 1 unless it
    completed."""
    job = follow(client, job_id, quiet=state.json)
    if state.json:
        print_json(job)
    else:
        print_job(job)
        print_task_summary(client, job)
    exit_unless_completed(job)


@finetune.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 200))
@click.option("--status", type=JOB_STATUSES)
@click.option("--cursor")
@pass_state
def list_(state: State, limit: int, status: str | None, cursor: str | None) -> None:
    """List fine-tune jobs, newest first."""
    items, next_cursor = state.client().list_jobs(limit=limit, status=status, cursor=cursor)
    if state.json:
        print_json({"items": items, "next_cursor": next_cursor})
        return
    columns = ["id", "status", "model", "dataset", "adapter", "created"]
    console.print(table(None, columns, [_list_row(j) for j in items]))
    if next_cursor:
        console.print(f"[dim]more: --cursor '{next_cursor}'[/]")


def _list_row(j: FineTuneJob) -> tuple[str, ...]:
    created = j.created_at.strftime("%Y-%m-%d %H:%M")
    return (j.id, j.status.value, j.base_model[-40:], j.dataset_id, j.adapter_id or "", created)


@finetune.command()
@click.argument("job_id")
@pass_state
def get(state: State, job_id: str) -> None:
    """Show a job: status, estimate, latest metrics, adapter."""
    state.show(state.client().get_job(job_id), print_job)


@finetune.command()
@click.argument("job_id")
@pass_state
def cancel(state: State, job_id: str) -> None:
    """Stop a job (it checkpoints, then ends as cancelled)."""
    job = state.client().cancel_job(job_id)
    state.show(job, lambda j: console.print(f"[yellow]■[/] {j.id} {j.status.value}"))


@finetune.command()
@click.argument("job_id")
@click.option("--tail", default=200, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--events", "show_events", is_flag=True, help="show lifecycle events instead of the log")
@pass_state
def logs(state: State, job_id: str, tail: int, show_events: bool) -> None:
    """The training log (or the job's events)."""
    client = state.client()
    if show_events:
        events = client.job_events(job_id)
        rows = [(e.at.strftime("%H:%M:%S"), _kind(e.kind), escape(e.message)) for e in events]
        state.show(events, lambda _: console.print(table(None, ["at", "kind", "message"], rows)))
        return
    state.show(client.job_logs(job_id, tail=tail), _print_lines)


def _print_lines(lines: list[str]) -> None:
    for line in lines:
        console.print(line, markup=False, highlight=False)


def _kind(kind: str) -> str:
    return f"[bold yellow]{escape(kind)}[/]" if kind == UNREACHABLE_EVENT_KIND else escape(kind)


@finetune.command()
@click.argument("job_id")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write a PNG: bits/token, S and Ŝ vs target band, λ",
)
@pass_state
def metrics(state: State, job_id: str, plot: Path | None) -> None:
    """Metric series: loss, DataBPT, ParamBPT (bits/token), S and Ŝ vs the target band, λ, lr, tokens/s."""
    client = state.client()
    points = client.job_metrics(job_id)
    if plot is not None:
        job = client.get_job(job_id)
        target = target_s_of(client, job)
        from cli.plot import plot_metrics

        plot_metrics(points, plot, target_s=target, title=f"{job.id} · {job.base_model}")
        if not state.json:
            console.print(f"[green]✓[/] wrote {plot}")
    state.show(points, print_metrics_table)
