"""A minimal Server-Sent Events reader (the part of the spec the API uses: event, data, id)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None = None


def iter_sse(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    """Events from decoded lines (``httpx.Response.iter_lines()``); comments (pings) are skipped and
    an event cut off by the end of the stream is dropped, as the spec says."""
    event, data, last_id = "message", list[str](), None
    for line in lines:
        if not line:
            if data:
                yield ServerSentEvent(event, "\n".join(data), last_id)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            last_id = value
