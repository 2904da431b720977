"""The built-in notification channels (plugins/oncall_channels) against real servers on loopback.

Webhooks go to an aiohttp receiver, email to an aiosmtpd server. Channels are
taken from ``Plugins().load()``, so the entry-point registration is tested too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from pydantic import ValidationError

from oncall_server.hookspecs import Channel, DeliveryError, Destination, Page
from oncall_server.plugins import Plugins
from oncall_server.runtime.settings import Settings

SECRET = "s3cret-signing-key"
LOOPBACK = ["127.0.0.0/8"]

MakeChannel = Callable[..., Channel]


def make_page(**overrides: Any) -> Page:
    fields: dict[str, Any] = {
        "notification_id": "6f1c2b9e-0d3a-4c55-9e61-2b7d8f0a1c3e",
        "kind": "page",
        "tenant_id": "tenant-1",
        "incident_id": "inc-42",
        "incident_url": "https://oncall.example.com/incidents/inc-42",
        "title": "Ransomware behaviour on FIN-LAPTOP-07",
        "severity": "critical",
        "status": "triggered",
        "service_id": "svc-1",
        "service_name": "Endpoint security",
        "description": "Mass file renames detected",
        "source": "defend",
        "source_ref": "det-9001",
        "device_name": "FIN-LAPTOP-07",
        "detection_type": "Ransomware",
        "mitre_technique": "T1486 Data Encrypted for Impact",
        "recommended_action": "Isolate the device from the network",
        "defend_url": "https://defend.theoneoncall.app/detections/det-9001",
        "tier": 1,
        "loop": 0,
        "user_id": "user-1",
        "user_name": "Ada",
        "user_email": "ada@example.com",
        "created_at": datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
    }
    fields.update(overrides)
    return Page(**fields)


def destination(type_: str, address: str, secret: str = "") -> Destination:
    return Destination(contact_method_id="cm-1", type=type_, address=address, secret=secret)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def channels() -> AsyncIterator[MakeChannel]:
    """``channels(name, **settings)``: the installed plugin's channel, closed after the test."""
    loaded: list[Plugins] = []

    def make(name: str, **settings: Any) -> Channel:
        plugins = Plugins(settings=Settings(**settings)).load()
        loaded.append(plugins)
        return plugins.channels[name]

    yield make
    for plugins in loaded:
        await plugins.close()


def test_the_builtin_channels_come_from_the_oncall_channels_plugin() -> None:
    plugins = Plugins(blocked=set()).load()
    assert "oncall_channels" in {info.name for info in plugins.loaded}
    for name in ("log", "webhook", "email"):
        assert plugins.channels[name].name == name
        assert type(plugins.channels[name]).__module__.startswith("oncall_channels.")
    blocked = Plugins(blocked={"oncall_channels"}).load()
    assert not {"log", "webhook", "email"} & set(blocked.channels)


# --- log ---------------------------------------------------------------------------------------


async def test_log_channel_writes_one_line_per_page(
    channels: MakeChannel, caplog: pytest.LogCaptureFixture
) -> None:
    log = channels("log")
    assert log.validate_address("  night shift ") == "night shift"
    for bad in ("", "   ", "two\nlines"):
        with pytest.raises(ValueError):
            log.validate_address(bad)
    with caplog.at_level(logging.INFO, logger="oncall.notifications"):
        await log.send(make_page(title="Disk full\nforged line"), destination("log", "night shift"))
    [record] = [r for r in caplog.records if r.name == "oncall.notifications"]
    line = record.getMessage()
    assert "\n" not in line
    assert "6f1c2b9e-0d3a-4c55-9e61-2b7d8f0a1c3e" in line and "inc-42" in line
    assert "'night shift'" in line and "critical" in line


# --- webhook -----------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that records what it gets and answers ``status``."""

    port: int = 0
    status: int = 200
    delay: float = 0.0
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/hook"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    received = Receiver()

    async def hook(request: web.Request) -> web.Response:
        received.requests.append((dict(request.headers), await request.read()))
        if received.delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(received.release.wait(), received.delay)
        return web.Response(status=received.status, text="ok" if received.status < 300 else "no thanks")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    received.port = runner.addresses[0][1]
    yield received
    received.release.set()
    await runner.cleanup()


