"""Per-invocation CLI state: API address, output mode and the lazily connected client."""

from __future__ import annotations

from dataclasses import dataclass

import click

from cli.client import FastunerClient, connect


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


pass_state = click.make_pass_decorator(State)
