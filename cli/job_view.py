"""The live and final views of a fine-tune job: the Rich live view that follows the job's event
stream (``finetune start --wait``, ``finetune wait``), the job and dry-run tables, and the SCU rows
(bits per token, S and Ŝ against the target band, λ)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from api.domain.enums import JobStatus
from api.domain.finetune import DryRun, FineTuneJob, MetricPoint
from api.domain.metrics import loss_bpt, target_band, unreachable_flag, unreachable_message
from cli.client import ApiError, FastunerClient
from cli.output import console, err_console, kv_table
from cli.task_metrics import summary_line, task_of


def follow(client: FastunerClient, job_id: str, *, quiet: bool = False) -> FineTuneJob:
    """Follow the job on the API's event stream until it ends (no polling); a Rich live view of
    status, progress and the latest bits per token, S and Ŝ against the target band, λ, and a
    warning while the target is unreachable. Returns the final job."""
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[eta]}")
    )
    task = progress.add_task("training", total=1.0, eta="")
    job = client.get_job(job_id)
    m: dict[str, float] = carry_validation({}, dict(job.latest_metrics or {}))

    def show() -> None:
        eta = f"eta {int(m['eta_s'])}s" if "eta_s" in m and job.status is JobStatus.RUNNING else ""
        progress.update(task, completed=_fraction(job, m), eta=eta)
        if not quiet:
            live.update(Group(_status_table(job, m), progress))

    with Live(console=console, refresh_per_second=4, transient=False, auto_refresh=not quiet) as live:
        show()
        if not job.status.terminal:
            for update in client.follow_job(job_id, after=int(m.get("step", 0))):
                if isinstance(update, MetricPoint):
                    m = carry_validation(m, {"step": float(update.step), **update.values})
                elif update.status != job.status.value:  # the stream says little; fetch the rest
                    job = client.get_job(job_id)
                show()
            job = client.get_job(job_id)
            latest = job.latest_metrics or {}
            if latest.get("step", 0.0) >= m.get("step", 0.0):
                m = carry_validation(m, dict(latest))
            show()
    if not quiet:
        console.print()
    return job


def _fraction(job: FineTuneJob, m: dict[str, float]) -> float:
    if job.status is JobStatus.COMPLETED:
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
    rows = [("job", job.id), ("status", _status(job))]
    if m:
        rows += scu_rows(m, target_s=_target_s(job), controller=_controller(job))
    if job.failure_reason:
        rows.append(("failure", escape(job.failure_reason)))
    return kv_table(None, rows)


def carry_validation(previous: Mapping[str, float], new: dict[str, float]) -> dict[str, float]:
    """``new`` with the latest validation BPT seen (``val_bpt``, and ``val_step`` where it was
    measured): the engine measures it every ``eval_every`` steps, not on every record."""
    if "val_bpt" in new:
        return {**new, "val_step": new.get("step", 0.0)}
    if "val_bpt" in previous:
        return {**new, "val_bpt": previous["val_bpt"], "val_step": previous.get("val_step", previous["step"])}
    return new


def scu_rows(
    m: Mapping[str, float], *, target_s: float | None = None, controller: str = "on"
) -> list[tuple[str, str]]:
    """The latest record as people read it: bits per token, S and Ŝ against the target band, λ.

    Values are Rich markup. A target the controller cannot reach gets a warning row that says
    what it means and what to change. With the SCU ``off`` or ``fixed`` nothing steers S: no
    target or band is shown, and a row says λ is held.
    """
    rows: list[tuple[str, str]] = []
    loss = loss_bpt(m)
    if loss is not None:
        rows.append(("loss", f"{loss:.4f} bits/token (DataBPT + λ·ParamBPT)"))
    if "data_bpt" in m:
        rows.append(("DataBPT", f"{m['data_bpt']:.4f} bits/token"))
    if "param_bpt" in m:
        rows.append(("ParamBPT", f"{m['param_bpt']:.4g} bits/token"))
    if "val_bpt" in m:  # held-out, measured every eval_every steps
        at = f" (step {int(m['val_step'])})" if "val_step" in m else ""
        rows.append(("validation", f"{m['val_bpt']:.4f} bits/token{at}"))
    held = controller in ("off", "fixed")  # a built-in that never moves λ (a plugin may steer S)
    band = None if held else target_band(m, target_s)
    if held:
        rows.append(("SCU", f"{escape(controller)} (λ held; no target for S)"))
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
        rows.append(_unreachable_row(m, target_s))
    return rows


def _unreachable_row(m: Mapping[str, float], target_s: float | None) -> tuple[str, str]:
    return ("⚠ target", f"[bold yellow]{escape(unreachable_message(m, target_s=target_s))}[/]")


def _status(job: FineTuneJob) -> str:
    return job.status.value + (f" ({job.secondary_status})" if job.secondary_status else "")


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


def _controller(job: FineTuneJob) -> str:
    """The job's λ controller (the ``scu`` hyperparameter; the engine's default is ``on``)."""
    return str(job.hyperparameters.get("scu") or "on")


def _target_s(job: FineTuneJob) -> float | None:
    """The job's ``target_s`` hyperparameter as a number (None when unset or not a number)."""
    value = job.hyperparameters.get("target_s")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def print_task_summary(client: FastunerClient, job: FineTuneJob) -> None:
    """The adapter's task metrics in one line, e.g. ``exact match 3% → 91% (200 held-out rows)``;
    nothing when the job has no adapter, the adapter no task metrics, or the API does not answer."""
    if job.status is not JobStatus.COMPLETED or not job.adapter_id:
        return
    try:
        adapter = client.get_adapter(job.adapter_id)
    except ApiError:
        return
    task = task_of(adapter.eval_metrics)
    if task is not None:
        console.print(f"[green]✓[/] [bold]{escape(summary_line(task))}[/]", highlight=False)


