"""The webhook channel's SSRF guard: which addresses a tenant's webhook may reach.

Refused: everything that is not globally routable, including IPv6 forms that carry an internal
IPv4 address (6to4, Teredo, NAT64, IPv4-mapped and -compatible) and deprecated site-local
addresses, when the contact method is created (literal addresses) and at connect time (literals
and every address a name resolves to). Operators can still allow networks (the tests' loopback).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis

from oncall_server.api.v1 import user_pb2, user_service_pb2, user_service_pb2_grpc
from oncall_server.hookspecs import DeliveryError, Destination, Page
from oncall_server.testing import RunningServer, bootstrap, running_server, server_settings
from plugins.oncall_channels.webhook import (
    AddressRefused,
    GuardedResolver,
    WebhookChannel,
    embedded_ipv4,
    is_allowed,
)
from tests.helpers import WebhookReceiver

# (address, what it is) — every one must be refused with no allowed networks.
INTERNAL = [
    ("2002:a9fe:a9fe::1", "6to4 of 169.254.169.254 (cloud metadata)"),
    ("2002:7f00:1::1", "6to4 of 127.0.0.1"),
    ("2002:a00:1::", "6to4 of 10.0.0.1"),
    ("2002:c0a8:101::1", "6to4 of 192.168.1.1"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("2001::a9fe:a9fe", "Teredo, client 86.1.86.1, server 0.0.0.0"),
    ("fec0::1", "site-local (deprecated)"),
    ("fec0:0:0:ffff::1", "site-local DNS of old resolvers"),
    ("feff::1", "site-local, top of fec0::/10"),
    ("64:ff9b::a9fe:a9fe", "NAT64 of 169.254.169.254"),
    ("64:ff9b::7f00:1", "NAT64 of 127.0.0.1"),
    ("64:ff9b::a00:1", "NAT64 of 10.0.0.1"),
    ("64:ff9b:1::a00:1", "local-use NAT64 prefix"),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:169.254.169.254", "IPv4-mapped metadata"),
    ("::ffff:10.0.0.1", "IPv4-mapped private"),
    ("::127.0.0.1", "IPv4-compatible loopback"),
    ("::ffff:0:7f00:1", "IPv4-translated loopback"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fd00::1", "unique local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("100::1", "discard-only"),
    ("127.0.0.1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.0.1", "private"),
    ("169.254.169.254", "link-local metadata"),
    ("100.64.0.1", "shared address space"),
    ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("192.0.2.1", "documentation"),
    ("198.18.0.1", "benchmarking"),
]
# Globally routable: the guard must not get in their way.
PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "2001:4860:4860::8888",
    "2606:4700:4700::1111",
    "2002:808:808::1",  # 6to4 of a public address
    "64:ff9b::808:808",  # NAT64 (DNS64) of a public address: how IPv6-only hosts reach IPv4
]
LOOPBACK = ["127.0.0.0/8"]


def url_of(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return f"http://[{ip}]/hook" if ip.version == 6 else f"http://{ip}/hook"


def page() -> Page:
    from datetime import UTC, datetime

    return Page(
        notification_id="n-1",
        kind="page",
        tenant_id="t-1",
        incident_id="i-1",
        incident_url="https://oncall.example.com/incidents/i-1",
        title="Disk full",
        severity="high",
        status="triggered",
        service_id="s-1",
        service_name="Storage",
        description="",
        source="",
        source_ref="",
        device_name="",
        detection_type="",
        mitre_technique="",
        recommended_action="",
        defend_url="",
        tier=1,
        loop=0,
        user_id="u-1",
        user_name="Ada",
        user_email="ada@example.com",
        created_at=datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
    )


def to(address: str) -> Destination:
    return Destination(contact_method_id="cm-1", type="webhook", address=address, secret="")


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookChannel]:
    # A short timeout: if the guard let an address through, the failure would be a retryable timeout.
    channel = WebhookChannel(timeout_seconds=1)
    yield channel
    await channel.close()


@pytest.mark.parametrize(("address", "what"), INTERNAL, ids=[a for a, _ in INTERNAL])
def test_the_guard_refuses_addresses_that_are_not_globally_routable(address: str, what: str) -> None:
    assert not is_allowed(ipaddress.ip_address(address), []), what


@pytest.mark.parametrize("address", PUBLIC)
def test_the_guard_lets_public_addresses_through(address: str) -> None:
    assert is_allowed(ipaddress.ip_address(address), [])


def test_the_ipv4_an_ipv6_address_carries() -> None:
    def carried(address: str) -> list[str]:
        return [str(v4) for v4 in embedded_ipv4(ipaddress.ip_address(address))]

    assert carried("2002:a9fe:a9fe::1") == ["169.254.169.254"]
    assert carried("64:ff9b::7f00:1") == ["127.0.0.1"]
    assert carried("::ffff:10.0.0.1") == ["10.0.0.1"]
    assert carried("::127.0.0.1") == ["127.0.0.1"]
    assert carried("2001:0:4136:e378:8000:63bf:3fff:fdd2") == ["65.54.227.120", "192.0.2.45"]
    assert carried("2001:4860:4860::8888") == [] and carried("8.8.8.8") == [] and carried("::1") == []


@pytest.mark.parametrize(("address", "what"), INTERNAL, ids=[a for a, _ in INTERNAL])
async def test_a_literal_internal_address_is_refused_at_creation_and_at_send(
    webhook: WebhookChannel, address: str, what: str
) -> None:
    url = url_of(address)
    with pytest.raises(ValueError, match="internal address"):
        webhook.validate_address(url)
    with pytest.raises(DeliveryError) as refused:
        await webhook.send(page(), to(url))
    assert refused.value.retryable is False
    assert f"{ipaddress.ip_address(address)} is an internal address" in str(refused.value)


async def test_the_refusal_names_the_ipv4_address_inside(webhook: WebhookChannel) -> None:
    with pytest.raises(ValueError) as refused:
        webhook.validate_address("http://[2002:a9fe:a9fe::1]/")
    assert str(refused.value).startswith(
        "2002:a9fe:a9fe::1 is an internal address (carrying 169.254.169.254); "
    )


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f000001", "0177.0.0.1", "10.1", "0"])
async def test_shorthand_ipv4_hosts_are_literals_too(webhook: WebhookChannel, host: str) -> None:
    """``http://127.1/`` is 127.0.0.1 to the system resolver without any DNS: refused at creation."""
    with pytest.raises(ValueError, match="internal address"):
        webhook.validate_address(f"http://{host}/hook")
    with pytest.raises(DeliveryError) as refused:
        await webhook.send(page(), to(f"http://{host}:1/hook"))
    assert refused.value.retryable is False and "internal address" in str(refused.value)