async def test_webhook_posts_the_page_signed(channels: MakeChannel, receiver: Receiver) -> None:
    webhook = channels("webhook", webhook_allowed_networks=LOOPBACK)
    page = make_page()
    before = int(time.time())
    await webhook.send(page, destination("webhook", receiver.url(), SECRET))

    [(headers, body)] = receiver.requests
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == "oncall-server"
    assert headers["X-OnCall-Notification-Id"] == page.notification_id
    timestamp = headers["X-OnCall-Timestamp"]
    assert before <= int(timestamp) <= int(time.time())
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-OnCall-Signature"], f"sha256={expected}")
    forged = hmac.new(b"another secret", f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    assert headers["X-OnCall-Signature"] != f"sha256={forged}"

    sent = json.loads(body)
    assert sent == page.as_json()
    assert sent["created_at"] == "2026-03-01T12:00:00+00:00"
    assert (sent["title"], sent["severity"], sent["incident_url"]) == (
        "Ransomware behaviour on FIN-LAPTOP-07",
        "critical",
        "https://oncall.example.com/incidents/inc-42",
    )
    assert (
        sent["device_name"],
        sent["detection_type"],
        sent["mitre_technique"],
        sent["recommended_action"],
        sent["defend_url"],
    ) == (
        "FIN-LAPTOP-07",
        "Ransomware",
        "T1486 Data Encrypted for Impact",
        "Isolate the device from the network",
        "https://defend.theoneoncall.app/detections/det-9001",
    )


async def test_webhook_without_a_secret_is_unsigned(channels: MakeChannel, receiver: Receiver) -> None:
    await channels("webhook", webhook_allowed_networks=LOOPBACK).send(
        make_page(), destination("webhook", receiver.url())
    )
    [(headers, _)] = receiver.requests
    assert "X-OnCall-Signature" not in headers and "X-OnCall-Timestamp" in headers


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (503, True), (429, True), (408, True), (400, False), (404, False), (302, False)],
)
async def test_webhook_answer_decides_the_retry(
    channels: MakeChannel, receiver: Receiver, status: int, retryable: bool
) -> None:
    receiver.status = status
    webhook = channels("webhook", webhook_allowed_networks=LOOPBACK)
    with pytest.raises(DeliveryError) as failed:
        await webhook.send(make_page(), destination("webhook", receiver.url()))
    assert failed.value.retryable is retryable
    assert str(status) in str(failed.value)
    assert len(receiver.requests) == 1


async def test_webhook_to_a_receiver_not_listening_is_retried(channels: MakeChannel) -> None:
    webhook = channels("webhook", webhook_allowed_networks=LOOPBACK)
    with pytest.raises(DeliveryError) as failed:
        await webhook.send(make_page(), destination("webhook", f"http://127.0.0.1:{free_port()}/hook"))
    assert failed.value.retryable is True


async def test_webhook_to_a_slow_receiver_times_out_and_is_retried(
    channels: MakeChannel, receiver: Receiver
) -> None:
    receiver.delay = 10.0
    webhook = channels("webhook", webhook_allowed_networks=LOOPBACK, webhook_timeout_seconds=0.3)
    started = time.monotonic()
    with pytest.raises(DeliveryError) as failed:
        await webhook.send(make_page(), destination("webhook", receiver.url()))
    assert failed.value.retryable is True
    assert time.monotonic() - started < 3
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_webhook_to_loopback_needs_the_operator_s_permission(
    channels: MakeChannel, receiver: Receiver, host: str
) -> None:
    url = receiver.url(host)
    with pytest.raises(DeliveryError) as refused:
        await channels("webhook").send(make_page(), destination("webhook", url))
    assert refused.value.retryable is False
    assert host in str(refused.value) and "ONCALL_WEBHOOK_ALLOWED_NETWORKS" in str(refused.value)
    assert receiver.requests == []

    await channels("webhook", webhook_allowed_networks=LOOPBACK).send(
        make_page(), destination("webhook", url)
    )
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://10.0.0.1/hook", "10.0.0.1"),
        ("http://[::1]:8080/hook", "::1"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://[::ffff:127.0.0.1]/hook", "::ffff:7f00:1"),
        ("http://[fd00::1]/hook", "fd00::1"),
        ("http://0.0.0.0/hook", "0.0.0.0"),
        ("http://224.0.0.1/hook", "224.0.0.1"),
        ("http://100.100.100.200/hook", "100.100.100.200"),
    ],
)
async def test_webhook_refuses_internal_addresses(channels: MakeChannel, url: str, shown: str) -> None:
    # A short timeout: if the guard let one through, the failure would be a (retryable) timeout.
    webhook = channels("webhook", webhook_timeout_seconds=1)
    with pytest.raises(ValueError, match="internal address"):
        webhook.validate_address(url)
    with pytest.raises(DeliveryError) as refused:
        await webhook.send(make_page(), destination("webhook", url))
    assert refused.value.retryable is False
    assert f"{shown} is an internal address" in str(refused.value)


