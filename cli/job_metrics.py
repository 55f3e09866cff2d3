"""``finetune metrics``: one table row per step (bits per token; Ŝ judged against the target
band), then the unreachable-target warnings."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from api.domain.finetune import FineTuneJob, MetricPoint
from api.domain.metrics import (
    loss_bpt,
    target_band,
    unreachable_flag,
    unreachable_message,
    unreachable_onsets,
)
from cli.client import FastunerClient
from cli.job_view import band_position
from cli.output import console, table

METRIC_COLUMNS = [
    "step",
    "loss bpt",
    "DataBPT",
    "ParamBPT",
    "val BPT",
    "S",
    "Ŝ",
    "λ",
    "lr",
    "tok/s",
    "Ŝ vs band",
]
# The record keys of the columns between "loss bpt" and "Ŝ vs band" ("val BPT": held-out, blank on
# the steps where the engine did not evaluate).
_VALUE_KEYS = ("data_bpt", "param_bpt", "val_bpt", "s", "s_hat", "lambda", "lr", "tokens_per_s")


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
    numbers = [loss_bpt(v), *(v.get(key) for key in _VALUE_KEYS)]
    return (p.step, *(_fmt(n) for n in numbers), where)


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


def target_s_of(client: FastunerClient, job: FineTuneJob) -> float | None:
    """The target S to draw: the job's ``target_s``, else its adapter's (None when neither has one)."""
    if "target_s" in job.hyperparameters:
        return float(job.hyperparameters["target_s"])
    if job.adapter_id:
        value = client.get_adapter(job.adapter_id).config.get("target_s")
        return float(value) if value is not None else None
    return None


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"
