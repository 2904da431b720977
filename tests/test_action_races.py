"""A technician's acknowledge or resolve never fails because alerts arrive on the same incident.

Ingest upserts the open alert and then updates its incident; an acknowledgement locks the incident
and then updates its alerts. Done in opposite orders, PostgreSQL broke the tie with a deadlock and
the acknowledgement answered INTERNAL, so escalation went on paging.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import grpc
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from oncall_server.api.v1 import incident_service_pb2 as inc_pb
from oncall_server.api.v1 import incident_service_pb2_grpc as inc_grpc
from oncall_server.clock import FakeClock
from oncall_server.configuration import tenants
from oncall_server.storage.engine import create_engine, is_sqlite, retrying_write, session_factory
from oncall_server.storage.models import Tenant
from oncall_server.testing import RunningServer, bootstrap
from tests.helpers import post_json

ROUNDS = 40
ALERTS_PER_ROUND = 12


@pytest.mark.slow
async def test_ack_and_resolve_while_alerts_arrive_never_fail(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    url = f"{server.http_url}/api/webhooks/ingest?key={tenant.integration_key}"
    failures: list[str] = []
    ingest_statuses: list[int] = []

    async def send(dedup_key: str, index: int) -> None:
        await asyncio.sleep(0.0005 * (index % 6))
        status, _ = await post_json(url, {"title": "disk full", "dedup_key": dedup_key})
        ingest_statuses.append(status)

    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        incidents = inc_grpc.IncidentServiceStub(channel)

        async def act(verb: str, incident_id: str, delay: float) -> None:
            await asyncio.sleep(delay)
            try:
                if verb == "ack":
                    await incidents.AcknowledgeIncident(
                        inc_pb.AcknowledgeIncidentRequest(incident_id=incident_id), metadata=tenant.auth
                    )
                else:
                    await incidents.ResolveIncident(
                        inc_pb.ResolveIncidentRequest(incident_id=incident_id), metadata=tenant.auth
                    )
            except grpc.aio.AioRpcError as error:
                failures.append(f"{verb} {incident_id}: {error.code().name} {error.details()}")

        for round_ in range(ROUNDS):
            key = f"race-{round_}"
            status, answer = await post_json(url, {"title": "disk full", "dedup_key": key})
            assert status == 202, answer
            incident_id = str(answer["incident_id"])
            # Alerts on the same open alert and incident, an ack in the middle of them, then a resolve.
            await asyncio.gather(
                *(send(key, i) for i in range(ALERTS_PER_ROUND)),
                act("ack", incident_id, 0.0005 * (round_ % 5)),
                *(send(key, i) for i in range(ALERTS_PER_ROUND)),
            )
            await asyncio.gather(
                *(send(key, i) for i in range(ALERTS_PER_ROUND)),
                act("resolve", incident_id, 0.0005 * (round_ % 4)),
            )

    assert failures == []
    assert set(ingest_statuses) == {202}


async def test_a_deadlocked_write_runs_again_and_both_commit(database_url: str) -> None:
    """Two writes that lock two rows in opposite orders: PostgreSQL aborts one, which runs again."""
    if is_sqlite(database_url):
        pytest.skip("SQLite serialises writers: no deadlock to break")
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC))
    first = await tenants.create_tenant(sessions, clock, "first")
    second = await tenants.create_tenant(sessions, clock, "second")
    both_hold_one = asyncio.Barrier(2)
    attempts: list[str] = []

    def rename_in_order(label: str, order: tuple[str, str]) -> Callable[[AsyncSession], Awaitable[None]]:
        async def work(session: AsyncSession) -> None:
            attempts.append(label)
            await session.execute(update(Tenant).where(Tenant.id == order[0]).values(name=f"{label}-a"))
            if attempts.count(label) == 1:  # only the first attempt meets the other half-way
                await both_hold_one.wait()
            await session.execute(update(Tenant).where(Tenant.id == order[1]).values(name=f"{label}-b"))

        return work

    try:
        await asyncio.wait_for(
            asyncio.gather(
                retrying_write(sessions, rename_in_order("x", (first.id, second.id))),
                retrying_write(sessions, rename_in_order("y", (second.id, first.id))),
            ),
            30,
        )
        async with sessions() as session:
            names = set((await session.scalars(select(Tenant.name))).all())
    finally:
        await engine.dispose()
    assert len(attempts) == 3  # one of the two ran twice
    assert names in ({"x-a", "x-b"}, {"y-a", "y-b"})  # both committed, the retried one last
