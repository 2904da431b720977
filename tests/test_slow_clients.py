"""Slow and idle clients cannot hold the gateway's connections: raw sockets over loopback.

A request's headers must arrive within ONCALL_HTTP_HEADER_TIMEOUT_SECONDS, its body within
ONCALL_HTTP_BODY_TIMEOUT_SECONDS, an idle keep-alive connection lasts
ONCALL_HTTP_KEEPALIVE_SECONDS, and one client address holds at most
ONCALL_HTTP_MAX_CONNECTIONS_PER_CLIENT connections (loopback has 127.0.0.2 for another client).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from oncall_server.testing import RunningServer, bootstrap, running_server, server_settings
from tests.helpers import start_serve, wait_for_line
from tests.raw_http import closed_within, host_port, read_response, request_bytes

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
KEEPALIVE = 1.0
PER_CLIENT = 8
SLACK = 1.5  # timer granularity, a loaded CI machine


@pytest.fixture
async def server(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis
) -> AsyncIterator[RunningServer]:
    settings = server_settings(
        tmp_path,
        database_url,
        redis_url,
        http_header_timeout_seconds=HEADER_TIMEOUT,
        http_body_timeout_seconds=BODY_TIMEOUT,
        http_keepalive_seconds=KEEPALIVE,
        http_max_connections_per_client=PER_CLIENT,
    )
    async with running_server(settings) as running:
        yield running


@contextlib.asynccontextmanager
async def connection(
    server: RunningServer, source: str = "127.0.0.1"
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, port = host_port(server.http_url)
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def trickle(writer: asyncio.StreamWriter, data: bytes, interval: float) -> None:
    """Send ``data`` a byte at a time (slowloris); stops quietly once the server has closed."""
    with contextlib.suppress(OSError):
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(interval)


async def test_a_connection_that_never_sends_is_closed_after_the_header_timeout(
    server: RunningServer,
) -> None:
    async with connection(server) as (reader, _):
        started = time.monotonic()
        assert await closed_within(reader, HEADER_TIMEOUT + SLACK)
        assert time.monotonic() - started >= HEADER_TIMEOUT * 0.8


async def test_slowloris_headers_are_cut_off_at_the_header_timeout(server: RunningServer) -> None:
    head = request_bytes("GET", "/healthz", headers=[(b"X-Padding", b"p" * 200)])
    async with connection(server) as (reader, writer):
        started = time.monotonic()
        sender = asyncio.create_task(trickle(writer, head, 0.05))  # 200+ bytes at 20/s: ~12 s if allowed
        try:
            assert await closed_within(reader, HEADER_TIMEOUT + SLACK)
            elapsed = time.monotonic() - started
            assert HEADER_TIMEOUT * 0.8 <= elapsed <= HEADER_TIMEOUT + SLACK, elapsed
        finally:
            sender.cancel()


async def test_many_idle_and_slowloris_connections_are_all_closed(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis
) -> None:
    """The reported case at test scale: 200 idle and 50 slowloris connections (they held on for 120 s)."""
    settings = server_settings(
        tmp_path, database_url, redis_url, http_header_timeout_seconds=HEADER_TIMEOUT
    )  # the default per-client limit (256) admits all 250
    async with running_server(settings) as running:
        host, port = host_port(running.http_url)
        opened = [await asyncio.open_connection(host, port) for _ in range(250)]
        started = time.monotonic()
        head = request_bytes("POST", "/api/webhooks/ingest", body=b"{}")
        senders = [asyncio.create_task(trickle(writer, head, 0.1)) for _, writer in opened[:50]]
        try:
            closed = await asyncio.gather(
                *(closed_within(reader, HEADER_TIMEOUT + 2 * SLACK) for reader, _ in opened)
            )
            assert all(closed), f"{closed.count(False)} of 250 still open"
            assert time.monotonic() - started <= HEADER_TIMEOUT + 2 * SLACK
            # and the server still answers
            async with connection(running) as (reader, writer):
                writer.write(request_bytes("GET", "/healthz"))
                assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
        finally:
            for task in senders:
                task.cancel()
            for _, writer in opened:
                writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(
    server: RunningServer,
) -> None:
    async with connection(server) as (reader, writer):
        for _ in range(2):  # the connection is reused while the client keeps it busy
            writer.write(request_bytes("GET", "/healthz"))
            answer = await asyncio.wait_for(read_response(reader), 5)
            assert answer.status == 200
            assert answer.headers.get("connection", "").lower() != "close"
        started = time.monotonic()
        assert await closed_within(reader, KEEPALIVE + SLACK)
        assert time.monotonic() - started >= KEEPALIVE * 0.8


async def test_a_keep_alive_request_sent_slowly_is_cut_off_too(server: RunningServer) -> None:
    async with connection(server) as (reader, writer):
        writer.write(request_bytes("GET", "/healthz"))
        assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
        started = time.monotonic()
        sender = asyncio.create_task(
            trickle(writer, request_bytes("GET", "/healthz", headers=[(b"X-P", b"p" * 300)]), 0.02)
        )
        try:
            assert await closed_within(reader, HEADER_TIMEOUT + SLACK)
            assert time.monotonic() - started <= HEADER_TIMEOUT + SLACK
        finally:
            sender.cancel()


async def test_a_stalled_body_gets_408_and_the_connection_closed(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    head = request_bytes(
        "POST", f"/api/webhooks/ingest?key={tenant.integration_key}", headers=[(b"Content-Length", b"100")]
    )
    async with connection(server) as (reader, writer):
        started = time.monotonic()
        writer.write(head + b'{"title": "sl')
        answer = await asyncio.wait_for(read_response(reader), BODY_TIMEOUT + SLACK)
        assert answer.status == 408
        assert answer.json()["fields"][0]["field"] == "body"
        assert BODY_TIMEOUT * 0.8 <= time.monotonic() - started <= BODY_TIMEOUT + SLACK
        assert await closed_within(reader, SLACK)


async def test_a_slow_but_steady_body_within_the_body_timeout_is_accepted(server: RunningServer) -> None:
    """The header clock stops once the headers are in: a body may take longer than it."""
    tenant = await bootstrap(server.app)
    body = b'{"title": "slow but fine", "dedup_key": "slow-1"}'
    head = request_bytes(
        "POST",
        f"/api/webhooks/ingest?key={tenant.integration_key}",
        headers=[(b"Content-Length", str(len(body)).encode())],
    )
    async with connection(server) as (reader, writer):
        writer.write(head)
        await asyncio.sleep(HEADER_TIMEOUT * 1.2)  # longer than the header timeout, within the body timeout
        writer.write(body)
        answer = await asyncio.wait_for(read_response(reader), 5)
        assert answer.status == 202, answer.body


async def test_one_address_holds_at_most_the_per_client_limit(server: RunningServer) -> None:
    async with contextlib.AsyncExitStack() as stack:
        held: list[Any] = []
        for _ in range(PER_CLIENT):
            held.append(await stack.enter_async_context(connection(server)))
        # Everything admitted so far is served (each request resets nothing: the limit counts connections).
        reader, writer = held[0]
        writer.write(request_bytes("GET", "/healthz"))
        assert (await asyncio.wait_for(read_response(reader), 5)).status == 200

        async with connection(server) as (reader, writer):  # one too many from 127.0.0.1
            refused = await asyncio.wait_for(read_response(reader), 5)
            assert refused.status == 503
            assert refused.headers.get("retry-after") == "1"
            assert await closed_within(reader, SLACK)

        async with connection(server, source="127.0.0.2") as (reader, writer):  # another client is served
            writer.write(request_bytes("GET", "/healthz"))
            assert (await asyncio.wait_for(read_response(reader), 5)).status == 200

        reader, writer = held.pop()
        writer.close()
        await asyncio.sleep(0.2)
        async with connection(server) as (reader, writer):  # a slot freed is a slot again
            writer.write(request_bytes("GET", "/healthz"))
            assert (await asyncio.wait_for(read_response(reader), 5)).status == 200


@pytest.mark.slow
async def test_the_served_process_on_uvloop_guards_its_connections_too() -> None:
    """``oncall-server serve`` runs on uvloop, whose transports are not asyncio's: the same guard."""
    data_dir = Path(tempfile.mkdtemp(prefix="oncall-slow-", dir="/tmp"))
    process = await start_serve(
        data_dir,
        ONCALL_HTTP_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
        ONCALL_HTTP_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT),
        ONCALL_HTTP_KEEPALIVE_SECONDS=str(KEEPALIVE),
        ONCALL_HTTP_MAX_CONNECTIONS_PER_CLIENT="3",
    )
    assert process.stderr is not None
    seen: list[str] = []
    try:
        port = (await wait_for_line(process.stderr, r"HTTP gateway listening on port (\d+)", seen)).group(1)
        await wait_for_line(process.stderr, "ready", seen)
        drain = asyncio.create_task(process.stderr.read())  # keep the pipe from filling
        url = f"http://127.0.0.1:{port}"
        host, port_number = host_port(url)
        async with contextlib.AsyncExitStack() as stack:
            held = []
            for _ in range(3):
                reader, writer = await asyncio.open_connection(host, port_number)
                stack.callback(writer.close)
                held.append((reader, writer))
            reader, writer = await asyncio.open_connection(host, port_number)  # the fourth
            stack.callback(writer.close)
            assert (await asyncio.wait_for(read_response(reader), 5)).status == 503
            # The three held ones: one sends nothing, one trickles its headers, one is served then idles.
            served_reader, served_writer = held[2]
            served_writer.write(request_bytes("GET", "/healthz"))
            assert (await asyncio.wait_for(read_response(served_reader), 5)).status == 200
            sender = asyncio.create_task(
                trickle(held[1][1], request_bytes("GET", "/healthz", headers=[(b"X", b"x" * 300)]), 0.05)
            )
            try:
                closed = await asyncio.gather(
                    *(closed_within(r, HEADER_TIMEOUT + 2 * SLACK) for r, _ in held)
                )
            finally:
                sender.cancel()
            assert closed == [True, True, True]
        async with contextlib.AsyncExitStack() as stack:  # slots free again: served
            reader, writer = await asyncio.open_connection(host, port_number)
            stack.callback(writer.close)
            writer.write(request_bytes("GET", "/healthz"))
            assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        drain.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
