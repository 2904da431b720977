"""The change feed: publishing only queues, and watchers still get every change, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from oncall_server.incidents.changes import Change, ChangeFeed, _channel


async def collect(feed: ChangeFeed, tenant_id: str, count: int, ready: asyncio.Event) -> list[Change]:
    seen: list[Change] = []
    stream = feed.subscribe(tenant_id)
    waiting = asyncio.ensure_future(stream.__anext__())
    while not (await feed.redis.pubsub_numsub(_channel(tenant_id)))[0][1]:  # noqa: ASYNC110
        await asyncio.sleep(0.001)  # until Redis has the SUBSCRIBE: nothing published before is seen
    ready.set()
    seen.append(await waiting)
    while len(seen) < count:
        seen.append(await stream.__anext__())
    await stream.aclose()
    return seen


@pytest.fixture
async def feed(redis: Redis) -> AsyncIterator[ChangeFeed]:
    yield ChangeFeed(redis)


async def test_watchers_get_every_change_of_their_tenant_in_order(feed: ChangeFeed) -> None:
    ready_a, ready_b = asyncio.Event(), asyncio.Event()
    watch_a = asyncio.create_task(collect(feed, "tenant-a", 5, ready_a))
    watch_b = asyncio.create_task(collect(feed, "tenant-b", 2, ready_b))
    await asyncio.wait_for(asyncio.gather(ready_a.wait(), ready_b.wait()), 5)
    a = [Change("tenant-a", "svc", f"incident-{n}", f"entry-{n}") for n in range(5)]
    b = [Change("tenant-b", "svc", f"incident-{n}", f"entry-{n}") for n in range(2)]
    feed.publish(a[:2])  # queued in one turn of the loop: one send, one message per tenant
    feed.publish([b[0], a[2]])
    await feed.flush()
    feed.publish([a[3], b[1]])  # and after a send
    feed.publish([a[4]])
    await feed.flush()
    assert await asyncio.wait_for(watch_a, 5) == a
    assert await asyncio.wait_for(watch_b, 5) == b


async def test_a_failed_send_is_logged_and_later_changes_still_go_out(
    feed: ChangeFeed, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    ready = asyncio.Event()
    watch = asyncio.create_task(collect(feed, "tenant-a", 1, ready))
    await asyncio.wait_for(ready.wait(), 5)
    publish = redis.publish

    async def refused(*args: object, **kwargs: object) -> int:
        raise ConnectionError("Redis went away")

    redis.publish = refused  # type: ignore[method-assign]
    feed.publish([Change("tenant-a", "svc", "lost", "lost")])
    await feed.flush()
    redis.publish = publish  # type: ignore[method-assign]
    assert "could not publish 1 change(s) to watchers" in caplog.text
    kept = Change("tenant-a", "svc", "incident", "entry")
    feed.publish([kept])
    await feed.flush()
    assert await asyncio.wait_for(watch, 5) == [kept]
