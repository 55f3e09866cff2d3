"""``fastuner adapters``: list, get, download."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from cli.output import console, kv_table, print_json, table
from cli.state import State, pass_state
from cli.task_metrics import about, comparison, metrics_table, samples_table, summary_line, task_of


@click.group()
def adapters() -> None:
    """Trained LoRA adapters."""


@adapters.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 200))
@click.option("--cursor")
@pass_state
def list_(state: State, limit: int, cursor: str | None) -> None:
    """List adapters, newest first."""
    items, next_cursor = state.client().list_adapters(limit=limit, cursor=cursor)
    if state.json:
        print_json({"items": items, "next_cursor": next_cursor})
        return
    rows = []
    for a in items:
        base = a.eval_metrics.get("base", {}).get("bpt")
        ours = a.eval_metrics.get("adapter", {}).get("bpt")
        bpt = f"{base:.3f} → {ours:.3f}" if base is not None and ours is not None else ""
        task = task_of(a.eval_metrics)
        rows.append(
            (
                a.id,
                escape(a.base_model[-40:]),
                a.job_id,
                bpt,
                comparison(task) if task else "",
                a.created_at.strftime("%Y-%m-%d %H:%M"),
            )
        )
    columns = ["id", "base model", "job", "val BPT base → adapter", "task base → adapter", "created"]
    console.print(table(None, columns, rows))
    if next_cursor:
        console.print(f"[dim]more: --cursor '{next_cursor}'[/]")


@adapters.command()
@click.argument("adapter_id")
@pass_state
def get(state: State, adapter_id: str) -> None:
    """Show an adapter, its lineage and held-out evaluation."""
    a = state.client().get_adapter(adapter_id)
    if state.json:
        print_json(a)
        return
    ev = a.eval_metrics
    rows = [
        ("id", a.id),
        ("base model", a.base_model),
        ("job", a.job_id),
        ("dataset", f"{a.dataset_id} (sha256 {a.dataset_sha256[:16]}…)"),
        ("stored at", a.uri),
    ]
    if "base" in ev and "adapter" in ev:
        rows += [
            (
                "val BPT",
                f"{ev['base'].get('bpt', float('nan')):.4f} (base) → {ev['adapter'].get('bpt', float('nan')):.4f}",
            ),
            (
                "val perplexity",
                f"{ev['base'].get('perplexity', float('nan')):.4g} → {ev['adapter'].get('perplexity', float('nan')):.4g}",
            ),
        ]
    cfg = a.config
    if cfg:
        rows.append(
            (
                "config",
                ", ".join(
                    f"{k}={cfg[k]}"
                    for k in ("lora_r", "lora_alpha", "learning_rate", "target_s", "scu")
                    if k in cfg
                ),
            )
        )
    task = task_of(ev)
    if task:
        rows.append(("task", summary_line(task)))
    console.print(kv_table(None, rows))
    if task:
        console.print(f"[bold]task metrics[/] — {about(task)}")
        console.print(metrics_table(task))
        samples = samples_table(task)
        if samples is not None:
            console.print(samples)


@adapters.command()
@click.argument("adapter_id")
@click.option(
    "--output", "-o", type=click.Path(file_okay=False, path_type=Path), help="folder (default: ./ADAPTER_ID)"
)
@pass_state
def download(state: State, adapter_id: str, output: Path | None) -> None:
    """Download the PEFT folder (load it with PeftModel.from_pretrained)."""
    dest = state.client().download_adapter(adapter_id, output or Path(adapter_id))
    if state.json:
        print_json({"adapter_id": adapter_id, "path": str(dest.resolve())})
    else:
        console.print(f"[green]✓[/] {adapter_id} → {dest}")
