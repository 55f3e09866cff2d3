"""The CLI's door to the SDK.

The SDK itself is :mod:`fastuner_sdk` (httpx + pydantic + tenacity only); this module re-exports
the two names the CLI uses (``from cli.client import FastunerClient, ApiError``) and adds ``connect``
with the CLI's defaults: no API URL means serve the API in-process (embedded mode, asked for
explicitly here), and a local key file is used when no key is given.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import fastuner_sdk
from fastuner_sdk import ApiError, FastunerClient


def local_api_key() -> str | None:
    """The key the API wrote for this machine's default tenant, if any (see ``cli.embedded``)."""
    from cli.embedded import local_api_key as read

    return read()


@contextmanager
def connect(api_url: str | None, api_key: str | None = None) -> Iterator[FastunerClient]:
    """A client for ``api_url``; with none, the same app served in-process (embedded mode).

    Without ``api_key`` the local key of this machine's default tenant (``{home}/api_key``,
    written by the API on a fresh install) is used when there is one.
    """
    if api_url:
        with fastuner_sdk.connect(api_url, api_key or local_api_key()) as client:
            yield client
    else:
        with fastuner_sdk.connect(None, api_key, embedded=True) as client:
            yield client


__all__ = ["ApiError", "FastunerClient", "connect", "local_api_key"]
