"""A tenant's life: deactivated, activated again, deleted — and what each does to its credentials.

Real servers on loopback, real SQL (SQLite and PostgreSQL), the admin CLI in its own process.
A deactivated or deleted tenant's API token is refused on every one of the 50 token RPCs, its
integration key by the webhook and gRPC ingest (a key a server cached keeps working at most
``integrations.CACHE_SECONDS``), its escalations stop; deleting removes every row it owned.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import pkgutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import message_factory
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

import oncall_server.api.v1 as api_v1
from oncall_server import failures
from oncall_server.clock import FakeClock
from oncall_server.configuration import schedules, services, tenants, users
from oncall_server.errors import AlreadyExists, FailedPrecondition, NotFound
from oncall_server.ids import uuid7
from oncall_server.ingest.integrations import CACHE_SECONDS
from oncall_server.runtime.app import App
from oncall_server.storage.engine import write_transaction
from oncall_server.storage.models import (
    Alert,
    AlertDelivery,
    Base,
    Incident,
    Notification,
    Service,
    Tenant,
    TimelineEntry,
)
from oncall_server.testing import (
    CaptureChannel,
    RunningServer,
    add_policy,
    add_user,
    bootstrap,
    settle,
    wait_for,
)
from tests.helpers import CLI, create_window, post_json

MINUTE = 60


# --- every RPC, called with the tenant's credentials -----------------------------------------


@dataclass(frozen=True)
class Rpc:
    path: str
    request: Any
    response: Any
    client_streaming: bool
    server_streaming: bool

    @property
    def by_key(self) -> bool:
        """IngestService: authenticated by an integration key (or Defend's service key), not a token."""
        return self.path.startswith("/oncall.v1.IngestService/")


def every_rpc() -> list[Rpc]:
    rpcs = []
    for module in pkgutil.iter_modules(api_v1.__path__):
        if not module.name.endswith("_service_pb2"):
            continue
        descriptor = importlib.import_module(f"{api_v1.__name__}.{module.name}").DESCRIPTOR
        for service in descriptor.services_by_name.values():
            for method in service.methods:
                rpcs.append(
                    Rpc(
                        f"/{service.full_name}/{method.name}",
                        message_factory.GetMessageClass(method.input_type),
                        message_factory.GetMessageClass(method.output_type),
                        method.client_streaming,
                        method.server_streaming,
                    )
                )
    return rpcs


RPCS = every_rpc()
TOKEN_RPCS = [rpc for rpc in RPCS if not rpc.by_key]


async def call(channel: grpc.aio.Channel, rpc: Rpc, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    """The status of ``rpc`` called with an empty request (OK if it answered)."""
    serial = {
        "request_serializer": rpc.request.SerializeToString,
        "response_deserializer": rpc.response.FromString,
    }
    try:
        if rpc.server_streaming:
            stream = channel.unary_stream(rpc.path, **serial)(rpc.request(), metadata=metadata, timeout=1.0)
            await stream.read()
        elif rpc.client_streaming:

            async def one() -> AsyncIterator[Any]:
                yield rpc.request()

            await channel.stream_unary(rpc.path, **serial)(one(), metadata=metadata, timeout=5.0)
        else:
            await channel.unary_unary(rpc.path, **serial)(rpc.request(), metadata=metadata, timeout=5.0)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def statuses(server: RunningServer, rpcs: list[Rpc], metadata: list[tuple[str, str]]) -> dict[str, str]:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        return {rpc.path: (await call(channel, rpc, metadata)).name for rpc in rpcs}


def credentials(tenant: Any) -> list[tuple[str, str]]:
    return [*tenant.auth, ("x-integration-key", tenant.integration_key)]


# --- the admin CLI, in its own process -------------------------------------------------------


async def cli(database_url: str, data_dir: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        "--database-url",
        database_url,
        "--data-dir",
        str(data_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def webhook(server: RunningServer, key: str, dedup_key: str = "cpu-1") -> tuple[int, Any]:
    return await post_json(
        f"{server.http_url}/api/webhooks/ingest?key={key}",
        {"title": "CPU critical on srv-1", "severity": "critical", "dedup_key": dedup_key},
    )


# --- deactivation ----------------------------------------------------------------------------


async def test_a_deactivated_tenant_is_refused_everywhere_until_activated(
    server: RunningServer, database_url: str, tmp_path: Path
) -> None:
    tenant = await bootstrap(server.app, tenant="acme")
    other = await bootstrap(server.app, tenant="globex")
    assert len(TOKEN_RPCS) == 50
    active = await statuses(server, TOKEN_RPCS, tenant.auth)
    assert "UNAUTHENTICATED" not in active.values(), active

    code, out, err = await cli(
        database_url, tmp_path, "tenant", "deactivate", "acme", "--wait", "0", "--json"
    )
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["name"], shown["status"], shown["tenant_id"]) == ("acme", "deactivated", tenant.tenant_id)

    # Every RPC, the three ingest ones with the integration key (never used, so never cached).
    refused = await statuses(server, RPCS, credentials(tenant))
    assert refused == {rpc.path: "UNAUTHENTICATED" for rpc in RPCS}
    status, body = await webhook(server, tenant.integration_key)
    assert status == 401, body
    async with (
        aiohttp.ClientSession() as http,
        http.put(
            f"{server.http_url}/api/integrations/{tenant.integration_id}",
            json={"name": "renamed"},
            headers={"Authorization": f"Bearer {tenant.api_token}"},
        ) as response,
    ):
        assert response.status == 401, await response.text()  # the gateway's token check too
    # Another tenant is not affected.
    assert (await webhook(server, other.integration_key))[0] == 202
    assert "UNAUTHENTICATED" not in (await statuses(server, TOKEN_RPCS, other.auth)).values()
    # No new token for a deactivated tenant: it would not work.
    code, _, err = await cli(database_url, tmp_path, "token", "create", "--tenant", "acme")
    assert code == 2 and "deactivated" in err

    code, out, err = await cli(database_url, tmp_path, "tenant", "list", "--json")
    assert code == 0, err
    assert {t["name"]: t["status"] for t in json.loads(out)} == {"acme": "deactivated", "globex": "active"}

    code, out, err = await cli(database_url, tmp_path, "tenant", "activate", "acme", "--json")
    assert code == 0, err
    assert json.loads(out)["status"] == "active"
    assert "UNAUTHENTICATED" not in (await statuses(server, TOKEN_RPCS, tenant.auth)).values()
    status, body = await webhook(server, tenant.integration_key)
    assert status == 202, body


async def test_bootstrap_refuses_a_deactivated_tenant_before_creating_anything(
    server: RunningServer, database_url: str, tmp_path: Path
) -> None:
    tenant = await bootstrap(server.app, tenant="acme")
    await tenants.deactivate_tenant(server.app.sessions, server.app.clock, "acme")
    before = await owned_rows(server.app, tenant.tenant_id)
    code, out, err = await cli(database_url, tmp_path, "bootstrap", "--tenant", "acme", "--service", "New")
    assert code == 2 and out == "" and "is deactivated" in err
    assert await owned_rows(server.app, tenant.tenant_id) == before


async def test_a_key_cached_before_deactivation_stops_working_within_the_cache_window(
    server: RunningServer,
) -> None:
    tenant = await bootstrap(server.app)
    assert (await webhook(server, tenant.integration_key))[0] == 202  # resolved, so cached
    # As `oncall-server tenant deactivate` does it: from another process, straight to SQL.
    await tenants.deactivate_tenant(server.app.sessions, server.app.clock, tenant.tenant_id)
    deactivated = time.monotonic()

    async def refused() -> bool:
        return (await webhook(server, tenant.integration_key, dedup_key=uuid7()))[0] == 401

    await wait_for(refused, timeout=CACHE_SECONDS + 2, interval=0.05)
    window = time.monotonic() - deactivated
    assert window <= CACHE_SECONDS + 0.5, f"the key worked for {window:.2f}s after deactivation"
    # The token was never cached: refused at once.
    assert set((await statuses(server, TOKEN_RPCS[:5], tenant.auth)).values()) == {"UNAUTHENTICATED"}


async def test_defend_and_bus_routing_refuse_a_deactivated_tenant(server: RunningServer) -> None:
    tenant = await bootstrap(server.app, integration_type="defend")
    await tenants.deactivate_tenant(server.app.sessions, server.app.clock, tenant.tenant_id)
    with pytest.raises(FailedPrecondition, match="is deactivated"):
        await server.app.integrations.for_tenant(tenant.tenant_id, "defend")


# --- paging ----------------------------------------------------------------------------------


async def test_deactivation_stops_escalations_and_activation_does_not_restart_them(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock
) -> None:
    server, channel = paging
    app = server.app
    tenant = await bootstrap(app)
    # Alice's second contact method is used 2 minutes after she is paged; Bob is tier 2 at 5 minutes.
    alice = await add_user(
        app, tenant.tenant_id, "alice", contacts=[("capture", "alice", ""), ("capture", "alice-later", "")],
        rules=[(0, 0), (1, 120)],
    )  # fmt: skip
    bob = await add_user(app, tenant.tenant_id, "bob", contacts=[("capture", "bob", "")])
    await add_policy(
        app, tenant.tenant_id, [(5 * MINUTE, [("user", alice)]), (5 * MINUTE, [("user", bob)])],
        service_id=tenant.service_id,
    )  # fmt: skip
    status, body = await webhook(server, tenant.integration_key)
    assert status == 202, body
    incident_id = body["incident_id"]
    await settle(app)
    assert [p.incident_id for p in channel.to("alice")] == [incident_id] and channel.to("alice-later") == []

    _, stopped = await tenants.deactivate_tenant(app.sessions, clock, tenant.tenant_id)
    assert stopped == 1
    clock.advance(30 * MINUTE)
    await settle(app)
    assert channel.to("alice-later") == [] and channel.to("bob") == []  # nothing after deactivation
    async with app.sessions() as session:
        incident = await session.get(Incident, incident_id)
        statuses_ = sorted(
            (
                await session.scalars(
                    select(Notification.status).where(Notification.incident_id == incident_id)
                )
            ).all()
        )
        notes = (
            await session.scalars(
                select(TimelineEntry.message).where(
                    TimelineEntry.incident_id == incident_id, TimelineEntry.kind == "note"
                )
            )
        ).all()
    assert incident is not None and incident.status == "triggered" and incident.escalation_due_at is None
    assert statuses_ == ["cancelled", "sent"]  # alice's delayed rule never goes out
    assert notes == ["Escalation stopped: tenant deactivated"]

    await tenants.activate_tenant(app.sessions, tenant.tenant_id)
    clock.advance(30 * MINUTE)
    await settle(app)
    assert channel.to("bob") == []  # the stopped escalation stays stopped
    status, body = await webhook(server, tenant.integration_key, dedup_key="disk-1")
    assert status == 202 and body["outcome"] == "created"
    await settle(app)
    alice_paged_for = [p.incident_id for p in channel.to("alice")]
    assert alice_paged_for == [incident_id, body["incident_id"]]  # new alerts page again


# --- deletion --------------------------------------------------------------------------------


async def owned_rows(app: App, tenant_id: str) -> dict[str, int]:
    """Rows per table that belong to the tenant (by tenant_id, or via their alert)."""
    counts: dict[str, int] = {}
    async with app.sessions() as session:
        for table in Base.metadata.sorted_tables:
            if table.name == "tenants":
                query = select(func.count()).select_from(table).where(table.c.id == tenant_id)
            elif "tenant_id" in table.c:
                query = select(func.count()).select_from(table).where(table.c.tenant_id == tenant_id)
            elif table.name == "alert_deliveries":
                alerts = select(Alert.id).where(Alert.tenant_id == tenant_id)
                query = select(func.count()).select_from(table).where(AlertDelivery.alert_id.in_(alerts))
            else:
                raise AssertionError(f"the test does not know how {table.name} belongs to a tenant")
            counts[table.name] = int(await session.scalar(query) or 0)
    return counts


async def populate(server: RunningServer, name: str) -> Any:
    """A tenant with a row in every table: incidents, merged deliveries, pages, timeline, users..."""
    app = server.app
    tenant = await bootstrap(app, tenant=name)
    user = await add_user(
        app, tenant.tenant_id, f"{name}-oncall", contacts=[("capture", name, "")], rules=[(0, 0)]
    )
    await add_policy(app, tenant.tenant_id, [(5 * MINUTE, [("user", user)])], service_id=tenant.service_id)
    for _ in range(2):  # the second delivery is merged: an alert_deliveries row
        assert (await webhook(server, tenant.integration_key))[0] == 202
    change = {"title": "Deployed v2", "event_action": "change"}  # a service_events row
    assert (await post_json(f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}", change))[
        0
    ] == 202
    await create_window(server, tenant, app.clock.now().replace(year=2030))
    await schedules.create_schedule(
        app.sessions,
        app.clock,
        tenant.tenant_id,
        schedules.ScheduleSpec(name="Nights", time_zone="UTC"),
    )
    await settle(app)
    return tenant


async def test_deleting_a_tenant_removes_every_row_it_owned_and_nothing_else(
    paging: tuple[RunningServer, CaptureChannel], database_url: str, tmp_path: Path, clock: FakeClock
) -> None:
    server, _ = paging
    app = server.app
    doomed = await populate(server, "doomed")
    kept = await populate(server, "kept")
    before = await owned_rows(app, doomed.tenant_id)
    assert all(before.values()), f"the test should fill every table: {before}"
    kept_before = await owned_rows(app, kept.tenant_id)

    code, _, err = await cli(database_url, tmp_path, "tenant", "delete", "doomed", "--yes")
    assert code == 2 and "deactivate it first" in err  # an active tenant is never deleted
    # The default: wait out the servers' key caches (and stop what they let in meanwhile).
    code, _, err = await cli(database_url, tmp_path, "tenant", "deactivate", "doomed")
    assert code == 0, err
    assert f"waiting {CACHE_SECONDS + 1:g}s" in err
    code, _, err = await cli(database_url, tmp_path, "tenant", "delete", "doomed")
    assert code == 1 and "--yes" in err and f"{before['alerts']} alerts" in err  # says what would go
    assert await owned_rows(app, doomed.tenant_id) == before

    code, out, err = await cli(database_url, tmp_path, "tenant", "delete", "doomed", "--yes", "--json")
    assert code == 0, err
    assert json.loads(out)["deleted"] == before
    assert set((await owned_rows(app, doomed.tenant_id)).values()) == {0}
    assert await owned_rows(app, kept.tenant_id) == kept_before

    # Its token and key open nothing; the scheduler's leftover steps for it are harmless.
    assert await statuses(server, RPCS, credentials(doomed)) == {rpc.path: "UNAUTHENTICATED" for rpc in RPCS}
    assert (await webhook(server, doomed.integration_key))[0] == 401
    clock.advance(60 * MINUTE)
    await settle(app)
    assert (await webhook(server, kept.integration_key, dedup_key="after"))[0] == 202
    code, _, err = await cli(database_url, tmp_path, "tenant", "activate", "doomed")
    assert code == 2 and "no tenant 'doomed'" in err


async def test_deletion_waits_out_key_caches_and_goes_in_small_transactions(
    paging: tuple[RunningServer, CaptureChannel], clock: FakeClock
) -> None:
    server, _ = paging
    app = server.app
    tenant = await populate(server, "big")
    for n in range(5):
        assert (await webhook(server, tenant.integration_key, dedup_key=f"more-{n}"))[0] == 202
    before = await owned_rows(app, tenant.tenant_id)
    await tenants.deactivate_tenant(app.sessions, clock, tenant.tenant_id)
    with pytest.raises(FailedPrecondition, match="cached integration keys"):
        await tenants.delete_tenant(app.sessions, clock, "big")  # a server may still take its alerts
    clock.advance(CACHE_SECONDS)
    deleted = await tenants.delete_tenant(app.sessions, clock, "big", batch_rows=2)
    assert deleted == before
    assert set((await owned_rows(app, tenant.tenant_id)).values()) == {0}
    with pytest.raises(NotFound):
        await tenants.delete_tenant(app.sessions, clock, "big")


# --- constraint violations -------------------------------------------------------------------


async def test_unique_and_foreign_key_violations_are_told_apart(server: RunningServer) -> None:
    app = server.app
    tenant = await tenants.create_tenant(app.sessions, app.clock, "unique-name")
    with pytest.raises(AlreadyExists, match="already exists"):
        await tenants.create_tenant(app.sessions, app.clock, "unique-name")

    now = app.clock.now()
    errors: list[IntegrityError] = []
    for row in (
        Tenant(id=uuid7(), name="unique-name", created_at=now),
        Service(id=uuid7(), tenant_id=uuid7(), name="orphan", created_at=now, updated_at=now),
    ):
        with pytest.raises(IntegrityError) as caught:
            async with write_transaction(app.sessions) as session:
                session.add(row)
        errors.append(caught.value)
    unique, foreign = errors
    assert failures.is_unique_violation(unique) and not failures.is_foreign_key_violation(unique)
    assert failures.is_foreign_key_violation(foreign) and not failures.is_unique_violation(foreign)
    assert isinstance(failures.integrity_error(unique, taken="t", missing="m"), AlreadyExists)
    assert isinstance(failures.integrity_error(foreign, taken="t", missing="m"), FailedPrecondition)

    # A token for a tenant that does not exist (deleted meanwhile) is NOT_FOUND, not a crash.
    with pytest.raises(NotFound):
        await tenants.create_api_token(app.sessions, app.clock, uuid7(), "ci")
    assert (await tenants.create_api_token(app.sessions, app.clock, tenant.id, "ci"))[0].startswith("oct_")


@pytest.mark.parametrize("kind", ["service", "user", "schedule"])
async def test_creating_for_a_tenant_deleted_meanwhile_is_not_already_exists(
    server: RunningServer, kind: str
) -> None:
    app = server.app
    gone = uuid7()  # authenticated just before the tenant was deleted
    with pytest.raises(Exception) as caught:
        if kind == "service":
            await services.create_service(app.sessions, app.clock, gone, services.ServiceFields(name="Web"))
        elif kind == "user":
            await users.create_user(
                app.sessions, app.clock, gone, users.UserFields(name="Ada", email="ada@example.com")
            )
        else:
            await schedules.create_schedule(
                app.sessions, app.clock, gone, schedules.ScheduleSpec(name="S", time_zone="UTC")
            )
    assert isinstance(caught.value, FailedPrecondition), caught.value
    assert "deleted meanwhile" in caught.value.message