async def test_allowing_ipv4_loopback_does_not_allow_ipv6_loopback(channels: MakeChannel) -> None:
    webhook = channels("webhook", webhook_allowed_networks=LOOPBACK, webhook_timeout_seconds=1)
    with pytest.raises(DeliveryError) as refused:
        await webhook.send(make_page(), destination("webhook", f"http://[::1]:{free_port()}/hook"))
    assert refused.value.retryable is False and "::1 is an internal address" in str(refused.value)


def test_webhook_address_validation() -> None:
    webhook = Plugins().load().channels["webhook"]
    url = "https://hooks.example.com/oncall?team=blue"
    assert webhook.validate_address(f"  {url} ") == url
    for bad, reason in [
        ("ftp://hooks.example.com/x", "http"),
        ("hooks.example.com/x", "http"),
        ("https://", "host"),
        ("https://user:pw@hooks.example.com/x", "credentials"),
        ("https://token@hooks.example.com/x", "credentials"),
        ("https://hooks.example.com/a b", "spaces"),
        ("", "http"),
    ]:
        with pytest.raises(ValueError, match=reason):
            webhook.validate_address(bad)


def test_allowed_networks_come_from_a_comma_separated_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONCALL_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8, 10.1.2.3,fd00::/8")
    assert Settings().webhook_allowed_networks == ["127.0.0.0/8", "10.1.2.3/32", "fd00::/8"]
    monkeypatch.setenv("ONCALL_WEBHOOK_ALLOWED_NETWORKS", "")
    assert Settings().webhook_allowed_networks == []
    monkeypatch.setenv("ONCALL_WEBHOOK_ALLOWED_NETWORKS", "10.0.0.0/8,intranet")
    with pytest.raises(ValidationError, match="intranet"):
        Settings()


# --- email -------------------------------------------------------------------------------------


@dataclass
class Mailbox:
    """aiosmtpd handler: keeps accepted messages; ``rcpt_reply``/``data_reply`` force an answer."""

    messages: list[Envelope] = field(default_factory=list)
    rcpt_reply: str = ""
    data_reply: str = ""

    async def handle_RCPT(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        self.messages.append(envelope)
        return "250 OK"

    def parsed(self, index: int = -1) -> EmailMessage:
        content = self.messages[index].original_content
        assert isinstance(content, bytes)
        return message_from_bytes(content, policy=default_policy)


@dataclass
class SMTPRelay:
    mailbox: Mailbox
    port: int

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {"smtp_host": "127.0.0.1", "smtp_port": self.port, **overrides}


def _authenticate(
    server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"pager", b"pw")
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends the 535 itself


@pytest.fixture
def smtp_relay() -> Iterator[SMTPRelay]:
    mailbox = Mailbox()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=_authenticate,
        auth_require_tls=False,
    )
    controller.start()
    yield SMTPRelay(mailbox, controller.port)
    controller.stop()


async def test_email_page_reads_like_the_spec(channels: MakeChannel, smtp_relay: SMTPRelay) -> None:
    email = channels("email", **smtp_relay.settings(smtp_from="On-Call <pager@oncall.example.com>"))
    recipient = email.validate_address("Ada.Lovelace@Example.COM")
    assert recipient == "Ada.Lovelace@example.com"
    await email.send(make_page(), destination("email", recipient))

    [envelope] = smtp_relay.mailbox.messages
    assert envelope.mail_from == "pager@oncall.example.com"
    assert envelope.rcpt_tos == ["Ada.Lovelace@example.com"]
    message = smtp_relay.mailbox.parsed()
    assert message["Subject"] == "[CRITICAL] Ransomware behaviour on FIN-LAPTOP-07"
    assert message["To"] == "Ada.Lovelace@example.com"
    assert message["From"] == "On-Call <pager@oncall.example.com>"
    assert message["Message-ID"] == "<6f1c2b9e-0d3a-4c55-9e61-2b7d8f0a1c3e@oncall.example.com>"
    text = message.get_content()
    for line in [
        "Ransomware behaviour on FIN-LAPTOP-07",
        "Severity: CRITICAL",
        "Service: Endpoint security",
        "Status: triggered",
        "Tier: 1",
        "Description: Mass file renames detected",
        "Device name: FIN-LAPTOP-07",
        "Detection type: Ransomware",
        "MITRE technique: T1486 Data Encrypted for Impact",
        "Recommended action: Isolate the device from the network",
        "Incident: https://oncall.example.com/incidents/inc-42",
        "Defend detection: https://defend.theoneoncall.app/detections/det-9001",
    ]:
        assert line in text.splitlines(), f"{line!r} missing from:\n{text}"