def test_public_literals_and_names_pass_validation(webhook: WebhookChannel) -> None:
    for address in PUBLIC:
        assert webhook.validate_address(url_of(address)) == url_of(address)
    # A name is judged when it is resolved, at every send (its DNS answers can change).
    assert webhook.validate_address("https://hooks.example.com/x") == "https://hooks.example.com/x"


def fake_dns(answers: dict[str, list[str]]) -> Any:
    """A ``getaddrinfo`` answering from a table (no DNS here, and none needed)."""

    async def lookup(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for address in answers[host]:
            if ":" in address:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return out

    return lookup


@pytest.mark.parametrize(("address", "what"), INTERNAL, ids=[a for a, _ in INTERNAL])
async def test_a_name_resolving_to_an_internal_address_is_refused_at_connect_time(
    address: str, what: str
) -> None:
    resolver = GuardedResolver([], lookup=fake_dns({"hooks.example.net": [address]}))
    with pytest.raises(AddressRefused) as refused:
        await resolver.resolve("hooks.example.net", 443, socket.AF_UNSPEC)
    assert str(ipaddress.ip_address(address)) in str(refused.value), what


async def test_a_name_keeps_only_its_public_addresses() -> None:
    answers = {"mixed.example.net": ["2002:a9fe:a9fe::1", "fec0::1", "93.184.215.14", "64:ff9b::7f00:1"]}
    resolver = GuardedResolver([], lookup=fake_dns(answers))
    results = await resolver.resolve("mixed.example.net", 443, socket.AF_UNSPEC)
    assert [r["host"] for r in results] == ["93.184.215.14"]


async def test_a_name_resolving_to_a_6to4_address_is_refused_by_send() -> None:
    """The whole path: send() → aiohttp → GuardedResolver → refusal, with no connection made."""
    channel = WebhookChannel(timeout_seconds=1)
    channel._client()._connector._resolver = GuardedResolver(  # type: ignore[union-attr]
        [], lookup=fake_dns({"metadata.example.net": ["2002:a9fe:a9fe::1"]})
    )
    try:
        with pytest.raises(DeliveryError) as refused:
            await channel.send(page(), to("http://metadata.example.net/latest/meta-data/"))
    finally:
        await channel.close()
    assert refused.value.retryable is False
    assert "2002:a9fe:a9fe::1 carrying 169.254.169.254" in str(refused.value)


@pytest.mark.parametrize("host", ["localhost", "127.1"])
async def test_real_names_resolving_to_loopback_are_refused(host: str) -> None:
    with pytest.raises(AddressRefused):
        await GuardedResolver([]).resolve(host, 80, socket.AF_UNSPEC)


async def test_allowed_networks_still_reach_a_receiver_on_loopback(webhook_receiver: WebhookReceiver) -> None:
    allowed = WebhookChannel(timeout_seconds=5, allowed_networks=LOOPBACK)
    try:
        await allowed.send(page(), to(allowed.validate_address(webhook_receiver.url)))
        # Allowing 127.0.0.0/8 allows its IPv4-mapped form, not the IPv6 forms that route elsewhere.
        assert allowed.validate_address("http://[::ffff:127.0.0.1]/") == "http://[::ffff:7f00:1]/"
        for address in ("2002:7f00:1::1", "64:ff9b::7f00:1", "::1", "fec0::1"):
            with pytest.raises(ValueError, match="internal address"):
                allowed.validate_address(url_of(address))
    finally:
        await allowed.close()
    assert len(webhook_receiver.bodies) == 1


async def test_a_6to4_contact_method_is_refused_over_grpc(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        users = user_service_pb2_grpc.UserServiceStub(channel)
        user = (
            await users.CreateUser(
                user_service_pb2.CreateUserRequest(user=user_pb2.User(name="Ada", email="ada@example.com")),
                metadata=tenant.auth,
            )
        ).user
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await users.AddContactMethod(
                user_service_pb2.AddContactMethodRequest(
                    user_id=user.id,
                    contact_method=user_pb2.ContactMethod(
                        type="webhook", address="http://[2002:a9fe:a9fe::1]/"
                    ),
                ),
                metadata=tenant.auth,
            )
        got = await users.GetUser(user_service_pb2.GetUserRequest(user_id=user.id), metadata=tenant.auth)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "contact_method.address" in (refused.value.details() or "")
    assert "2002:a9fe:a9fe::1 is an internal address (carrying 169.254.169.254)" in (
        refused.value.details() or ""
    )
    assert list(got.user.contact_methods) == []


async def test_the_server_s_allowed_networks_keep_loopback_contact_methods_working(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis
) -> None:
    settings = server_settings(tmp_path, database_url, redis_url, webhook_allowed_networks=LOOPBACK)
    async with running_server(settings) as server:
        tenant = await bootstrap(server.app)
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            users = user_service_pb2_grpc.UserServiceStub(channel)
            user = (
                await users.CreateUser(
                    user_service_pb2.CreateUserRequest(user=user_pb2.User(name="Bo", email="bo@example.com")),
                    metadata=tenant.auth,
                )
            ).user
            added = await users.AddContactMethod(
                user_service_pb2.AddContactMethodRequest(
                    user_id=user.id,
                    contact_method=user_pb2.ContactMethod(type="webhook", address="http://127.0.0.1:9/hook"),
                ),
                metadata=tenant.auth,
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await users.AddContactMethod(
                    user_service_pb2.AddContactMethodRequest(
                        user_id=user.id,
                        contact_method=user_pb2.ContactMethod(
                            type="webhook", address="http://[64:ff9b::7f00:1]/"
                        ),
                    ),
                    metadata=tenant.auth,
                )
    assert added.contact_method.address == "http://127.0.0.1:9/hook"
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
