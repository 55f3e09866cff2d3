"""How uvicorn serves the app (``fastuner server`` and the CLI's embedded server).

uvicorn bounds the idle time *between* requests (``timeout_keep_alive``) but not the time a client
may take to send a request's line and headers: a client trickling a byte now and then (or opening
a connection and sending nothing) holds it forever, and ASGI middleware can't help since the app
is only called once the headers are complete. :class:`HeaderTimeoutH11Protocol` is uvicorn's h11
protocol with that deadline: from the connection (or the first byte of the next request on a
keep-alive connection) to the end of the headers. The body is bounded per chunk by
:class:`api.middleware.RequestLimitsMiddleware`.

The h11 protocol is always used (not httptools even when installed), so the deadline always holds.
In production, put a reverse proxy in front as well (README: "Running behind a reverse proxy").
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from api.logging import get_logger
from api.settings import Settings

log = get_logger("http")

_TIMEOUT_BODY = b"request headers not received in time; the connection is closed\n"
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\n"
    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY
)


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol; a request whose headers are not complete ``header_timeout`` seconds
    after the connection opened (or its first byte arrived) is answered 408 and closed."""

    header_timeout: ClassVar[float] = 10.0
    _header_timer: asyncio.TimerHandle | None = None
    _partial: bool = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # the request line / headers of a request
            self._partial = True
            if self._header_timer is None:  # the first byte of the next request on this connection
                self._arm_header_timer()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # headers complete (or the connection failed)
            self._cancel_header_timer()
            self._partial = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self._partial:  # a request was under way: say why it is dropped
            self.transport.write(_TIMEOUT_RESPONSE)
        log.warning("request headers timed out", extra={"client": self.client, "partial": self._partial})
        self.transport.close()


def http_protocol(header_timeout: float) -> type[HeaderTimeoutH11Protocol]:
    """The protocol class for uvicorn's ``http=`` with this header deadline."""
    return type("FastunerH11Protocol", (HeaderTimeoutH11Protocol,), {"header_timeout": header_timeout})


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` besides the app, host and port."""
    return {"http": http_protocol(settings.header_timeout_seconds)}
