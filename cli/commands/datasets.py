"""``fastuner datasets``: upload, validate, list, get, preview, delete."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from api.domain.datasets import SPLIT_NAMES, Dataset, ValidationReport
from cli.choices import FORMATS, SPLITS, TASK_TYPES
from cli.output import console, kv_table, print_json, table
from cli.state import State, pass_state


def _options(f: Any) -> Any:
    """The dataset options of upload and validate; the command gets them as ``**options`` (the
    SDK's upload keywords)."""
    f = click.option("--split", help="train,validation,test ratios (default 0.8,0.1,0.1)")(f)
    f = click.option("--seed", type=int, help="split seed (default 42)")(f)
    f = click.option("--format", type=FORMATS, help="force a format (default: auto-detect)")(f)
    return click.option("--task-type", type=TASK_TYPES, default="generation", show_default=True)(f)


@click.group()
def datasets() -> None:
    """Upload and inspect datasets."""


def with_progress(state: State, path: Path, action: str, call: Any) -> Any:
    if state.json:
        return call(None)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(f"{action} {path.name}", total=path.stat().st_size)
        return call(lambda n: progress.advance(task, n))


@datasets.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="dataset name (default: the file name)")
@_options
@pass_state
def upload(state: State, /, file: Path, name: str | None, **options: Any) -> None:
    """Validate, dedup, split and store FILE (JSONL)."""
    upload_to = state.client().upload_dataset
    ds: Dataset = _send(state, file, "uploading", upload_to, name=name or file.stem, **options)
    if not state.json:
        console.print(f"[green]✓[/] dataset [bold]{ds.id}[/] stored")
    state.show(ds, print_dataset)


@datasets.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_options
@pass_state
def validate(state: State, /, file: Path, **options: Any) -> None:
    """Dry run: report problems and split counts, store nothing. Exit 1 if invalid."""
    validate_on = state.client().validate_dataset
    report: ValidationReport = _send(state, file, "validating", validate_on, name=file.stem, **options)
    state.show(report, print_report)
    if not report.ok:
        raise SystemExit(1)


def _send(state: State, file: Path, action: str, call: Callable[..., Any], **options: Any) -> Any:
    """``call(file, on_progress=…, **options)`` under a progress bar (none with ``--json``)."""
    return with_progress(state, file, action, lambda cb: call(file, on_progress=cb, **options))


@datasets.command("list")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 200))
@click.option("--cursor", help="next_cursor from a previous page")
@pass_state
def list_(state: State, limit: int, cursor: str | None) -> None:
    """List datasets, newest first."""
    items, next_cursor = state.client().list_datasets(limit=limit, cursor=cursor)
    if state.json:
        print_json({"items": items, "next_cursor": next_cursor})
        return
    rows = [
        (
            d.id,
            escape(d.name),
            d.format.value,
            d.task_type.value,
            _counts(d.row_counts),
            d.created_at.strftime("%Y-%m-%d %H:%M"),
        )
        for d in items
    ]
    console.print(table(None, ["id", "name", "format", "task", "rows (train/val/test)", "created"], rows))
    if next_cursor:
        console.print(f"[dim]more: --cursor '{next_cursor}'[/]")


@datasets.command()
@click.argument("dataset_id")
@pass_state
def get(state: State, dataset_id: str) -> None:
    """Show a dataset and its manifest summary."""
    manifest = state.client().get_manifest(dataset_id)
    ds = state.client().get_dataset(dataset_id)
    if state.json:
        print_json({"dataset": ds, "manifest": manifest})
        return
    print_dataset(ds)
    print_report(manifest.report, header=False)


@datasets.command()
@click.argument("dataset_id")
@click.option("--split", default="train", show_default=True, type=SPLITS)
@click.option("--limit", default=5, show_default=True, type=click.IntRange(1, 100))
@pass_state
def preview(state: State, dataset_id: str, split: str, limit: int) -> None:
    """Show the first normalised rows of a split."""
    rows = state.client().preview_dataset(dataset_id, split=split, limit=limit)
    if state.json:
        print_json(rows)
        return
    for i, row in enumerate(rows, 1):
        console.rule(f"{split} #{i}" + (f"  label={row['label']}" if row.get("label") else ""))
        for msg in row.get("messages", []):
            console.print(f"[bold magenta]{msg['role']}[/]: {msg['content']}", highlight=False)


@datasets.command()
@click.argument("dataset_id")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@pass_state
def delete(state: State, dataset_id: str, yes: bool) -> None:
    """Delete a dataset (refused while a job uses it)."""
    if not yes and not state.json:
        click.confirm(f"Delete {dataset_id} and its stored splits?", abort=True)
    state.client().delete_dataset(dataset_id)
    state.show({"deleted": dataset_id}, lambda _: console.print(f"[green]✓[/] deleted {dataset_id}"))


def _counts(counts: dict[str, int]) -> str:
    return "/".join(str(counts.get(s, 0)) for s in SPLIT_NAMES)


def print_dataset(ds: Dataset) -> None:
    console.print(
        kv_table(
            None,
            [
                ("id", ds.id),
                ("name", ds.name),
                ("format", ds.format.value),
                ("task type", ds.task_type.value),
                ("status", ds.status.value),
                ("rows", _counts(ds.row_counts) + "  (train/validation/test)"),
                (
                    "seed / ratios",
                    f"{ds.seed} / {ds.ratios.train:g},{ds.ratios.validation:g},{ds.ratios.test:g}",
                ),
                ("sha256", ds.content_sha256),
                ("manifest", ds.manifest_uri),
            ],
        )
    )


def print_report(report: ValidationReport, *, header: bool = True) -> None:
    if header:
        mark = "[green]✓ valid[/]" if report.ok else "[red]✗ invalid[/]"
        console.print(f"{mark}  format={report.format.value if report.format else '?'}")
    console.print(
        kv_table(
            None,
            [
                ("lines", report.total_lines),
                ("valid rows", report.valid_rows),
                ("unique rows", report.unique_rows),
                ("duplicates dropped", report.duplicates_dropped),
                ("split", ", ".join(f"{k}={v}" for k, v in report.split_counts.items())),
                ("chars (p50/p95/max)", _stats(report.char_length)),
                ("tokens≈ (p50/p95/max)", _stats(report.token_length)),
            ],
        )
    )
    if report.label_distribution:
        labels = sorted({lbl for dist in report.label_distribution.values() for lbl in dist})
        rows = [
            [lbl, *(report.label_distribution.get(s, {}).get(lbl, 0) for s in report.label_distribution)]
            for lbl in labels
        ]
        console.print(table("labels", ["label", *report.label_distribution.keys()], rows))
    print_issue_groups(report.model_dump(mode="json"), to=console)


def _stats(stats: Any) -> str:
    return "" if stats is None else f"{stats.p50}/{stats.p95}/{stats.max}"


def print_issue_groups(report: dict[str, Any], *, to: Console) -> None:
    for kind, style in (("errors", "red"), ("warnings", "yellow")):
        groups = report.get(kind) or []
        if not groups:
            continue
        rows = []
        for g in groups:
            lines = ", ".join(str(n) for n in g["lines"])
            more = g["count"] - len(g["lines"])
            rows.append(
                (g["code"], g["count"], g["message"], lines + (f" (+{more} more)" if more > 0 else ""))
            )
        to.print(table(f"[{style}]{kind}[/]", ["code", "count", "message", "lines"], rows))
