"""Paging scenarios (5 and 6) helpers: point the bootstrap service at the page receiver, seed pending
escalation steps in bulk, drive the open-loop ingest load, and read start-up timings from the log.

* :func:`group_alerts` - ``UpdateService`` to time grouping (scenarios 3, 4, 4b's "grouped" rows).
* :func:`configure_paging` - through the real gRPC API with the bootstrap API token: a user with a
  ``webhook`` contact method (the receiver's URL, a signing secret), a one-tier policy targeting
  them, and ``UpdateService`` of the bootstrap service to that policy (bootstrap's own default
  policy pages an "On-call" user through the ``log`` channel; it stays, unused).
* :func:`seed_pending` - SQLAlchemy Core bulk inserts (chunks in one transaction each) of triggered
  incidents at run 1, step 0, no policy snapshot (the scheduler snapshots the service's policy at the
  first step), as the ingest writer leaves them, with ``escalation_due_at`` in the future. The
  measured ones are inserted last, their due times counted from the end of seeding, so "due N s
  after the server starts" holds however long the bulk took.
* :func:`startup_timings` - "scheduler running" and "scheduler set rebuilt from SQL" from the server
  log (needs ``ONCALL_LOG_LEVEL=INFO``).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

TIER_DELAY_SECONDS = 3600  # one tier; the next (none) would be an hour later: only the first page counts
MEASURED_PREFIX = "due:"
FAR_PREFIX = "far:"


def _api(grpc_target: str, api_token: str) -> Any:
    """A connected gRPC channel and the bootstrap token's call metadata."""
    import grpc

    channel = grpc.insecure_channel(grpc_target)
    grpc.channel_ready_future(channel).result(timeout=30)
    return channel, [("authorization", f"Bearer {api_token}")]


def _update_service(channel: Any, auth: Any, service_id: str, **fields: Any) -> Any:
    """``UpdateService`` of just ``fields``; returns the service as stored."""
    from google.protobuf import field_mask_pb2

    from oncall_server.api.v1 import catalog_service_pb2, catalog_service_pb2_grpc, service_pb2

    return (
        catalog_service_pb2_grpc.CatalogServiceStub(channel)
        .UpdateService(
            catalog_service_pb2.UpdateServiceRequest(
                service=service_pb2.Service(id=service_id, **fields),
                update_mask=field_mask_pb2.FieldMask(paths=sorted(fields)),
            ),
            metadata=auth,
            timeout=30,
        )
        .service
    )


def group_alerts(grpc_target: str, api_token: str, service_id: str, minutes: int = 600) -> None:
    """Time grouping on the service: alerts of one severity join the open incident for ``minutes``
    after the last one, as Alertmanager's one aggregation group (a route with no ``group_by``) holds
    every alert of the comparison load; only the first alert opens an incident and pages."""
    from oncall_server.api.v1 import service_pb2

    channel, auth = _api(grpc_target, api_token)
    with channel:
        service = _update_service(
            channel,
            auth,
            service_id,
            alert_grouping=service_pb2.ALERT_GROUPING_TIME,
            alert_grouping_timeout_minutes=minutes,
        )
    if service.alert_grouping != service_pb2.ALERT_GROUPING_TIME:
        raise RuntimeError("UpdateService did not switch the service to time grouping")


def configure_paging(grpc_target: str, api_token: str, service_id: str, receiver_url: str) -> dict[str, str]:
    """User + webhook contact method + one-tier policy, and the service switched to that policy."""
    from google.protobuf import duration_pb2

    from oncall_server.api.v1 import (
        escalation_policy_pb2,
        escalation_policy_service_pb2,
        escalation_policy_service_pb2_grpc,
        user_pb2,
        user_service_pb2,
        user_service_pb2_grpc,
    )

    channel, auth = _api(grpc_target, api_token)
    with channel:
        users = user_service_pb2_grpc.UserServiceStub(channel)
        user = users.CreateUser(
            user_service_pb2.CreateUserRequest(
                user=user_pb2.User(name="Bench pager", email="pager@bench.invalid")
            ),
            metadata=auth,
            timeout=30,
        ).user
        method = users.AddContactMethod(
            user_service_pb2.AddContactMethodRequest(
                user_id=user.id,
                contact_method=user_pb2.ContactMethod(
                    type="webhook", address=receiver_url, secret="bench-signing-secret"
                ),
            ),
            metadata=auth,
            timeout=30,
        ).contact_method
        policy = (
            escalation_policy_service_pb2_grpc.EscalationPolicyServiceStub(channel)
            .CreateEscalationPolicy(
                escalation_policy_service_pb2.CreateEscalationPolicyRequest(
                    escalation_policy=escalation_policy_pb2.EscalationPolicy(
                        name="Bench: page the receiver",
                        tiers=[
                            escalation_policy_pb2.EscalationTier(
                                delay=duration_pb2.Duration(seconds=TIER_DELAY_SECONDS),
                                targets=[
                                    escalation_policy_pb2.EscalationTarget(
                                        type=escalation_policy_pb2.ESCALATION_TARGET_TYPE_USER, id=user.id
                                    )
                                ],
                            )
                        ],
                    )
                ),
                metadata=auth,
                timeout=30,
            )
            .escalation_policy
        )
        service = _update_service(channel, auth, service_id, escalation_policy_id=policy.id)
    if service.escalation_policy_id != policy.id:
        raise RuntimeError(f"UpdateService left the policy at {service.escalation_policy_id!r}")
    return {"user_id": user.id, "contact_method_id": method.id, "escalation_policy_id": policy.id}


