"""CPU per page of the ``webhook`` channel, against a bare aiohttp POST of a small body.

Starts ``bench/receiver.py`` as its own process on loopback (its CPU is not counted), then sends
``--pages`` pages through ``WebhookChannel.send`` (SSRF guard, signing, JSON body, one pooled
aiohttp session) at 1 and at ``--concurrency`` in flight, on uvloop as the server runs, and prints
this process's CPU µs per page. The bare POST is aiohttp's own floor: what a lighter channel
could save is the difference. Asserts nothing.

    .venv/bin/python bench/webhook_send.py --pages 3000 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import aiohttp
import uvloop
from oncall_channels.webhook import WebhookChannel
from targets import PageReceiver

from oncall_server.hookspecs import Destination, Page


def _page(number: int) -> Page:
    return Page(
        f"notification-{number}",
        "page",
        "tenant",
        "incident",
        "https://oncall.example/incidents/incident",
        "Disk full on srv-01",
        "critical",
        "triggered",
        "service",
        "Backups",
        "The volume /var is 99 % full",
        "monitoring",
        "check-42",
        "srv-01",
        "",
        "",
        "",
        "",
        0,
        0,
        "user",
        "Alice",
        "alice@example.com",
        datetime.now(UTC),
    )


async def _cpu_per_call(calls: int, concurrency: int, call: Callable[[int], Awaitable[None]]) -> float:
    """µs of this process's CPU per call, ``concurrency`` in flight, after a warm-up."""
    await asyncio.gather(*(call(n) for n in range(min(50, calls))))
    gate = asyncio.Semaphore(concurrency)

    async def gated(number: int) -> None:
        async with gate:
            await call(number)

    cpu = time.process_time()
    await asyncio.gather(*(gated(n) for n in range(calls)))
    return (time.process_time() - cpu) / calls * 1e6


async def measure(port: int, pages: int, concurrency: int) -> None:
    url = f"http://127.0.0.1:{port}/page"
    channel = WebhookChannel(allowed_networks=["127.0.0.0/8"])
    destination = Destination("contact-method", "webhook", url, "signing-secret")

    async def send(number: int) -> None:
        await channel.send(_page(number), destination)

    async with aiohttp.ClientSession() as session:

        async def bare_post(number: int) -> None:
            async with session.post(url, data=b'{"notification_id":"n%d"}' % number) as response:
                await response.read()

        for label, call in (("WebhookChannel.send", send), ("bare aiohttp POST", bare_post)):
            for in_flight in dict.fromkeys((1, concurrency)):
                cpu_us = await _cpu_per_call(pages, in_flight, call)
                print(f"{label:20} {in_flight:3} in flight: {cpu_us:6.0f} µs CPU per page")
    await channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pages", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    receiver = PageReceiver().start()
    try:
        uvloop.run(measure(receiver.port, args.pages, args.concurrency))
    finally:
        receiver.stop()


if __name__ == "__main__":
    main()
