"""Helpers for testing On-Call and plugins against a real server.

Plugin authors can use these from their own test suites: start a real server
on loopback ports (real SQL, real Redis), bootstrap a tenant with a service,
an integration and an API token, and talk to it over HTTP and gRPC. The pytest
plugin (:mod:`oncall_server.pytest_plugin`) turns them into fixtures.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import make_url

from oncall_server.clock import Clock
from oncall_server.configuration import services, tenants
from oncall_server.hookspecs import DeliveryError, Destination, Page, hookimpl
from oncall_server.ids import uuid7
from oncall_server.runtime.app import App
from oncall_server.runtime.server import GatewayRole, GrpcRole, Server
from oncall_server.runtime.settings import Settings
from oncall_server.storage import models
from oncall_server.storage.engine import create_engine
from oncall_server.storage.models import Base


@dataclass(frozen=True)
class Tenant:
    """What :func:`bootstrap` created; the secrets are the only copies."""

    tenant_id: str
    service_id: str
    integration_id: str
    integration_key: str
    api_token: str

    @property
    def auth(self) -> list[tuple[str, str]]:
        """gRPC metadata for admin calls."""
        return [("authorization", f"Bearer {self.api_token}")]


async def bootstrap(
    app: App,
    *,
    tenant: str | None = None,
    service: str = "Default Service",
    integration_type: str = "webhook",
    alert_grouping: str = "none",
    alert_grouping_timeout_minutes: int = 0,
    routing_rules: list[dict[str, Any]] | None = None,
) -> Tenant:
    name = tenant or f"tenant-{uuid.uuid4().hex[:8]}"
    row = await tenants.create_tenant(app.sessions, app.clock, name)
    svc = await services.create_service(
        app.sessions,
        app.clock,
        row.id,
        services.ServiceFields(
            name=service,
            alert_grouping=alert_grouping,
            alert_grouping_timeout_minutes=alert_grouping_timeout_minutes,
        ),
    )
    integration, key = await app.integrations.create(
        row.id, svc.id, "Test Integration", integration_type, routing_rules
    )
    token, _ = await tenants.create_api_token(app.sessions, app.clock, row.id, "tester")
    return Tenant(row.id, svc.id, integration.id, key, token)


async def add_user(
    app: App,
    tenant_id: str,
    name: str,
    *,
    contacts: list[tuple[str, str, str]] | None = None,
    rules: list[tuple[int, int]] | None = None,
) -> str:
    """A user with contact methods ``(type, address, secret)`` (default: one ``log``) and rules
    ``(contact index, delay seconds)`` (default: none, so every contact method is paged at once).
    Straight to SQL, for tests; the UserService validates what operators send.
    """
    now = app.clock.now()
    user_id = uuid7()
    async with app.sessions.begin() as session:
        session.add(
            models.User(
                id=user_id,
                tenant_id=tenant_id,
                name=name,
                email=f"{name.lower()}@example.com",
                created_at=now,
                updated_at=now,
            )
        )
        await session.flush()
        method_ids = []
        for kind, address, secret in contacts if contacts is not None else [("log", name, "")]:
            method_ids.append(uuid7())
            session.add(
                models.ContactMethod(
                    id=method_ids[-1],
                    tenant_id=tenant_id,
                    user_id=user_id,
                    type=kind,
                    address=address,
                    secret=secret,
                    created_at=now,
                )
            )
        await session.flush()
        for index, delay in rules or []:
            session.add(
                models.NotificationRule(
                    id=uuid7(),
                    tenant_id=tenant_id,
                    user_id=user_id,
                    contact_method_id=method_ids[index],
                    delay_seconds=delay,
                    created_at=now,
                )
            )
    return user_id


async def add_policy(
    app: App,
    tenant_id: str,
    tiers: list[tuple[int, list[tuple[str, str]]]],
    *,
    repeat_count: int = 0,
    service_id: str | None = None,
    name: str | None = None,
) -> str:
    """An escalation policy of ``(delay seconds, [(target type, id)])`` tiers, optionally
    assigned to a service. Straight to SQL, for tests (the API refuses sub-minute delays).
    """
    now = app.clock.now()
    policy_id = uuid7()
    async with app.sessions.begin() as session:
        session.add(
            models.EscalationPolicy(
                id=policy_id,
                tenant_id=tenant_id,
                name=name or f"policy-{policy_id[-8:]}",
                description="",
                tiers=[
                    {"delay_seconds": delay, "targets": [{"type": t, "id": i} for t, i in targets]}
                    for delay, targets in tiers
                ],
                repeat_count=repeat_count,
                created_at=now,
                updated_at=now,
            )
        )
        if service_id is not None:
            await session.flush()
            service = await session.get(models.Service, service_id)
            assert service is not None
            service.escalation_policy_id = policy_id
    return policy_id


@dataclass
class RunningServer:
    server: Server
    grpc_target: str
    http_url: str

    @property
    def app(self) -> App:
        return self.server.app


@asynccontextmanager
async def running_server(settings: Settings, *, clock: Clock | None = None) -> AsyncIterator[RunningServer]:
    """A started server on the settings' addresses (use port 0 for free ports); ``http_url`` is
    ``https://`` when the settings give a TLS certificate."""
    server = await Server.create(settings, clock=clock)
    await server.start()
    grpc_port = next((r.port for r in server.roles if isinstance(r, GrpcRole)), 0)
    http_port = next((r.port for r in server.roles if isinstance(r, GatewayRole)), 0)
    scheme = "https" if server.tls is not None else "http"
    try:
        yield RunningServer(server, f"127.0.0.1:{grpc_port}", f"{scheme}://127.0.0.1:{http_port}")
    finally:
        await server.stop()


