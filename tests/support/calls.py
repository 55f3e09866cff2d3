"""A recorder of the requests a boto3 client sends."""

from __future__ import annotations

import copy
from typing import Any

from tests.support.aws import hook


class Calls(dict[str, list[dict[str, Any]]]):
    """Request parameters of every call a client made, by operation, in order."""

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.setdefault(model.name, []).append(copy.deepcopy(params))

    def of(self, operation: str) -> list[dict[str, Any]]:
        return self.get(operation, [])

    @classmethod
    def on(cls, client: Any) -> Calls:
        """A recorder of ``client``'s requests until the test ends."""
        calls = cls()
        service = client.meta.service_model.service_id.hyphenize()
        hook(client, f"before-parameter-build.{service}", calls)
        return calls
