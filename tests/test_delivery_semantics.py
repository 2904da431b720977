"""Delivery semantics per channel when a dispatcher dies mid-send (docs/notification-channels.md).

Two dispatchers share one database, as two replicas do: ``app.dispatcher`` ("A", which dies: its
task is cancelled, so it never records) and a second :class:`Dispatcher` ("B", which takes over).
Time is a :class:`FakeClock` moved by the test; the lease is the default 10 s. On SQLite and
PostgreSQL.

* at-least-once (``hook`` here, like ``webhook`` and ``log``): a send in flight at the death is
  sent again by B once the lease runs out, with the same notification id;
* at-most-once (``pager`` here, declaring nothing, like a third-party SMS channel; ``email``):
  a send that had begun is never repeated: it is recorded ``unknown``, the operator is told, and
  escalation goes on; a row claimed but not begun is sent by B;
* a live dispatcher renewing its lease keeps a slow send: B takes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from sqlalchemy import select

from oncall_server.clock import FakeClock
from oncall_server.hookspecs import (
    AT_LEAST_ONCE,
    AT_MOST_ONCE,
    DeliveryError,
    Destination,
    OutcomeUnknown,
    Page,
    delivery_of,
    hookimpl,
)
from oncall_server.paging.dispatcher import Dispatcher
from oncall_server.paging.outcomes import OutcomeRecorder
from oncall_server.plugins import Plugins
from oncall_server.runtime.app import App
from oncall_server.runtime.settings import Settings
from oncall_server.storage.models import Notification, TimelineEntry
from oncall_server.testing import (
    RunningServer,
    Tenant,
    add_policy,
    add_user,
    bootstrap,
    running_server,
    server_settings,
)
from tests.helpers import post_json
from tests.test_channels import make_page

LEASE = 10.0
MINUTE = 60


@dataclass
class HeldChannel:
    """Records every send it begins; while ``held`` a send waits for ``release``; ``error`` fails it."""

    name: str
    attempts: list[str] = field(default_factory=list)  # notification ids, as sends begin
    delivered: list[str] = field(default_factory=list)
    held: bool = False
    started: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    error: Exception | None = None

    def validate_address(self, address: str) -> str:
        return address

    async def send(self, page: Page, destination: Destination) -> None:
        self.attempts.append(page.notification_id)
        self.started.set()
        if self.held:
            await self.release.wait()
        if self.error is not None:
            raise self.error
        self.delivered.append(page.notification_id)

    async def close(self) -> None:
        return None


@dataclass
class RepeatDroppingChannel(HeldChannel):
    delivery: str = AT_LEAST_ONCE  # its receiver drops repeats by notification id


class ChannelsPlugin:
    def __init__(self, *channels: HeldChannel) -> None:
        self.channels = channels

    @hookimpl
    def oncall_register_channels(self, register, settings) -> None:  # type: ignore[no-untyped-def]
        for channel in self.channels:
            register(channel)


@dataclass
class Setup:
    server: RunningServer
    tenant: Tenant
    hook: RepeatDroppingChannel
    pager: HeldChannel
    b: Dispatcher  # the replica that takes over

    @property
    def app(self) -> App:
        return self.server.app

    @property
    def a(self) -> Dispatcher:  # the replica that dies
        return self.server.app.dispatcher


@pytest.fixture
async def setup(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis, clock: FakeClock
) -> AsyncIterator[Setup]:
    """A server without its loops (the test drives both dispatchers) and the two test channels."""
    settings = server_settings(tmp_path, database_url, redis_url, roles=("grpc", "gateway"))
    async with running_server(settings, clock=clock) as running:
        app = running.app
        hook, pager = RepeatDroppingChannel("hook"), HeldChannel("pager")
        app.plugins.register(ChannelsPlugin(hook, pager), "delivery-test")
        await app.escalator.rebuild()
        other = Dispatcher(
            app.sessions,
            clock,
            app.plugins,
            OutcomeRecorder(app.sessions, app.changes),
            public_url="http://x",
            lease_seconds=LEASE,
        )
        assert app.dispatcher.lease.total_seconds() == LEASE  # the default ONCALL_NOTIFY_LEASE_SECONDS
        yield Setup(running, await bootstrap(app), hook, pager, other)
        for channel in (hook, pager):
            channel.release.set()


async def page_one(s: Setup, channel: str, *, next_tier: str | None = None) -> str:
    """An incident whose tier 1 pages alice via ``channel``; tier 2 (after 5 min) pages bob via hook."""
    app = s.app
    alice = await add_user(app, s.tenant.tenant_id, "alice", contacts=[(channel, "alice", "")])
    tiers = [(5 * MINUTE, [("user", alice)])]
    if next_tier is not None:
        bob = await add_user(app, s.tenant.tenant_id, next_tier, contacts=[("hook", next_tier, "")])
        tiers.append((5 * MINUTE, [("user", bob)]))
    await add_policy(app, s.tenant.tenant_id, tiers, service_id=s.tenant.service_id)
    status, answer = await post_json(
        f"{s.server.http_url}/api/webhooks/ingest?key={s.tenant.integration_key}", {"title": "db down"}
    )
    assert status == 202, answer
    return str(answer["incident_id"])


async def row(app: App) -> Notification:
    async with app.sessions() as session:
        [found] = (await session.scalars(select(Notification).where(Notification.tier == 0))).all()
        return found


async def notes(app: App) -> list[TimelineEntry]:
    async with app.sessions() as session:
        return list(
            (
                await session.scalars(
                    select(TimelineEntry)
                    .where(TimelineEntry.kind == "notification")
                    .order_by(TimelineEntry.created_at, TimelineEntry.id)
                )
            ).all()
        )


async def dies_mid_send(dispatcher: Dispatcher, channel: HeldChannel) -> None:
    """``dispatcher`` claims the due row and begins its send; then its process dies."""
    channel.held = True
    task = asyncio.create_task(dispatcher.run_once())
    await asyncio.wait_for(channel.started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    channel.held = False


def unknown_count(channel: str) -> float:
    return REGISTRY.get_sample_value("oncall_pages_outcome_unknown_total", {"channel": channel}) or 0.0


def test_channels_declare_their_delivery() -> None:
    channels = Plugins(blocked=set()).load().channels
    assert delivery_of(channels["webhook"]) == AT_LEAST_ONCE
    assert delivery_of(channels["log"]) == AT_LEAST_ONCE
    assert delivery_of(channels["email"]) == AT_MOST_ONCE
    assert delivery_of(HeldChannel("sms")) == AT_MOST_ONCE  # declares nothing: the safe reading
    with pytest.raises(ValueError, match="at-least-once"):
        delivery_of(RepeatDroppingChannel("typo", delivery="at-least-once"))


async def test_at_least_once_a_send_in_flight_at_the_death_is_sent_again_after_one_lease(
    setup: Setup, clock: FakeClock
) -> None:
    s = setup
    await page_one(s, "hook")
    await dies_mid_send(s.a, s.hook)
    [notification_id] = s.hook.attempts
    assert (await row(s.app)).status == "sending"
    clock.advance(LEASE - 1)
    assert await s.b.run_once() == 0  # still leased to the dead one
    clock.advance(1.5)
    assert await s.b.run_once() == 1
    assert s.hook.attempts == [notification_id, notification_id]  # same id: the receiver drops it
    assert s.hook.delivered == [notification_id]
    stored = await row(s.app)
    assert (stored.status, stored.attempts) == ("sent", 2)
    assert [n.details["status"] for n in await notes(s.app)] == ["sent"]


async def test_at_least_once_rows_handed_over_by_the_writer_are_taken_over_too(
    setup: Setup, clock: FakeClock
) -> None:
    """Tier 1 written already claimed in the ingest transaction and handed to A, which dies."""
    s = setup
    s.a.running = True  # as in `serve`: pages due now are written claimed and handed over
    s.hook.held = True
    await page_one(s, "hook")
    await asyncio.wait_for(s.hook.started.wait(), 5)
    for task in list(s.a._handed_over):
        task.cancel()
    await asyncio.gather(*s.a._handed_over, return_exceptions=True)
    s.a.running = False
    s.hook.held = False
    clock.advance(LEASE - 1)
    assert await s.b.run_once() == 0
    clock.advance(1.5)
    assert await s.b.run_once() == 1
    assert len(s.hook.attempts) == 2 and len(set(s.hook.attempts)) == 1
    assert (await row(s.app)).status == "sent"


@pytest.mark.parametrize("channel", ["hook", "pager"])
async def test_a_slow_send_of_a_live_dispatcher_keeps_its_lease(
    setup: Setup, clock: FakeClock, channel: str
) -> None:
    s = setup
    held = s.hook if channel == "hook" else s.pager
    await page_one(s, channel)
    held.held = True
    sending = asyncio.create_task(s.a.run_once())
    await asyncio.wait_for(held.started.wait(), 5)
    for _ in range(6):  # four leases long, renewed every two thirds of one
        clock.advance(LEASE * 2 / 3)
        assert await s.a.renew_leases() == 1
        assert await s.b.run_once() == 0
    held.release.set()
    assert await sending == 1
    assert len(held.attempts) == 1
    stored = await row(s.app)
    assert (stored.status, stored.attempts) == ("sent", 1)
    assert await s.a.renew_leases() == 0  # nothing in flight any more


async def test_at_most_once_a_send_begun_at_the_death_is_recorded_unknown_not_repeated(
    setup: Setup, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    s = setup
    incident_id = await page_one(s, "pager", next_tier="bob")
    before = unknown_count("pager")
    await dies_mid_send(s.a, s.pager)
    [notification_id] = s.pager.attempts
    assert (await row(s.app)).status == "delivering"  # marked, and committed, before the send
    clock.advance(LEASE - 1)
    assert await s.b.run_once() == 0
    clock.advance(1.5)
    with caplog.at_level(logging.WARNING, "oncall_server.paging.outcomes"):
        assert await s.b.run_once() == 0  # nothing sent...
    assert s.pager.attempts == [notification_id]  # ...and not again
    stored = await row(s.app)
    assert (stored.status, stored.lease_until) == ("unknown", None)
    [note] = await notes(s.app)
    assert note.incident_id == incident_id and note.details["status"] == "unknown"
    assert note.message.startswith("Page to alice via pager may not have arrived")
    assert "pager cannot drop a repeat" in note.message
    assert unknown_count("pager") == before + 1
    assert any("outcome unknown" in r.message and notification_id in r.message for r in caplog.records)
    clock.advance(LEASE)
    assert await s.b.run_once() == 0 and s.pager.attempts == [notification_id]  # told once
    assert len(await notes(s.app)) == 1

    # Escalation goes on as after a failed page: tier 2 pages bob when its time comes.
    clock.advance(5 * MINUTE)
    await s.app.escalator.tick()
    assert await s.b.run_once() == 1
    assert len(s.hook.delivered) == 1


async def test_at_most_once_a_row_claimed_but_not_begun_is_sent_by_the_next_dispatcher(
    setup: Setup, clock: FakeClock
) -> None:
    s = setup
    await page_one(s, "pager")
    [claimed] = await s.a._claim()  # ...and A dies here, before marking or sending it
    clock.advance(LEASE + 0.5)
    assert await s.b.run_once() == 1
    assert s.pager.delivered == [claimed.id]
    stored = await row(s.app)
    assert (stored.status, stored.attempts) == ("sent", 2)


@pytest.mark.parametrize("channel", ["hook", "pager"])
async def test_a_dispatcher_whose_claim_was_taken_over_records_nothing(
    setup: Setup, clock: FakeClock, channel: str
) -> None:
    """A stalls past its lease, B takes the row over and sends it; then A wakes up.

    An at-most-once row is not sent by A at all (its mark is fenced by the claim); an
    at-least-once row may be, but A's outcome does not overwrite B's.
    """
    s = setup
    sent = s.hook if channel == "hook" else s.pager
    await page_one(s, channel)
    stalled = await s.a._claim()
    clock.advance(LEASE + 0.5)
    sent.error = DeliveryError("receiver down")
    assert await s.b.run_once() == 1  # B's attempt 2 fails: retry later
    sent.error = None
    await s.a._deliver(stalled)
    assert len(sent.attempts) == (2 if channel == "hook" else 1)  # B's, then A's unless fenced
    stored = await row(s.app)
    assert (stored.status, stored.attempts, stored.last_error) == ("pending", 2, "receiver down")


@pytest.mark.parametrize("channel", ["hook", "pager"])
async def test_a_channel_that_cannot_tell_whether_it_delivered(
    setup: Setup, clock: FakeClock, channel: str
) -> None:
    """``OutcomeUnknown``: retried when the receiver drops repeats, recorded unknown otherwise."""
    s = setup
    sending = s.hook if channel == "hook" else s.pager
    await page_one(s, channel)
    before = unknown_count(channel)
    sending.error = OutcomeUnknown("no answer after the request went out")
    assert await s.a.run_once() == 1
    sending.error = None
    clock.advance(5)
    await s.a.run_once()
    stored = await row(s.app)
    if channel == "hook":
        assert (stored.status, len(sending.delivered)) == ("sent", 1)
        assert [n.details["status"] for n in await notes(s.app)] == ["retrying", "sent"]
        assert unknown_count(channel) == before
    else:
        assert (stored.status, sending.delivered) == ("unknown", [])
        [note] = await notes(s.app)
        assert note.details["status"] == "unknown"
        assert "no answer after the request went out" in note.message
        assert unknown_count(channel) == before + 1


# --- the email channel: when is the outcome of an SMTP session unknown -------------------------


class FakeRelay:
    """A minimal SMTP relay on loopback.

    ``hold``: seconds between receiving a message and answering 250 for it. ``drop``: close the
    connection at ``"rcpt"`` (before any content), at ``"data"`` (right after the content) or at
    ``"quit"`` (after 250 for the message). ``messages``: (arrival monotonic time, content).
    """

    def __init__(self, *, hold: float = 0.0, drop: str = "") -> None:
        self.hold = hold
        self.drop = drop
        self.messages: list[tuple[float, bytes]] = []
        self.answered = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> FakeRelay:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"220 relay ESMTP\r\n")
            while line := await reader.readline():
                verb = line[:4].upper()
                if (verb, self.drop) in ((b"RCPT", "rcpt"), (b"QUIT", "quit")):
                    return
                if verb == b"DATA":
                    writer.write(b"354 end with <CRLF>.<CRLF>\r\n")
                    await writer.drain()
                    self.messages.append((time.monotonic(), await reader.readuntil(b"\r\n.\r\n")))
                    if self.drop == "data":
                        return
                    await asyncio.sleep(self.hold)
                    self.answered += 1
                    writer.write(b"250 queued\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    return
                else:  # EHLO, HELO, MAIL, RCPT, RSET, NOOP
                    writer.write(b"250 relay\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


@pytest.mark.parametrize(
    ("drop", "outcome"),
    [
        ("rcpt", "retry"),  # nothing was sent: safe to send again
        ("data", "unknown"),  # the message went out, no 250 came back
        ("quit", "sent"),  # 250 came back; a broken goodbye changes nothing
        ("", "sent"),
    ],
)
async def test_email_says_when_the_relay_may_have_the_message(drop: str, outcome: str) -> None:
    relay = await FakeRelay(drop=drop).start()
    settings = Settings(smtp_host="127.0.0.1", smtp_port=relay.port, smtp_timeout_seconds=5)
    plugins = Plugins(blocked=set(), settings=settings).load()
    email = plugins.channels["email"]
    page = make_page()
    try:
        if outcome == "sent":
            await email.send(page, Destination("cm", "email", "ada@example.com", ""))
        else:
            with pytest.raises(DeliveryError) as raised:
                await email.send(page, Destination("cm", "email", "ada@example.com", ""))
            assert isinstance(raised.value, OutcomeUnknown) == (outcome == "unknown")
            assert raised.value.retryable
    finally:
        await plugins.close()
        await relay.stop()
    assert len(relay.messages) == (0 if drop == "rcpt" else 1)


@pytest.mark.parametrize("channel", ["hook", "pager"])
async def test_a_send_that_never_answers_is_abandoned_at_the_send_timeout(
    setup: Setup, clock: FakeClock, channel: str
) -> None:
    """A receiver that hangs must not hold its page, lease renewed, forever."""
    s = setup
    held = s.hook if channel == "hook" else s.pager
    await page_one(s, channel)
    held.held = True  # never released: the receiver hangs
    s.a.send_timeout_seconds = 0.2
    assert await asyncio.wait_for(s.a.run_once(), 10) == 1
    assert held.delivered == []
    stored = await row(s.app)
    assert "ONCALL_NOTIFY_SEND_TIMEOUT_SECONDS" in stored.last_error
    if channel == "hook":  # at least once: tried again later, same notification id
        assert stored.status == "pending"
    else:  # at most once: it may have arrived, so it is recorded unknown and never sent again
        assert stored.status == "unknown"
        [note] = await notes(s.app)
        assert note.details["status"] == "unknown"
    assert await s.a.renew_leases() == 0  # nothing left in flight
