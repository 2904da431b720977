"""The gateway's connections: what aiohttp does not bound, bounded before a request reaches it.

Connections come through a :class:`ConnectionGuard` (see :func:`listen`): a request's headers must
arrive within ``ONCALL_HTTP_HEADER_TIMEOUT_SECONDS`` of the connection opening or of the request's
first byte, and one client address holds at most ``ONCALL_HTTP_MAX_CONNECTIONS_PER_CLIENT``
connections. aiohttp closes idle keep-alive connections after ``ONCALL_HTTP_KEEPALIVE_SECONDS``,
and its log of a request it cannot parse keeps nothing of the request.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import Counter

from oncall_server.runtime.settings import Settings, split_host_port

CONNECTIONS_CLOSED = Counter(
    "oncall_http_connections_closed_total",
    "HTTP connections the gateway closed or refused to protect itself, by reason "
    "(per_client_limit, header_timeout, body_timeout, body_too_large).",
    ["reason"],
)

_TOO_MANY_BODY = (
    b'{"status": "error", "error": "Unavailable", "message": "too many connections from this address"}'
)
_TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
    % (len(_TOO_MANY_BODY), _TOO_MANY_BODY)
)


class ConnectionGuard(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: the header timeout and the per-client count.

    aiohttp bounds idle keep-alive connections (``keepalive_timeout``) but not the time a client
    takes to send a request's headers, so a client trickling a header byte at a time (slowloris)
    held a connection for as long as it liked. Here a request's headers must be complete within
    ``header_timeout`` of the connection opening, or of the first byte after the previous request
    was answered; the middleware says when a request's headers have arrived
    (:meth:`request_started`) and when it was answered (:meth:`request_finished`). The body has its
    own bound (:func:`read_body`).
    """

    def __init__(self, guards: Connections, inner: asyncio.Protocol) -> None:
        self._guards = guards
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._admitted = False
        self._timer: asyncio.TimerHandle | None = None
        self._idle = False  # answered its last request; the next byte starts a new one

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is one without the subclass
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple | list) and peer else ""
        if not self._guards.admit(self._peer):
            CONNECTIONS_CLOSED.labels("per_client_limit").inc()
            transport.write(_TOO_MANY_CONNECTIONS)
            transport.close()
            return
        self._admitted = True
        self._guards.handlers[self._inner] = self
        self._inner.connection_made(transport)
        self._await_headers()

    def _await_headers(self) -> None:
        self._idle = False
        if self._timer is None and self._guards.header_timeout > 0:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._guards.header_timeout, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            CONNECTIONS_CLOSED.labels("header_timeout").inc()
            self._transport.close()

    def request_started(self) -> None:
        """The request's headers are in (the handler is running): the header clock stops."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._idle = False

    def request_finished(self) -> None:
        self._idle = True

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self._idle:
            self._await_headers()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._admitted:
            return
        self._admitted = False
        self._guards.release(self._peer)
        self._guards.handlers.pop(self._inner, None)
        self._inner.connection_lost(exc)


class Connections:
    """The gateway's open connections: counts per client address, guards by aiohttp protocol."""

    def __init__(self, settings: Settings) -> None:
        self.header_timeout = settings.http_header_timeout_seconds
        self.per_client = settings.http_max_connections_per_client
        self.by_address: dict[str, int] = {}
        self.handlers: dict[object, ConnectionGuard] = {}

    def admit(self, address: str) -> bool:
        count = self.by_address.get(address, 0)
        if self.per_client and count >= self.per_client:
            return False
        self.by_address[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self.by_address.get(address, 0) - 1
        if count > 0:
            self.by_address[address] = count
        else:
            self.by_address.pop(address, None)

    def of(self, request: web.BaseRequest) -> ConnectionGuard | None:
        """The guard of the connection a request came on (None if it did not come through one)."""
        return self.handlers.get(request.protocol)


CONNECTIONS_KEY = web.AppKey("oncall_connections", Connections)


class _MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse with the parser's message, which quotes the
    offending bytes: a request line with ``?key=...`` or a credential header with one stray
    control character would reach the log in clear. Such records keep the client address and
    the kind of error, nothing of the request."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "-"
            record.msg = "malformed HTTP request from %s: %s (answered %s)"
            record.args = (remote, type(error).__name__, error.code)
            record.exc_info = None
            record.exc_text = None
            if record.levelno > logging.INFO:
                record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_PROTOCOL_LOG = logging.getLogger("oncall.gateway.http")
_PROTOCOL_LOG.addFilter(_MalformedRequestFilter())


def runner_options(settings: Settings) -> dict[str, Any]:
    """aiohttp's per-connection settings for the gateway's ``AppRunner``."""
    return {"keepalive_timeout": settings.http_keepalive_seconds, "logger": _PROTOCOL_LOG}


async def listen(
    runner: web.AppRunner, settings: Settings, ssl_context: ssl.SSLContext | None = None
) -> asyncio.Server:
    """Accept connections for the runner's gateway on ``ONCALL_HTTP_LISTEN``, each behind a
    :class:`ConnectionGuard`. Close the returned server before ``runner.cleanup()``.

    With ``ssl_context`` (TLS, :mod:`oncall_server.runtime.tls`) the guard sees a connection once
    its handshake is done; the handshake itself is bounded by the header timeout."""
    server = runner.server
    assert server is not None, "call runner.setup() first"
    guards = runner.app[CONNECTIONS_KEY]
    host, port = split_host_port(settings.http_listen)
    return await asyncio.get_running_loop().create_server(
        lambda: ConnectionGuard(guards, server()),
        host,
        port,
        backlog=1024,
        reuse_port=settings.workers > 1,
        ssl=ssl_context,
        ssl_handshake_timeout=(settings.http_header_timeout_seconds or None) if ssl_context else None,
    )
