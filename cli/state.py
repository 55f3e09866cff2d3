"""Per-invocation CLI state: API address, output mode and the lazily connected client; and the
global options that fill it (``--api-url``, ``--api-key``, ``--json``).

The global options are defined once here. The root group takes them (with their environment
variables) before the command; :func:`add_global_options` gives every subcommand the same options
so they also work after it (``fastuner datasets validate FILE --json``), writing into the same
State; given in both places, the later one wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from cli.client import FastunerClient, connect
from cli.output import print_json

F = TypeVar("F", bound=Callable[..., Any])
V = TypeVar("V")


@dataclass
class State:
    api_url: str | None
    api_key: str | None
    json: bool
    _client: FastunerClient | None = None

    def client(self) -> FastunerClient:
        if self._client is None:
            root = click.get_current_context().find_root()
            self._client = root.with_resource(connect(self.api_url, self.api_key))
        return self._client

    def show(self, value: V, render: Callable[[V], object]) -> None:
        """``value`` as JSON under ``--json``, else drawn for people by ``render``."""
        if self.json:
            print_json(value)
        else:
            render(value)


pass_state = click.make_pass_decorator(State)

# (flag, State field, click.Option keywords)
GLOBAL_OPTIONS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    (
        "--api-url",
        "api_url",
        {"envvar": "FASTUNER_API_URL", "help": "Fastuner API; default: serve in-process."},
    ),
    (
        "--api-key",
        "api_key",
        {"envvar": "FASTUNER_API_KEY", "help": "Bearer API key (when the API requires one)."},
    ),
    ("--json", "json", {"is_flag": True, "help": "Machine-readable JSON output."}),
)


def root_options(f: F) -> F:
    """The global options on the root group; the callback gets them as ``api_url, api_key, json``."""
    for flag, field, kwargs in reversed(GLOBAL_OPTIONS):
        f = click.option(flag, field, **kwargs)(f)
    return f


def _into_state(field: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is None or value is False:  # not given here: keep what the root was given
            return
        state = ctx.find_object(State)
        if state is not None:
            setattr(state, field, value)

    return callback


def add_global_options(command: click.Command) -> None:
    """Give ``command`` and every command under it the global options (no env vars: the root
    reads those), unless it already has an option of that name."""
    taken = {opt for param in command.params for opt in param.opts}
    for flag, field, kwargs in GLOBAL_OPTIONS:
        if flag not in taken:
            extra = {k: v for k, v in kwargs.items() if k != "envvar"}
            command.params.append(
                click.Option([flag], expose_value=False, callback=_into_state(field), **extra)
            )
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_global_options(sub)
