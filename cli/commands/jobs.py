"""``fastuner jobs``: operator commands (the reconciler)."""

from __future__ import annotations

import time

import click

from cli.output import console, print_json
from cli.state import State, pass_state


@click.group()
def jobs() -> None:
    """Operate the job reconciler."""


@jobs.command()
@click.option("--once", is_flag=True, help="one pass, then exit")
@click.option("--interval", default=5.0, show_default=True, help="seconds between passes")
@pass_state
def reconcile(state: State, once: bool, interval: float) -> None:
    """Sync every non-terminal job with its backend (register adapters of finished jobs)."""
    client = state.client()
    while True:
        report = client.reconcile()
        if state.json:
            print_json(report)
        else:
            console.print(
                f"checked {report['checked']} job(s), {len(report['transitions'])} transition(s), "
                f"{report['metrics_ingested']} metric point(s), {len(report['adapters_registered'])} adapter(s)"
            )
            for line in [*report["transitions"], *report["errors"]]:
                console.print(f"  · {line}")
        if once:
            return
        time.sleep(interval)