async def test_email_for_a_non_defend_incident_has_no_defend_lines(
    channels: MakeChannel, smtp_relay: SMTPRelay
) -> None:
    page = make_page(
        severity="high",
        title="API-Latenz über 2 s",
        source="webhook",
        device_name="",
        detection_type="",
        mitre_technique="",
        recommended_action="",
        defend_url="",
    )
    await channels("email", **smtp_relay.settings()).send(page, destination("email", "ada@example.com"))
    message = smtp_relay.mailbox.parsed()
    assert message["Subject"] == "[HIGH] API-Latenz über 2 s"
    text = message.get_content()
    assert text.splitlines()[0] == "API-Latenz über 2 s"
    assert "Incident: https://oncall.example.com/incidents/inc-42" in text
    for absent in ("Device name", "Detection type", "MITRE", "Recommended action", "Defend detection"):
        assert absent not in text


async def test_email_title_cannot_inject_headers(channels: MakeChannel, smtp_relay: SMTPRelay) -> None:
    page = make_page(title="Disk full\r\nBcc: eve@example.net")
    await channels("email", **smtp_relay.settings()).send(page, destination("email", "ada@example.com"))
    [envelope] = smtp_relay.mailbox.messages
    assert envelope.rcpt_tos == ["ada@example.com"]
    message = smtp_relay.mailbox.parsed()
    assert message["Bcc"] is None
    assert message["Subject"] == "[CRITICAL] Disk full Bcc: eve@example.net"


async def test_email_logs_in_when_a_user_is_set(channels: MakeChannel, smtp_relay: SMTPRelay) -> None:
    good = channels("email", **smtp_relay.settings(smtp_username="pager", smtp_password="pw"))
    await good.send(make_page(), destination("email", "ada@example.com"))
    assert len(smtp_relay.mailbox.messages) == 1
    bad = channels("email", **smtp_relay.settings(smtp_username="pager", smtp_password="wrong"))
    with pytest.raises(DeliveryError) as refused:
        await bad.send(make_page(), destination("email", "ada@example.com"))
    assert refused.value.retryable is False and "535" in str(refused.value)


@pytest.mark.parametrize(
    ("rcpt_reply", "data_reply", "retryable"),
    [
        ("", "451 4.3.0 Try again later", True),
        ("", "554 5.7.1 Message rejected", False),
        ("450 4.2.1 Mailbox busy", "", True),
        ("550 5.1.1 No such user", "", False),
    ],
)
async def test_email_smtp_replies_decide_the_retry(
    channels: MakeChannel, smtp_relay: SMTPRelay, rcpt_reply: str, data_reply: str, retryable: bool
) -> None:
    smtp_relay.mailbox.rcpt_reply, smtp_relay.mailbox.data_reply = rcpt_reply, data_reply
    with pytest.raises(DeliveryError) as failed:
        await channels("email", **smtp_relay.settings()).send(
            make_page(), destination("email", "ada@example.com")
        )
    assert failed.value.retryable is retryable
    assert (rcpt_reply or data_reply).split()[0] in str(failed.value)


async def test_email_to_a_relay_not_listening_is_retried(channels: MakeChannel) -> None:
    email = channels("email", smtp_host="127.0.0.1", smtp_port=free_port(), smtp_timeout_seconds=2)
    with pytest.raises(DeliveryError) as failed:
        await email.send(make_page(), destination("email", "ada@example.com"))
    assert failed.value.retryable is True


async def test_email_starttls_against_a_relay_without_it_is_not_retried(
    channels: MakeChannel, smtp_relay: SMTPRelay
) -> None:
    email = channels("email", **smtp_relay.settings(smtp_starttls=True))
    with pytest.raises(DeliveryError) as failed:
        await email.send(make_page(), destination("email", "ada@example.com"))
    assert failed.value.retryable is False and "STARTTLS" in str(failed.value)
    assert smtp_relay.mailbox.messages == []


async def test_email_without_smtp_is_refused_for_good(channels: MakeChannel) -> None:
    with pytest.raises(DeliveryError) as refused:
        await channels("email", smtp_host="").send(make_page(), destination("email", "ada@example.com"))
    assert refused.value.retryable is False and "not configured" in str(refused.value)


def test_email_address_validation() -> None:
    email = Plugins().load().channels["email"]
    assert email.validate_address(" ops+pager@Mail.Example.ORG ") == "ops+pager@mail.example.org"
    for bad in [
        "",
        "ada",
        "ada@@example.com",
        "ada@exa@mple.com",
        "ada lovelace@example.com",
        "ada@example.com\r\nBcc: eve@example.net",
        "<ada@example.com>",
        "Ada <ada@example.com>",
        "ada@localhost",
        "ada@-example-.com",
        ".ada@example.com",
    ]:
        with pytest.raises(ValueError):
            email.validate_address(bad)
