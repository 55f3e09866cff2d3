"""``fastuner finetune``: start (a dataset id or a JSONL file; a live view under --wait), wait, list,
get, cancel, logs, metrics. The live view follows the job's event stream (no polling)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from api.domain.datasets import Dataset, ValidationReport
from api.domain.enums import TuneMethod
from api.domain.finetune import DryRun, FineTuneJob, FineTuneRequest, MetricPoint
from api.domain.metrics import (
    UNREACHABLE_EVENT_KIND,
    loss_bpt,
    target_band,
    unreachable_flag,
    unreachable_message,
    unreachable_onsets,
)
from cli.client import ApiError, FastunerClient
from cli.commands.datasets import print_report, with_progress
from cli.output import console, err_console, kv_table, print_json, table
from cli.state import State, pass_state
from cli.task_metrics import summary_line, task_of


@click.group()
def finetune() -> None:
    """Launch and follow fine-tuning jobs."""


def _hyper(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--hp")
        out[key.strip()] = value.strip()
    return out


@finetune.command()
@click.option(
    "--dataset",
    "dataset_id",
    required=True,
    help="dataset id (ds_…), or a JSONL file: uploaded first (name = file name; also under --dry-run)",
)
@click.option("--model", "base_model", required=True, help="base model: allowed HF id or local folder")
@click.option("--method", type=click.Choice(["lora", "qlora"]), default="lora", show_default=True)
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
def start(state: State, dataset_id: str, base_model: str, method: str, target_s: float | None,
          epochs: float | None, max_steps: int | None, learning_rate: float | None, lora_r: int | None,
          hp: tuple[str, ...], instance_type: str | None, instance_count: int, spot: bool, max_runtime: int,
          dry_run: bool, wait: bool, idempotency_key: str | None) -> None:  # fmt: skip
    """Start a fine-tune of MODEL on DATASET (an id, or a JSONL file to upload first)."""
    dataset_id = _dataset_id(state, dataset_id)
    req = FineTuneRequest(
        dataset_id=dataset_id, base_model=base_model, method=TuneMethod(method),
        hyperparameters=_hyper(hp), target_s=target_s, epochs=epochs, max_steps=max_steps,
        learning_rate=learning_rate, lora_r=lora_r, instance_type=instance_type, instance_count=instance_count,
        spot=spot, max_runtime_seconds=max_runtime, dry_run=dry_run,
    )  # fmt: skip
    client = state.client()
    result = client.start_finetune(
        req, idempotency_key=None if dry_run else idempotency_key or str(uuid.uuid4())
    )
    if isinstance(result, DryRun):
        if state.json:
            print_json(result)
        else:
            print_dry_run(result)
        return
    if not state.json:
        console.print(f"[green]✓[/] job [bold]{result.id}[/] {result.status.value} on {result.backend}")
        if result.estimate and result.estimate.estimated_cost_usd is not None:
            console.print(f"  estimated cost ${result.estimate.estimated_cost_usd:.2f}")
    if wait:
        result = follow(client, result.id, quiet=state.json)
    if state.json:
        print_json(result)
    else:
        print_job(result)
        if wait:
            print_task_summary(client, result)
    if wait:
        exit_unless_completed(result)


@finetune.command()
@click.argument("job_id")
@pass_state
def wait(state: State, job_id: str) -> None:
    """Follow a job live until it ends (its event stream: bits per token, Ŝ vs the band, λ).

    Exit 0 when it completed, 1 when it failed or was cancelled (the reason goes to stderr).
    """
    client = state.client()
    job = follow(client, job_id, quiet=state.json)
    if state.json:
        print_json(job)
    else:
        print_job(job)
        print_task_summary(client, job)
    exit_unless_completed(job)


def print_task_summary(client: FastunerClient, job: FineTuneJob) -> None:
    """The adapter's task metrics in one line, e.g. ``exact match 3% → 91% (200 held-out rows)``;
    nothing when the job has no adapter, the adapter no task metrics, or the API does not answer."""
    if job.status.value != "completed" or not job.adapter_id:
        return
    try:
        adapter = client.get_adapter(job.adapter_id)
    except ApiError:
        return
    task = task_of(adapter.eval_metrics)
    if task is not None:
        console.print(f"[green]✓[/] [bold]{escape(summary_line(task))}[/]", highlight=False)


def exit_unless_completed(job: FineTuneJob) -> None:
    if job.status.value == "completed":
        return
    reason = f": {job.failure_reason}" if job.failure_reason else ""
    err_console.print(f"[bold red]✗[/] job {job.id} {job.status.value}{escape(reason)}", highlight=False)
    raise SystemExit(1)


def _dataset_id(state: State, value: str) -> str:
    """``--dataset`` as given when it is an id; an existing file is uploaded (with progress) and
    its new id returned. A file that fails validation shows the line-numbered report and exits 1."""
    path = Path(value)
    if not path.is_file():
        if value.endswith((".jsonl", ".json")) or "/" in value:
            raise click.BadParameter(f"no such file: {value}", param_hint="--dataset")
        return value
    client = state.client()
    try:
        ds: Dataset = with_progress(
            state, path, "uploading", lambda cb: client.upload_dataset(path, on_progress=cb, name=path.stem)
        )
    except ApiError as exc:
        report = _report(exc) if not state.json else None
        if report is None:
            raise
        print_report(report)
        err_console.print(f"[bold red]✗[/] {escape(str(path))} is not a valid dataset: nothing was started")
        raise SystemExit(1) from None
    if not state.json:
        console.print(f"[green]✓[/] dataset [bold]{ds.id}[/] stored from {escape(path.name)}")
    return ds.id


def _report(exc: ApiError) -> ValidationReport | None:
    if exc.code != "validation_failed" or not isinstance(exc.details, dict):
        return None
    try:
        return ValidationReport.model_validate(exc.details)
    except ValidationError:
        return None


def follow(client: FastunerClient, job_id: str, *, quiet: bool = False) -> FineTuneJob:
    """Follow the job on the API's event stream until it ends (no polling); a Rich live view of
    status, progress and the latest bits per token, S and Ŝ against the target band, λ, and a
    warning while the target is unreachable. Returns the final job."""
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[eta]}")
    )
    task = progress.add_task("training", total=1.0, eta="")
    job = client.get_job(job_id)
    m: dict[str, float] = dict(job.latest_metrics or {})

    def show() -> None:
        eta = f"eta {int(m['eta_s'])}s" if "eta_s" in m and job.status.value == "running" else ""
        progress.update(task, completed=_fraction(job, m), eta=eta)
        if not quiet:
            live.update(Group(_status_table(job, m), progress))

    with Live(console=console, refresh_per_second=4, transient=False, auto_refresh=not quiet) as live:
        show()
        if not job.status.terminal:
            for update in client.follow_job(job_id, after=int(m.get("step", 0))):
                if isinstance(update, MetricPoint):
                    m = {"step": float(update.step), **update.values}
                elif update.status != job.status.value:  # the stream says little; fetch the rest
                    job = client.get_job(job_id)
                show()
            job = client.get_job(job_id)
            latest = job.latest_metrics or {}
            if latest.get("step", 0.0) >= m.get("step", 0.0):
                m = dict(latest)
            show()
    if not quiet:
        console.print()
    return job


def _fraction(job: FineTuneJob, m: dict[str, float]) -> float:
    if job.status.value == "completed":
        return 1.0
    max_steps = job.hyperparameters.get("max_steps")
    step = m.get("step", 0.0)
    if max_steps and step:
        return min(1.0, step / float(max_steps))
    if "eta_s" in m and job.started_at:
        elapsed = (datetime.now(UTC) - job.started_at).total_seconds()
        return min(1.0, elapsed / max(elapsed + m["eta_s"], 1e-9))
    return 0.0


def _status_table(job: FineTuneJob, m: dict[str, float]) -> Any:
    rows = [
        ("job", job.id),
        ("status", job.status.value + (f" ({job.secondary_status})" if job.secondary_status else "")),
    ]
    if m:
        rows += scu_rows(m, target_s=_float(job.hyperparameters.get("target_s")))
    if job.failure_reason:
        rows.append(("failure", escape(job.failure_reason)))
    return kv_table(None, rows)


def scu_rows(m: Mapping[str, float], *, target_s: float | None = None) -> list[tuple[str, str]]:
    """The latest record as people read it: bits per token, S and Ŝ against the target band, λ.

    Values are Rich markup. A target the controller cannot reach gets a warning row that says
    what it means and what to change.
    """
    rows: list[tuple[str, str]] = []
    loss = loss_bpt(m)
    if loss is not None:
        rows.append(("loss", f"{loss:.4f} bits/token (DataBPT + λ·ParamBPT)"))
    if "data_bpt" in m:
        rows.append(("DataBPT", f"{m['data_bpt']:.4f} bits/token"))
    if "param_bpt" in m:
        rows.append(("ParamBPT", f"{m['param_bpt']:.4g} bits/token"))
    band = target_band(m, target_s)
    if "s_hat" in m:  # the controller acts on Ŝ; S is the last step's raw value
        if "s" in m:
            rows.append(("S", f"{m['s']:.3g}"))
        rows.append(("Ŝ", against_band(m["s_hat"], band)))
    elif "s" in m:
        rows.append(("S", against_band(m["s"], band)))
    if "lambda" in m:
        rows.append(("λ", f"{m['lambda']:.4g}"))
    if "tokens_per_s" in m:
        rows.append(("tokens/s", f"{m['tokens_per_s']:.0f}"))
    if unreachable_flag(m):
        rows.append(("⚠ target", f"[bold yellow]{escape(unreachable_message(m, target_s=target_s))}[/]"))
    return rows


def band_position(value: float, band: tuple[float, float, float] | None) -> str:
    """'in', 'above' or 'below' the band ('' without a band or a number)."""
    if band is None or not math.isfinite(value) or band[0] == band[2]:
        return ""
    low, _, high = band
    return "above" if value > high else "below" if value < low else "in"


def against_band(value: float, band: tuple[float, float, float] | None) -> str:
    """e.g. ``0.031 (target 0.03, band 0.0271–0.0332) ✓ in band`` (Rich markup)."""
    text = f"{value:.3g}"
    if band is None:
        return text
    low, target, high = band
    if low == high:
        return f"{text} (target {target:.3g})"
    text += f" (target {target:.3g}, band {low:.3g}–{high:.3g})"
    where = band_position(value, band)
    if where == "in":
        return text + " [green]✓ in band[/]"
    if where:
        return text + f" [yellow]{'▲' if where == 'above' else '▼'} {where} band[/]"
    return text


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


@finetune.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 200))
@click.option(
    "--status",
    type=click.Choice(
        ["queued", "launching", "provisioning", "running", "cancelling", "completed", "failed", "cancelled"]
    ),
)
@click.option("--cursor")
@pass_state
def list_(state: State, limit: int, status: str | None, cursor: str | None) -> None:
    """List fine-tune jobs, newest first."""
    items, next_cursor = state.client().list_jobs(limit=limit, status=status, cursor=cursor)
    if state.json:
        print_json({"items": items, "next_cursor": next_cursor})
        return
    rows = [
        (
            j.id,
            j.status.value,
            j.base_model[-40:],
            j.dataset_id,
            j.adapter_id or "",
            j.created_at.strftime("%Y-%m-%d %H:%M"),
        )
        for j in items
    ]
    console.print(table(None, ["id", "status", "model", "dataset", "adapter", "created"], rows))
    if next_cursor:
        console.print(f"[dim]more: --cursor '{next_cursor}'[/]")


@finetune.command()
@click.argument("job_id")
@pass_state
def get(state: State, job_id: str) -> None:
    """Show a job: status, estimate, latest metrics, adapter."""
    job = state.client().get_job(job_id)
    if state.json:
        print_json(job)
    else:
        print_job(job)


@finetune.command()
@click.argument("job_id")
@pass_state
def cancel(state: State, job_id: str) -> None:
    """Stop a job (it checkpoints, then ends as cancelled)."""
    job = state.client().cancel_job(job_id)
    if state.json:
        print_json(job)
    else:
        console.print(f"[yellow]■[/] {job.id} {job.status.value}")


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
        if state.json:
            print_json(events)
            return
        console.print(
            table(
                None,
                ["at", "kind", "message"],
                [(e.at.strftime("%H:%M:%S"), _kind(e.kind), escape(e.message)) for e in events],
            )
        )
        return
    lines = client.job_logs(job_id, tail=tail)
    if state.json:
        print_json(lines)
        return
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
        target = _target_s(client, job)
        from cli.plot import plot_metrics

        plot_metrics(points, plot, target_s=target, title=f"{job.id} · {job.base_model}")
        if not state.json:
            console.print(f"[green]✓[/] wrote {plot}")
    if state.json:
        print_json(points)
        return
    print_metrics_table(points)


METRIC_COLUMNS = ["step", "loss bpt", "DataBPT", "ParamBPT", "S", "Ŝ", "λ", "lr", "tok/s", "Ŝ vs band"]


def _metric_row(p: MetricPoint) -> tuple[Any, ...]:
    v = p.values
    flag = unreachable_flag(v)
    band = target_band(v)
    acted = v.get("s_hat", v.get("s"))
    if flag:
        where = "[bold yellow]⚠ λ at max[/]" if flag > 0 else "[bold yellow]⚠ λ at min[/]"
    else:
        where = {"in": "[green]✓[/]", "above": "[yellow]▲ above[/]", "below": "[yellow]▼ below[/]"}.get(
            band_position(acted, band) if acted is not None else "", ""
        )
    return (
        p.step, _fmt(loss_bpt(v)), _fmt(v.get("data_bpt")), _fmt(v.get("param_bpt")), _fmt(v.get("s")),
        _fmt(v.get("s_hat")), _fmt(v.get("lambda")), _fmt(v.get("lr")), _fmt(v.get("tokens_per_s")), where,
    )  # fmt: skip


def print_metrics_table(points: list[MetricPoint]) -> None:
    """One row per step (bits per token; Ŝ judged against the target band), then any warnings."""
    if points:
        band = target_band(points[-1].values)
        if band is not None:
            low, target, high = band
            width = f", band {low:.4g}–{high:.4g}" if low < high else ""
            console.print(f"target S* {target:.4g}{width}; bits per token")
    console.print(table(None, METRIC_COLUMNS, [_metric_row(p) for p in points]))
    for rec in unreachable_onsets([{"step": float(p.step), **p.values} for p in points]):
        message = unreachable_message(rec, since_step=int(rec["step"]))
        console.print(f"[bold yellow]⚠ {escape(message)}[/]")


def _target_s(client: FastunerClient, job: FineTuneJob) -> float | None:
    if "target_s" in job.hyperparameters:
        return float(job.hyperparameters["target_s"])
    if job.adapter_id:
        value = client.get_adapter(job.adapter_id).config.get("target_s")
        return float(value) if value is not None else None
    return None


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def print_dry_run(dry: DryRun) -> None:
    est = dry.estimate
    console.print("[bold]dry run[/] — nothing launched")
    console.print(kv_table(None, [
        ("backend", dry.backend),
        ("instance", f"{est.instance_count} × {est.instance_type}" + (" (spot)" if est.spot else "")),
        ("model params", f"{est.n_params:,}" if est.n_params else "unknown"),
        ("train tokens≈", f"{est.train_tokens:,}" if est.train_tokens else "unknown"),
        ("GPU memory", f"{est.gpu_memory_needed_gb} GB needed / {est.gpu_memory_available_gb} GB"
         if est.gpu_memory_needed_gb is not None else "n/a"),
        ("runtime≈", f"{est.expected_runtime_seconds} s" if est.expected_runtime_seconds is not None else "unknown"),
        ("cost≈", f"${est.estimated_cost_usd:.2f} (${est.hourly_usd}/h)" if est.estimated_cost_usd is not None else "unknown"),
        ("hyperparameters", ", ".join(f"{k}={v}" for k, v in dry.hyperparameters.items())),
    ]))  # fmt: skip
    for note in [*est.notes, *dry.warnings]:
        console.print(f"[dim]· {note}[/]")


def print_job(job: FineTuneJob) -> None:
    m = job.latest_metrics or {}
    rows: list[tuple[str, Any]] = [
        ("id", job.id),
        ("status", job.status.value + (f" ({job.secondary_status})" if job.secondary_status else "")),
        ("model", job.base_model),
        ("dataset", job.dataset_id),
        ("method", job.method.value),
        (
            "backend",
            f"{job.backend} · {job.instance_count} × {job.instance_type}" + (" spot" if job.spot else ""),
        ),
        ("backend job", job.backend_job_name),
    ]
    if m:
        rows.append(("latest", ", ".join(f"{k}={v:.4g}" for k, v in m.items())))
    if unreachable_flag(m):
        target = _float(job.hyperparameters.get("target_s"))
        rows.append(("⚠ target", f"[bold yellow]{escape(unreachable_message(m, target_s=target))}[/]"))
    if job.failure_reason:
        rows.append(("failure", escape(job.failure_reason)))
    if job.billable_seconds is not None:
        rows.append(("billable", f"{job.billable_seconds} s"))
    if job.cost_estimate_usd is not None:
        rows.append(("estimate", f"${job.cost_estimate_usd:.2f}"))
    rows.append(("adapter", job.adapter_id or "—"))
    console.print(kv_table(None, rows))
