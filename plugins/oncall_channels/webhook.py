"""The ``webhook`` channel: POST the page as signed JSON to an http(s) URL.

Tenants choose these URLs, so the server must not become their way into the
private network (SSRF): a destination whose address is not globally routable
(private, loopback, link-local, site-local, multicast, reserved, unspecified,
or an IPv6 form that carries such an IPv4 address: IPv4-mapped, 6to4, Teredo,
NAT64) is refused unless an operator allowed its network
(``ONCALL_WEBHOOK_ALLOWED_NETWORKS``). Names are resolved by
:class:`GuardedResolver`, and aiohttp connects to exactly the addresses it
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
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from oncall_server import json_codec
from oncall_server.hookspecs import AT_LEAST_ONCE, DeliveryError, Destination, Page

if TYPE_CHECKING:
    from oncall_server.runtime.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``loop.getaddrinfo``'s shape: what :class:`GuardedResolver` asks for a name's addresses.
Lookup = Callable[..., Awaitable[list[tuple[Any, Any, Any, Any, Any]]]]

USER_AGENT = "oncall-server"
ALLOW_SETTING = "ONCALL_WEBHOOK_ALLOWED_NETWORKS"
_RETRYABLE_STATUS = frozenset({408, 429})
_NUMERIC_FLAGS = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


class AddressRefused(Exception):
    """A destination resolves only to addresses the SSRF guard forbids.

    Not an ``OSError``, so aiohttp lets it through unwrapped and it is never
    mistaken for a (retryable) connection failure.
    """


#: RFC 6052's well-known NAT64 prefix: globally routable, so judged by the IPv4 address it carries
#: (an IPv6-only host with DNS64 reaches every IPv4 receiver through it).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: RFC 8215's local-use NAT64 prefix: never global (``is_global`` agrees on recent Pythons only).
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
#: Deprecated IPv4-compatible addresses (``::a.b.c.d``, RFC 4291 2.5.5.1), minus ``::`` and ``::1``.
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: IPv4-mapped and -compatible, 6to4 (2002::/16),
    Teredo (2001::/32: server and client) and NAT64 (64:ff9b::/96). Empty for anything else."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    carried: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        carried.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        carried.append(ip.sixtofour)
    if ip.teredo is not None:
        carried.extend(ip.teredo)
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        carried.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return carried


def is_internal(ip: IPAddress) -> bool:
    """Whether ``ip`` is not a public unicast address: not ``is_global`` (which alone lets multicast
    through), or an IPv6 address carrying an IPv4 address that is internal (6to4, Teredo, NAT64,
    IPv4-mapped), or site-local (fec0::/10, deprecated, still routed inside some networks)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if any(is_internal(carried) for carried in embedded_ipv4(ip)):
            return True
        if ip in _NAT64:
            return False  # Python calls all of ::/8 reserved; this prefix is global, its IPv4 decided
        if ip.is_site_local or ip in _NAT64_LOCAL:
            return True
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
    """Whether a webhook may connect to ``ip``: it is public (see :func:`is_internal`), or it is
    inside an operator's allowed network (``::ffff:a.b.c.d`` counts as ``a.b.c.d`` there)."""
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    if any(candidate in network for candidate in candidates for network in allowed_networks):
        return True
    return not is_internal(ip)


def _carrying(ip: IPAddress) -> str:
    """`` carrying a.b.c.d`` for an IPv6 address that carries IPv4 addresses, else ``""``."""
    carried = embedded_ipv4(ip)
    return f" carrying {', '.join(str(v4) for v4 in carried)}" if carried else ""


def refusal(ip: IPAddress) -> str:
    """Why ``ip`` is refused, naming the IPv4 address it carries if any."""
    carrying = _carrying(ip)
    return f"{ip} is an internal address" + (f" ({carrying.lstrip()})" if carrying else "")


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
    """The address if ``host`` is an IP literal, including the shorthand IPv4 forms the system
    resolver accepts without DNS (``127.1``, ``2130706433``, ``0x7f000001``, ``0177.0.0.1``)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(ch in "0123456789abcdefxABCDEFX." for ch in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


class GuardedResolver(AbstractResolver):
    """The system resolver, minus the addresses the SSRF guard forbids.

    aiohttp skips the resolver for IP-literal hosts: :meth:`WebhookChannel.send`
    checks those itself.
    """

    def __init__(self, allowed_networks: Sequence[IPNetwork], *, lookup: Lookup | None = None) -> None:
        self._allowed = tuple(allowed_networks)
        self._lookup = lookup

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        lookup = self._lookup or asyncio.get_running_loop().getaddrinfo
        infos = await lookup(host, port, type=socket.SOCK_STREAM, family=family)
        results: list[ResolveResult] = []
        refused: set[str] = set()
        for info_family, _, proto, _, sockaddr in infos:
            address = str(sockaddr[0])
            ip = ipaddress.ip_address(address)
            if not is_allowed(ip, self._allowed):
                refused.add(f"{ip}{_carrying(ip)}")
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
    # A receiver drops a repeat by X-OnCall-Notification-Id (the body's notification_id), so a page
    # whose sender died mid-send is sent again by the replica that takes it over.
    delivery = AT_LEAST_ONCE

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
            raise ValueError(f"{refusal(ip)}; webhooks may reach it only if {ALLOW_SETTING} allows it")
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
                f"refused {url}: {refusal(ip)}; allow it with {ALLOW_SETTING}", retryable=False
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
