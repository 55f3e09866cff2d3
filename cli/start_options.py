"""``finetune start``'s options as one object, and the ``--dataset`` file upload they may need."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import click
from pydantic import ValidationError
from rich.markup import escape

from api.domain.datasets import Dataset, ValidationReport
from api.domain.enums import TuneMethod
from api.domain.finetune import FineTuneRequest
from cli.client import ApiError
from cli.commands.datasets import print_report, with_progress
from cli.output import console, err_console
from cli.state import State


@dataclass(frozen=True)
class StartOptions:
    """The command line of ``finetune start``, one field per option (click fills them by name)."""

    dataset_id: str  # an id, or a JSONL file to upload first
    base_model: str
    method: str
    target_s: float | None
    epochs: float | None
    max_steps: int | None
    learning_rate: float | None
    lora_r: int | None
    hp: tuple[str, ...]
    instance_type: str | None
    instance_count: int
    spot: bool
    max_runtime: int
    dry_run: bool
    wait: bool
    idempotency_key: str | None

    def request(self, dataset_id: str) -> FineTuneRequest:
        """The API request for these options, on ``dataset_id`` (the stored dataset)."""
        return FineTuneRequest(
            dataset_id=dataset_id,
            base_model=self.base_model,
            method=TuneMethod(self.method),
            hyperparameters=hyperparameters(self.hp),
            target_s=self.target_s,
            epochs=self.epochs,
            max_steps=self.max_steps,
            learning_rate=self.learning_rate,
            lora_r=self.lora_r,
            instance_type=self.instance_type,
            instance_count=self.instance_count,
            spot=self.spot,
            max_runtime_seconds=self.max_runtime,
            dry_run=self.dry_run,
        )

    def launch_key(self) -> str | None:
        """The Idempotency-Key to send: none for a dry run, else the one given or a random one."""
        return None if self.dry_run else self.idempotency_key or str(uuid.uuid4())


def hyperparameters(values: tuple[str, ...]) -> dict[str, str]:
    """``--hp KEY=VALUE`` (repeatable) as a dict."""
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--hp")
        out[key.strip()] = value.strip()
    return out


def stored_dataset_id(state: State, value: str) -> str:
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