def exit_unless_completed(job: FineTuneJob) -> None:
    """Exit 1, the reason on stderr, unless the job completed."""
    if job.status is JobStatus.COMPLETED:
        return
    reason = f": {job.failure_reason}" if job.failure_reason else ""
    err_console.print(f"[bold red]✗[/] job {job.id} {job.status.value}{escape(reason)}", highlight=False)
    raise SystemExit(1)


def print_dry_run(dry: DryRun) -> None:
    """What a launch would be: backend, instance, sizes, runtime and cost estimates, then notes."""
    console.print("[bold]dry run[/] — nothing launched")
    console.print(kv_table(None, _estimate_rows(dry)))
    for note in [*dry.estimate.notes, *dry.warnings]:
        console.print(f"[dim]· {note}[/]")


def _estimate_rows(dry: DryRun) -> list[tuple[str, str]]:
    est = dry.estimate
    spot = " (spot)" if est.spot else ""
    memory = "n/a"
    if est.gpu_memory_needed_gb is not None:
        memory = f"{est.gpu_memory_needed_gb} GB needed / {est.gpu_memory_available_gb} GB"
    runtime = est.expected_runtime_seconds
    cost = est.estimated_cost_usd
    return [
        ("backend", dry.backend),
        ("instance", f"{est.instance_count} × {est.instance_type}{spot}"),
        ("model params", f"{est.n_params:,}" if est.n_params else "unknown"),
        ("train tokens≈", f"{est.train_tokens:,}" if est.train_tokens else "unknown"),
        ("GPU memory", memory),
        ("runtime≈", f"{runtime} s" if runtime is not None else "unknown"),
        ("cost≈", f"${cost:.2f} (${est.hourly_usd}/h)" if cost is not None else "unknown"),
        ("hyperparameters", ", ".join(f"{k}={v}" for k, v in dry.hyperparameters.items())),
    ]


def print_job(job: FineTuneJob) -> None:
    m = job.latest_metrics or {}
    rows: list[tuple[str, Any]] = [
        ("id", job.id),
        ("status", _status(job)),
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
        rows.append(_unreachable_row(m, _target_s(job)))
    if job.failure_reason:
        rows.append(("failure", escape(job.failure_reason)))
    if job.billable_seconds is not None:
        rows.append(("billable", f"{job.billable_seconds} s"))
    if job.cost_estimate_usd is not None:
        rows.append(("estimate", f"${job.cost_estimate_usd:.2f}"))
    rows.append(("adapter", job.adapter_id or "—"))
    console.print(kv_table(None, rows))