# --- scenario 6: pending steps in bulk -------------------------------------------------------------------


def _incident_row(
    tenant_id: str, service_id: str, title: str, now: datetime, due: datetime
) -> dict[str, Any]:
    from oncall_server.ids import uuid7

    return {
        "id": uuid7(),
        "tenant_id": tenant_id,
        "service_id": service_id,
        "title": title,
        "severity": 1,  # critical
        "status": "triggered",
        "source": "bench",
        "source_ref": "",
        "dedup_key": None,
        "description": "seeded by bench/harness.py scenario 6",
        "details": {},
        "alert_count": 1,
        "assigned_to": "",
        "created_at": now,
        "updated_at": now,
        "last_alert_at": now,
        "acknowledged_at": None,
        "acknowledged_by": "",
        "resolved_at": None,
        "resolved_by": "",
        "resolution_summary": "",
        "escalation_snapshot": None,
        "escalation_run": 1,
        "escalation_step": 0,
        "escalation_due_at": due,
    }


def seed_pending(
    url: str,
    tenant_id: str,
    service_id: str,
    *,
    total: int,
    measured: int,
    start_in: float,
    window: float,
    far_from: float = 3600.0,
    far_to: float = 7200.0,
    chunk: int = 5000,
) -> dict[str, Any]:
    """Insert ``total`` triggered incidents with a pending first step: ``total - measured`` due
    ``far_from``..``far_to`` s from now, then ``measured`` due evenly over ``window`` s starting
    ``start_in`` s after seeding ends. Titles: ``due:<due ms>:<n>`` (measured), ``far:<n>``."""

    async def seed() -> dict[str, Any]:
        from sqlalchemy import Table, insert

        from oncall_server.storage.engine import create_engine
        from oncall_server.storage.models import Incident

        engine = create_engine(url)
        table = cast(Table, Incident.__table__)  # a declarative class's __table__ is typed FromClause

        async def insert_incidents(
            count: int, now: datetime, title_due: Callable[[int], tuple[str, float]]
        ) -> None:
            """Incidents 0..count-1 (``title_due(i)``: title, due wall time), one transaction a chunk."""
            for first in range(0, count, chunk):
                rows = []
                for i in range(first, min(count, first + chunk)):
                    title, due_s = title_due(i)
                    rows.append(
                        _incident_row(tenant_id, service_id, title, now, datetime.fromtimestamp(due_s, UTC))
                    )
                async with engine.begin() as conn:
                    await conn.execute(insert(table), rows)

        started = time.time()
        far = total - measured
        try:
            now = datetime.now(UTC)
            base = now.timestamp()
            await insert_incidents(
                far,
                now,
                lambda i: (f"{FAR_PREFIX}{i}", base + far_from + (far_to - far_from) * i / max(1, far - 1)),
            )
            # The measured steps last: their due times count from now, just before the server starts.
            now = datetime.now(UTC)
            due_start = now.timestamp() + start_in
            due_ms_list = [round((due_start + window * i / max(1, measured)) * 1000) for i in range(measured)]
            await insert_incidents(
                measured, now, lambda i: (f"{MEASURED_PREFIX}{due_ms_list[i]}:{i}", due_ms_list[i] / 1000)
            )
        finally:
            await engine.dispose()
        return {
            "seconds": round(time.time() - started, 2),
            "rows": total,
            "measured": measured,
            "due_start": due_ms_list[0] / 1000 if due_ms_list else due_start,
            "due_end": due_ms_list[-1] / 1000 if due_ms_list else due_start,
        }

    return asyncio.run(seed())


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \w+ [\w.]+: (.*)$")


def startup_timings(log: Path) -> dict[str, Any]:
    """Wall times of the last start's "scheduler running" and "scheduler set rebuilt" log lines."""
    out: dict[str, Any] = {"scheduler_running_at": None, "rebuilt_at": None, "restored": None}
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        match = _LOG_LINE.match(line)
        if not match:
            continue
        stamp = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + int(match.group(2)) / 1000
        message = match.group(3)
        if message == "scheduler running":
            out.update(scheduler_running_at=stamp, rebuilt_at=None, restored=None)
        elif message.startswith("scheduler set rebuilt from SQL"):
            found = re.search(r"(\d+) member", message)
            out.update(rebuilt_at=stamp, restored=int(found.group(1)) if found else None)
    return out
