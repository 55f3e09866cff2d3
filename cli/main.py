"""``fastuner``: the command line. Every command speaks to the REST API through the SDK client.

With no ``--api-url`` (or ``FASTUNER_API_URL``) the CLI serves the very same app in-process on the
embedded default (SQLite + local store + local backend under ``~/.fastuner``).
"""

from __future__ import annotations

import sys

import click
from rich.markup import escape

from cli.client import ApiError
from cli.output import console, err_console, kv_table, print_json
from cli.state import State, add_global_options, pass_state, root_options


class FastunerGroup(click.Group):
    """Turns API errors into one readable line (and the request id) instead of a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            state = ctx.find_object(State)
            if state is not None and state.json:
                print_json(
                    {
                        "code": exc.code,
                        "message": exc.message,
                        "request_id": exc.request_id,
                        "details": exc.details,
                    }
                )
            else:
                err_console.print(
                    f"[bold red]error[/] {escape(f'[{exc.code}] {exc.message}')}", highlight=False
                )
                _print_error_details(exc)
                if exc.request_id:
                    err_console.print(f"[dim]request id: {exc.request_id}[/]")
            sys.exit(1)


def _print_error_details(exc: ApiError) -> None:
    details = exc.details
    if isinstance(details, dict) and isinstance(details.get("errors"), list):
        from cli.commands.datasets import print_issue_groups

        print_issue_groups(details, to=err_console)


@click.group(cls=FastunerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@root_options
@click.version_option(package_name="fastuner")
@click.pass_context
def cli(ctx: click.Context, api_url: str | None, api_key: str | None, json: bool) -> None:
    """Fastuner: LoRA fine-tuning on SageMaker, or on this machine.

    --api-url, --api-key and --json work before or after the command.
    """
    ctx.obj = State(api_url=api_url, api_key=api_key, json=json)


@cli.command()
@pass_state
def health(state: State) -> None:
    """Check the API, database and store."""
    data = state.client().health()
    if state.json:
        print_json(data)
    else:
        console.print(kv_table("fastuner", data.items()))


@cli.command()
@pass_state
def whoami(state: State) -> None:
    """The tenant your API key belongs to, its quotas and what is in use."""
    from cli.commands.admin import tenant_table

    info = state.client().tenant()
    if state.json:
        print_json(info)
    else:
        console.print(tenant_table(info))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def server(host: str, port: int) -> None:
    """Run the REST API (OpenAPI docs at /docs).

    Slow clients are cut off (FASTUNER_HEADER_TIMEOUT_SECONDS, FASTUNER_BODY_TIMEOUT_SECONDS); in
    production put a reverse proxy in front too (README: "Running behind a reverse proxy").
    """
    import uvicorn

    from api.app import create_app
    from api.server import uvicorn_options
    from api.settings import get_settings

    settings = get_settings()
    uvicorn.run(create_app(settings), host=host, port=port, **uvicorn_options(settings))


def _register() -> None:
    from cli.commands import (
        adapters,
        admin,
        datasets,
        deployments,
        finetune,
        inference,
        jobs,
        models,
        ui,
        worker,
    )

    cli.add_command(datasets.datasets)
    cli.add_command(finetune.finetune)
    cli.add_command(adapters.adapters)
    cli.add_command(jobs.jobs)
    cli.add_command(deployments.deployments)
    cli.add_command(inference.inference)
    cli.add_command(deployments.janitor)
    cli.add_command(deployments.costs)
    cli.add_command(admin.admin)
    cli.add_command(worker.worker)
    cli.add_command(models.models)
    cli.add_command(ui.ui)  # the web console (api/console)
    for command in cli.commands.values():  # the global options also after the command
        add_global_options(command)


_register()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
