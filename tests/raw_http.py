"""Raw HTTP/1.1 over loopback sockets, for what a well-behaved client library refuses to send
(non-ASCII header bytes, a Content-Length it does not mean) and for timing connections."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def host_port(http_url: str) -> tuple[str, int]:
    parts = urlsplit(http_url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def request_bytes(
    method: str, target: str, *, headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: oncall.test"]
    given = {name.lower() for name, _ in headers or []}
    for name, value in headers or []:
        lines.append(name + b": " + value)
    if b"content-length" not in given:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    if b"content-type" not in given and body:
        lines.append(b"Content-Type: application/json")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return RawResponse(int(status_line.split()[1]), headers, body)


async def exchange(http_url: str, raw: bytes, *, timeout: float = 10.0) -> RawResponse:
    """Send ``raw`` on a fresh connection and read one response."""
    host, port = host_port(http_url)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(read_response(reader), timeout)
    finally:
        writer.close()


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True if the server closes (EOF or reset) within ``timeout`` seconds; the bytes it sent are ignored."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True
    return True
