"""``connect``: a :class:`FastunerClient` for a URL from the arguments or the environment, or for
the API served in this process (``embedded=True``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx

from fastuner_sdk.client import DEFAULT_TIMEOUT, FastunerClient
from fastuner_sdk.errors import ConfigurationError


@contextmanager
def connect(
    api_url: str | None = None,
    api_key: str | None = None,
    *,
    embedded: bool = False,
    timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
    transport: httpx.BaseTransport | None = None,
) -> Iterator[FastunerClient]:
    """A client for the API at ``api_url`` (default ``$FASTUNER_API_URL``) with ``api_key``
    (default ``$FASTUNER_API_KEY``).

    ``embedded=True`` serves the API in-process on a loopback port instead (the CLI's default
    when no URL is configured); it needs the full ``fastuner`` install and uses the local key
    of ``$FASTUNER_HOME`` when no key is given. Without a URL and without ``embedded=True`` this
    raises :class:`ConfigurationError` rather than guessing.
    """
    api_key = api_key or os.environ.get("FASTUNER_API_KEY") or None
    with ExitStack() as stack:
        if embedded:
            if api_url:
                raise ConfigurationError("embedded=True serves the API in-process: give no api_url")
            from cli.embedded import local_api_key, serve_in_thread

            api_url = stack.enter_context(serve_in_thread())
            api_key = api_key or local_api_key()
        else:
            api_url = api_url or os.environ.get("FASTUNER_API_URL") or None
            if not api_url:
                raise ConfigurationError(
                    "no Fastuner API URL: pass api_url=, set FASTUNER_API_URL, "
                    "or connect(embedded=True) to serve the API in this process"
                )
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        http = stack.enter_context(
            httpx.Client(base_url=api_url, headers=headers, timeout=timeout, transport=transport)
        )
        yield FastunerClient(http)