def server_settings(data_dir: Path, database_url: str, redis_url: str, **overrides: Any) -> Settings:
    """Settings for a server on free loopback ports."""
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        redis_url=redis_url,
        grpc_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        access_log=False,
        drain_seconds=2.0,
        **overrides,
    )


async def create_scratch_postgres(admin_url: str) -> str:
    """A fresh, empty database next to ``admin_url``; returns its URL."""
    url = make_url(admin_url).set(drivername="postgresql+asyncpg")
    name = f"oncall_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(url.render_as_string(hide_password=False))
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await engine.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


async def drop_scratch_postgres(admin_url: str, scratch_url: str) -> None:
    url = make_url(admin_url).set(drivername="postgresql+asyncpg")
    name = make_url(scratch_url).database
    engine = create_engine(url.render_as_string(hide_password=False))
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await engine.dispose()


async def empty_all_tables(database_url: str) -> None:
    """Delete every row (children first), keeping the schema: fast isolation between tests."""
    engine = create_engine(database_url, sqlite_driver=Settings().sqlite_driver)
    try:
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                names = ", ".join(t.name for t in Base.metadata.sorted_tables)
                await conn.execute(text(f"TRUNCATE {names} CASCADE"))
            else:
                for table in reversed(Base.metadata.sorted_tables):
                    await conn.execute(table.delete())
    finally:
        await engine.dispose()


@dataclass
class CaptureChannel:
    """A notification channel that records every page it is asked to send; ``failing`` makes it
    refuse them (a retryable :class:`DeliveryError`). Contact methods of type ``name`` use it."""

    name: str = "capture"
    sent: list[tuple[Page, Destination]] = field(default_factory=list)
    failing: bool = False

    def validate_address(self, address: str) -> str:
        return address

    async def send(self, page: Page, destination: Destination) -> None:
        if self.failing:
            raise DeliveryError("receiver down")
        self.sent.append((page, destination))

    async def close(self) -> None:
        return None

    def to(self, address: str) -> list[Page]:
        """The pages sent to one address, in order."""
        return [p for p, d in self.sent if d.address == address]

    @property
    def addresses(self) -> list[str]:
        return [d.address for _, d in self.sent]


class CapturePlugin:
    """Registers a :class:`CaptureChannel`: ``app.plugins.register(CapturePlugin(channel), name)``."""

    def __init__(self, channel: CaptureChannel) -> None:
        self.channel = channel

    @hookimpl
    def oncall_register_channels(self, register, settings) -> None:  # type: ignore[no-untyped-def]
        register(self.channel)


async def settle(app: App) -> None:
    """Run the escalation scheduler and the notification dispatcher once each, again and again,
    until neither has anything due at the clock's now: for a server without its ``scheduler`` and
    ``notifier`` roles, so "nothing else was sent" is a fact rather than a timeout."""
    while True:
        steps = await app.escalator.tick()
        sends = await app.dispatcher.run_once()
        if steps == 0 and sends == 0:
            return


async def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll an async predicate until it returns something truthy (for cross-process effects only)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


def adapter_samples(samples_dir: Path) -> list[Any]:
    """``pytest.param``s for every ``<adapter>/<case>.json`` under ``samples_dir``.

    Each file holds ``{"payload": <raw JSON>, "expected": [<normalized event>, ...]}``;
    feed the params to :func:`assert_adapter_contract` in a parametrized test.
    """
    import pytest

    params = []
    for path in sorted(Path(samples_dir).glob("*/*.json")):
        params.append(pytest.param(path.parent.name, path, id=f"{path.parent.name}/{path.stem}"))
    return params


def normalized(event: Any) -> dict[str, Any]:
    """A normalized event as the JSON the samples hold."""
    out: dict[str, Any] = event.fields()
    if event.record_only:
        out["record_only"] = True
    if event.drop_reason:
        out["drop_reason"] = event.drop_reason
    if event.action.name != "TRIGGER":
        out["action"] = event.action.name.lower()
    return out


def assert_adapter_contract(adapter: Any, sample: Path, integration_name: str = "Sample") -> None:
    """The adapter turns the sample's payload into exactly the expected events, purely.

    Parsing twice must give the same answer (adapters keep no state), and the
    payload must be left as it was (adapters do not mutate their input).
    """
    import copy
    import json

    from oncall_server.hookspecs import AdapterContext

    data = json.loads(Path(sample).read_text())
    payload = data["payload"]
    before = copy.deepcopy(payload)
    context = AdapterContext(integration_name, adapter.name, {})
    first = [normalized(e) for e in adapter.parse(payload, context)]
    assert first == data["expected"], f"{sample}: got {json.dumps(first, indent=2)}"
    assert [normalized(e) for e in adapter.parse(payload, context)] == first, (
        f"{sample}: parse is not repeatable"
    )
    assert payload == before, f"{sample}: the adapter changed its input"


def unlabelled_metrics(exposition: str) -> dict[str, float]:
    """The samples without labels of a ``/metrics`` page (histogram ``_count``/``_sum``,
    plain counters), by sample name: what the harness and tests read back."""
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if not sample.labels
    }
