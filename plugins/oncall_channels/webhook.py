"""The ``webhook`` channel: POST the page as signed JSON to an http(s) URL.

Tenants choose these URLs, so the server must not become their way into the
private network (SSRF): a destination whose address is private, loopback,
link-local, multicast, reserved or unspecified is refused unless an operator
allowed its network (``ONCALL_WEBHOOK_ALLOWED_NETWORKS``). Names are resolved
by :class:`GuardedResolver`, and aiohttp connects to exactly the addresses it
checked, so a name cannot be re-pointed between check and connect (DNS
rebinding). Redirects are not followed: the target of one is not checked.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import socket
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from oncall_server import json_codec
from oncall_server.hookspecs import DeliveryError, Destination, Page

if TYPE_CHECKING:
    from oncall_server.config import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

USER_AGENT = "oncall-server"
ALLOW_SETTING = "ONCALL_WEBHOOK_ALLOWED_NETWORKS"
_RETRYABLE_STATUS = frozenset({408, 429})
_NUMERIC_FLAGS = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


class AddressRefused(Exception):
    """A destination resolves only to addresses the SSRF guard forbids.

    Not an ``OSError``, so aiohttp lets it through unwrapped and it is never
    mistaken for a (retryable) connection failure.
    """


def is_internal(ip: IPAddress) -> bool:
    """Whether ``ip`` is not a public unicast address (``is_global`` alone lets multicast through)."""
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def is_allowed(ip: IPAddress, allowed_networks: Sequence[IPNetwork]) -> bool:
    """Whether a webhook may connect to ``ip``; ``::ffff:a.b.c.d`` is judged as ``a.b.c.d`` too."""
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    if any(candidate in network for candidate in candidates for network in allowed_networks):
        return True
    return not any(is_internal(candidate) for candidate in candidates)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``X-OnCall-Signature``: HMAC-SHA256 over ``"<timestamp>." + body``; the timestamp stops replays."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def parse_url(address: str) -> URL:
    """The webhook URL in ``address``; ``ValueError`` says what is wrong with it."""
    text = address.strip()
    if not text:
        raise ValueError("a webhook address must be an http:// or https:// URL")
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise ValueError("a webhook URL must not contain spaces or control characters")
    try:
        url = URL(text)
        url.port  # noqa: B018 - yarl checks the port lazily
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise ValueError("a webhook URL must start with http:// or https://")
    if not url.raw_host:
        raise ValueError("a webhook URL needs a host")
    if url.raw_user is not None or url.raw_password is not None:
        raise ValueError("a webhook URL must not carry credentials (user:password@); the secret signs it")
    return url


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class GuardedResolver(AbstractResolver):
    """The system resolver, minus the addresses the SSRF guard forbids.

    aiohttp skips the resolver for IP-literal hosts: :meth:`WebhookChannel.send`
    checks those itself.
    """

    def __init__(self, allowed_networks: Sequence[IPNetwork]) -> None:
        self._allowed = tuple(allowed_networks)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, family=family
        )
        results: list[ResolveResult] = []
        refused: set[str] = set()
        for info_family, _, proto, _, sockaddr in infos:
            address = str(sockaddr[0])
            if not is_allowed(ipaddress.ip_address(address), self._allowed):
                refused.add(address)
                continue
            results.append(
                ResolveResult(
                    hostname=host,
                    host=address,
                    port=int(sockaddr[1]),
                    family=info_family,
                    proto=proto,
                    flags=_NUMERIC_FLAGS,
                )
            )
        if not results:
            raise AddressRefused(
                f"{host} resolves only to internal addresses ({', '.join(sorted(refused))}); "
                f"allow them with {ALLOW_SETTING}"
            )
        return results

    async def close(self) -> None:
        return None


class WebhookChannel:
    name = "webhook"

    def __init__(self, *, timeout_seconds: float = 10.0, allowed_networks: Iterable[str] = ()) -> None:
        self._timeout_seconds = timeout_seconds
        self._allowed: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(network, strict=False) for network in allowed_networks
        )
        self._session: aiohttp.ClientSession | None = None
        # Judged once per address: the address and the allowed networks are fixed (a name is
        # checked again at each connect by GuardedResolver).
        self._judged = functools.lru_cache(maxsize=4096)(self._judge)

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookChannel:
        return cls(
            timeout_seconds=settings.webhook_timeout_seconds,
            allowed_networks=settings.webhook_allowed_networks,
        )

    def validate_address(self, address: str) -> str:
        url = parse_url(address)
        # Names are checked at send time (DNS changes); a literal internal IP can be refused now.
        ip = self._refused_literal(url)
        if ip is not None:
            raise ValueError(
                f"{ip} is an internal address; webhooks may reach it only if {ALLOW_SETTING} allows it"
            )
        return str(url)

    def _refused_literal(self, url: URL) -> IPAddress | None:
        """The host if it is an IP literal the SSRF guard forbids (aiohttp resolves no literal)."""
        ip = _ip_literal(url.host or "")
        return ip if ip is not None and not is_allowed(ip, self._allowed) else None

    def _checked_url(self, address: str) -> URL:
        """The URL to POST to, or the DeliveryError that refuses it."""
        verdict = self._judged(address)
        if isinstance(verdict, DeliveryError):
            raise DeliveryError(str(verdict), retryable=verdict.retryable)
        return verdict

    def _judge(self, address: str) -> URL | DeliveryError:
        try:
            url = parse_url(address)
        except ValueError as exc:
            return DeliveryError(f"webhook address {address!r}: {exc}", retryable=False)
        ip = self._refused_literal(url)
        if ip is not None:
            return DeliveryError(
                f"refused {url}: {ip} is an internal address; allow it with {ALLOW_SETTING}", retryable=False
            )
        return url

    async def send(self, page: Page, destination: Destination) -> None:
        url = self._checked_url(destination.address)
        body = json_codec.dumps_bytes(page.as_json())
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-OnCall-Notification-Id": page.notification_id,
            "X-OnCall-Timestamp": timestamp,
        }
        if destination.secret:
            headers["X-OnCall-Signature"] = signature(destination.secret, timestamp, body)
        try:
            async with self._client().post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                answer = (await response.content.read(200)).decode("utf-8", "replace").strip()
        except AddressRefused as exc:
            raise DeliveryError(f"refused {url}: {exc}", retryable=False) from None
        except TimeoutError:
            raise DeliveryError(f"{url} did not answer within {self._timeout_seconds:g}s") from None
        except aiohttp.InvalidURL as exc:
            raise DeliveryError(f"webhook address {url}: {exc}", retryable=False) from None
        except aiohttp.ClientError as exc:
            # Refused, reset, DNS failure: the receiver may be back by the next attempt.
            raise DeliveryError(f"{url}: {exc or type(exc).__name__}") from None
        if 200 <= status < 300:
            return
        if 300 <= status < 400:
            raise DeliveryError(f"{url} answered {status}; redirects are not followed", retryable=False)
        retryable = status in _RETRYABLE_STATUS or status >= 500
        raise DeliveryError(f"{url} answered {status}: {answer!r}", retryable=retryable)

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use: it belongs to the running loop, which does not exist at plugin load.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=GuardedResolver(self._allowed)),
                timeout=aiohttp.ClientTimeout(total=self._timeout_seconds),
                trust_env=False,  # an environment proxy would connect to unchecked addresses
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
