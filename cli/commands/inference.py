"""``fastuner inference``: run (one prompt, optionally streamed) and batch (a file of prompts)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from api.domain.deployments import (
    GenerationParameters,
    InferenceRequest,
    InferenceResponse,
    Inputs,
    as_user_turn,
    parse_batch_line,
)
from cli.output import console, print_json
from cli.state import State, pass_state


@dataclass(frozen=True)
class Target:
    """Where and how to generate: ``--adapter`` / ``--deployment`` and the generation options."""

    adapter_id: str | None
    deployment_id: str | None
    parameters: GenerationParameters

    def request(self, inputs: Inputs) -> InferenceRequest:
        return InferenceRequest(
            adapter_id=self.adapter_id,
            deployment_id=self.deployment_id,
            inputs=inputs,
            parameters=self.parameters,
        )


_TARGET_OPTIONS = (
    click.option("--adapter", "adapter_id", help="adapter id (adp_…)"),
    click.option("--deployment", "deployment_id", help="deployment id (default: one serving the adapter)"),
    click.option("--max-new-tokens", type=int, default=64, show_default=True),
    click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy"),
    click.option("--top-p", type=float, default=1.0, show_default=True),
    click.option("--stop", multiple=True, help="stop string (repeatable)"),
)


def _target_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The target and generation options; the command gets them as one ``target: Target``."""

    @functools.wraps(f)
    def command(
        *args: Any,
        adapter_id: str | None,
        deployment_id: str | None,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        stop: tuple[str, ...],
        **kwargs: Any,
    ) -> Any:
        if not adapter_id and not deployment_id:
            raise click.UsageError("give --adapter or --deployment")
        params = GenerationParameters(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=list(stop)
        )
        return f(*args, target=Target(adapter_id, deployment_id, params), **kwargs)

    wrapped: Callable[..., Any] = command
    for option in reversed(_TARGET_OPTIONS):
        wrapped = option(wrapped)
    return wrapped


@click.group()
def inference() -> None:
    """Generate text with deployed adapters."""


RAW_OPTION = click.option(
    "--raw",
    is_flag=True,
    help="send prompts as plain text; by default a prompt is sent as a user turn, rendered by the "
    "model's chat template as the adapter's training data was",
)


@inference.command()
@click.option("--input", "text", required=True, help="the prompt")
@click.option("--stream", is_flag=True, help="print the text as it is generated")
@RAW_OPTION
@_target_options
@pass_state
def run(state: State, /, text: str, stream: bool, raw: bool, target: Target) -> None:
    """Generate for one prompt (a user turn; --raw: plain text)."""
    req = target.request(as_user_turn(text, raw))
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
@RAW_OPTION
@_target_options
@pass_state
def batch(state: State, /, file: Path, output: Path, raw: bool, target: Target) -> None:
    """Generate for every line of FILE (JSONL with "input" / "prompt" / "messages", or plain text;
    a prompt string goes as a user turn, --raw: as plain text)."""
    client = state.client()
    lines = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn())
    progress = Progress(*columns, TimeRemainingColumn(), console=console, disable=state.json)
    written = 0
    with output.open("w", encoding="utf-8") as out, progress:
        task = progress.add_task("generating", total=len(lines))
        for number, line in enumerate(lines, 1):
            inputs = as_user_turn(_batch_input(line, number), raw)
            resp = client.infer(target.request(inputs))
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
