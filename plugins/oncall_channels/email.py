"""The ``email`` channel: one plain-text message per page through an SMTP relay.

The standard library's ``smtplib`` runs in a worker thread: a page is one
short SMTP session, and the relay, not this process, queues and retries the
onward delivery, so an async SMTP client would buy nothing but a dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import smtplib
import ssl
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr
from typing import TYPE_CHECKING

from oncall_server.hookspecs import AT_MOST_ONCE, DeliveryError, Destination, OutcomeUnknown, Page

if TYPE_CHECKING:
    from oncall_server.runtime.settings import Settings

# Dot-atom local part (RFC 5322 atext) and an ASCII (punycode) domain of two or more labels.
# No spaces, quotes, angle brackets or line breaks can pass, so an address cannot inject headers.
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._-]")
#: SMTP sessions one process runs at once (smtplib blocks: one thread each).
SMTP_SESSIONS = 32
_DEFEND_FIELDS = (
    ("Device name", "device_name"),
    ("Detection type", "detection_type"),
    ("MITRE technique", "mitre_technique"),
    ("Recommended action", "recommended_action"),
)


def canonical_address(address: str) -> str:
    """``local@domain`` with the domain lowercased; ``ValueError`` if it is not a plausible address."""
    text = address.strip()
    if text.count("@") != 1:
        raise ValueError("an email address has exactly one @")
    local, domain = text.split("@")
    domain = domain.lower()
    if len(text) > 254 or len(local) > 64:
        raise ValueError("an email address is at most 254 characters, 64 before the @")
    if not _LOCAL.fullmatch(local):
        raise ValueError(f"{local!r} is not a valid mailbox name (no spaces, quotes or brackets)")
    if not _DOMAIN.fullmatch(domain):
        raise ValueError(f"{domain!r} is not a valid mail domain")
    return f"{local}@{domain}"


def subject(page: Page) -> str:
    return _one_line(f"[{page.severity.upper()}] {page.title}")[:250]


def body(page: Page) -> str:
    """What the technician reads: the incident, the Defend detection if any, and the links."""
    lines = [
        page.title,
        "",
        f"Severity: {page.severity.upper()}",
        f"Service: {page.service_name or page.service_id}",
        f"Status: {page.status}",
    ]
    if page.tier:
        lines.append(f"Tier: {page.tier}")
    if page.description:
        lines.append(f"Description: {page.description}")
    defend = [(label, getattr(page, field)) for label, field in _DEFEND_FIELDS if getattr(page, field)]
    if defend:
        lines.append("")
        lines.extend(f"{label}: {value}" for label, value in defend)
    lines += ["", f"Incident: {page.incident_url}"]
    if page.defend_url:
        lines.append(f"Defend detection: {page.defend_url}")
    return "\n".join(lines) + "\n"


def build_message(page: Page, recipient: str, sender: str) -> EmailMessage:
    message = EmailMessage(policy=SMTP)
    message["Subject"] = subject(page)
    message["From"] = sender
    message["To"] = recipient
    message["Date"] = format_datetime(datetime.now(UTC))
    # The same id on every retry lets mail clients and the relay drop a repeat.
    domain = parseaddr(sender)[1].rpartition("@")[2] or "oncall"
    notification = _UNSAFE_ID.sub("", page.notification_id)
    message["Message-ID"] = f"<{notification}@{domain}>"
    message["X-OnCall-Notification-Id"] = notification
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a pager
    message.set_content(body(page))
    return message


def _one_line(text: str) -> str:
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


class EmailChannel:
    name = "email"
    # A mailbox does not drop a repeat (the Message-ID is the same, but clients show both): a page
    # whose send began and whose outcome is unknown is not sent again (docs/notification-channels.md).
    delivery = AT_MOST_ONCE

    def __init__(
        self,
        *,
        host: str = "",
        port: int = 25,
        sender: str = "oncall@localhost",
        username: str = "",
        password: str = "",
        starttls: bool = False,
        timeout_seconds: float = 10.0,
    ) -> None:
        self._host = host
        self._port = port
        self._sender = sender
        self._envelope_sender = parseaddr(sender)[1] or sender
        self._username = username
        self._password = password
        self._starttls = starttls
        self._timeout_seconds = timeout_seconds
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> EmailChannel:
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.smtp_from,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value(),
            starttls=settings.smtp_starttls,
            timeout_seconds=settings.smtp_timeout_seconds,
        )

    def validate_address(self, address: str) -> str:
        return canonical_address(address)

    async def send(self, page: Page, destination: Destination) -> None:
        if not self._host:
            raise DeliveryError(
                "email is not configured: SMTP is not set up (ONCALL_SMTP_HOST)", retryable=False
            )
        try:
            recipient = canonical_address(destination.address)
        except ValueError as exc:
            raise DeliveryError(f"email address {destination.address!r}: {exc}", retryable=False) from None
        message = build_message(page, recipient, self._sender)
        await asyncio.get_running_loop().run_in_executor(self._sessions(), self._deliver, message, recipient)

    def _sessions(self) -> ThreadPoolExecutor:
        # Its own pool, not asyncio's default (CPUs + 4 threads): the dispatcher marks an email
        # "delivering" before calling send, so one waiting here for a thread when the replica dies
        # is recorded as unknown although it never left. Up to SMTP_SESSIONS leave at once.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(SMTP_SESSIONS, thread_name_prefix="oncall-smtp")
        return self._pool

    def _deliver(self, message: EmailMessage, recipient: str) -> None:
        relay = f"SMTP server {self._host}:{self._port}"
        smtp = _Session(timeout=self._timeout_seconds)
        try:
            try:
                code, greeting = smtp.connect(self._host, self._port)
                if code != 220:
                    raise smtplib.SMTPConnectError(code, greeting)
                if self._starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self._username:
                    smtp.login(self._username, self._password)
                smtp.send_message(message, from_addr=self._envelope_sender, to_addrs=[recipient])
            except smtplib.SMTPRecipientsRefused as exc:
                code, text = exc.recipients.get(recipient, (550, b"recipient refused"))
                raise _reply_error(f"{relay} refused {recipient}", code, text) from None
            except smtplib.SMTPNotSupportedError as exc:
                raise DeliveryError(f"{relay}: {exc}", retryable=False) from None
            except smtplib.SMTPConnectError as exc:
                raise DeliveryError(f"{relay} refused the connection: {exc}") from None
            except smtplib.SMTPResponseException as exc:
                raise _reply_error(relay, exc.smtp_code, exc.smtp_error) from None
            except (smtplib.SMTPException, OSError) as exc:
                what = f"{relay}: {exc or type(exc).__name__}"
                if smtp.content_sent:  # the message went out; whether the relay took it is unknown
                    raise OutcomeUnknown(f"{what}, after the message was sent") from None
                # Disconnects, timeouts, refused connections, TLS failures: the relay may be back next try.
                raise DeliveryError(what) from None
            with contextlib.suppress(smtplib.SMTPException, OSError):
                smtp.quit()  # the relay accepted the message: a failed goodbye changes nothing
        finally:
            smtp.close()

    async def close(self) -> None:
        # One SMTP connection per page, closed after it; the threads end once idle.
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


class _Session(smtplib.SMTP):
    """An SMTP session that knows whether the message itself went out (the relay said 354)."""

    content_sent = False

    def getreply(self) -> tuple[int, bytes]:
        code, text = super().getreply()
        if code == 354:  # "start mail input": what follows is the message
            self.content_sent = True
        return code, text


def _reply_error(what: str, code: int, text: bytes | str) -> DeliveryError:
    """4xx replies are temporary (retry), 5xx permanent."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return DeliveryError(f"{what}: {code} {text}", retryable=400 <= code < 500)
