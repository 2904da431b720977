"""Services (the paging targets) and their maintenance windows.

A serving process keeps copies of what these functions change (the integration key cache holds
each service's grouping window; ingest keeps grouping keys and maintenance windows in Redis):
the functions tell those copies after the change commits, so every face gets it right by calling
them. Outside a server (the CLI) there is nothing to tell: other processes' copies expire.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oncall_server.clock import Clock
from oncall_server.configuration import rows
from oncall_server.configuration.escalation_policies import check_policy_reference
from oncall_server.errors import FailedPrecondition, InvalidArgument, NotFound
from oncall_server.ids import is_valid_id, uuid7
from oncall_server.storage.engine import retrying_write
from oncall_server.storage.models import Incident, Integration, MaintenanceWindow, Service, ServiceEvent

CRITICALITIES = ("critical", "high", "medium", "low")
GROUPINGS = ("none", "time")
MAX_GROUPING_MINUTES = 24 * 60


class KeyCache(Protocol):
    """The integration key cache (:class:`~oncall_server.ingest.integrations.Integrations`)."""

    def forget_cached(self) -> None: ...


class IngestState(Protocol):
    """Ingest's per-service state in Redis (:class:`~oncall_server.ingest.coordination.Coordinator`)."""

    async def forget_service(self, service_id: str) -> None: ...
    async def windows_changed(self, service_id: str) -> None: ...


@dataclass(slots=True)
class ServiceFields:
    """The writable fields of a service, as both APIs give them."""

    name: str = ""
    description: str = ""
    criticality: str = "high"
    escalation_policy_id: str | None = None
    alert_grouping: str = "none"
    alert_grouping_timeout_minutes: int = 0
    auto_resolve_seconds: int | None = None
    acknowledgement_timeout_seconds: int | None = None
    resolve_from_source: bool = True
    acknowledge_from_source: bool = True

    def validate(self) -> None:
        self.name = self.name.strip()
        if not self.name or len(self.name) > 200:
            raise InvalidArgument.field("service.name", "must be 1 to 200 characters")
        if self.criticality not in CRITICALITIES:
            raise InvalidArgument.field("service.criticality", f"must be one of {', '.join(CRITICALITIES)}")
        if self.alert_grouping not in GROUPINGS:
            raise InvalidArgument.field("service.alert_grouping", 'must be "none" or "time"')
        if (
            self.alert_grouping == "time"
            and not 1 <= self.alert_grouping_timeout_minutes <= MAX_GROUPING_MINUTES
        ):
            raise InvalidArgument.field(
                "service.alert_grouping_timeout_minutes",
                f'must be 1 to {MAX_GROUPING_MINUTES} when alert_grouping is "time"',
            )
        if self.alert_grouping == "none":
            self.alert_grouping_timeout_minutes = 0
        for name, api_name in (
            ("auto_resolve_seconds", "auto_resolve_timeout"),
            ("acknowledgement_timeout_seconds", "acknowledgement_timeout"),
        ):
            value = getattr(self, name)
            if value is not None and value < 60:
                raise InvalidArgument.field(f"service.{api_name}", "must be at least 1 minute")


def grouping_window_ms(service: Service) -> int:
    """The sliding grouping window in milliseconds; 0 when the service does not group."""
    if service.alert_grouping != "time":
        return 0
    return service.alert_grouping_timeout_minutes * 60_000


async def create_service(
    sessions: async_sessionmaker[AsyncSession], clock: Clock, tenant_id: str, spec: ServiceFields
) -> Service:
    spec.validate()
    now = clock.now()

    async def work(session: AsyncSession) -> Service:
        service = Service(id=uuid7(), tenant_id=tenant_id, created_at=now, updated_at=now, **_values(spec))
        await _check_policy(session, tenant_id, spec)
        session.add(service)
        return service

    return await rows.write(sessions, work, taken=_taken(spec.name), missing=_MISSING)


async def get_service(session: AsyncSession, tenant_id: str, service_id: str) -> Service:
    """The tenant's service; another tenant's answers NOT_FOUND, as does a malformed id."""
    return await rows.load(session, Service, "service", tenant_id, service_id)


async def list_services(
    sessions: async_sessionmaker[AsyncSession], tenant_id: str, page_size: int, after: str | None
) -> list[Service]:
    return await rows.list_page(sessions, Service, tenant_id, page_size, after)


async def update_service(
    sessions: async_sessionmaker[AsyncSession],
    clock: Clock,
    tenant_id: str,
    service_id: str,
    changes: dict[str, Any],
    *,
    key_cache: KeyCache | None = None,
) -> Service:
    """Apply ``changes``; the key cache forgets its contexts, which carry the grouping window."""

    async def work(session: AsyncSession) -> Service:
        service = await get_service(session, tenant_id, service_id)
        spec = ServiceFields(**{f.name: getattr(service, f.name) for f in fields(ServiceFields)})
        for name, value in changes.items():
            setattr(spec, name, value)
        spec.validate()
        if spec.escalation_policy_id != service.escalation_policy_id:
            await _check_policy(session, tenant_id, spec)
        for name, value in _values(spec).items():
            setattr(service, name, value)
        service.updated_at = clock.now()
        return service

    service = await rows.write(sessions, work, taken=_taken(str(changes.get("name", ""))), missing=_MISSING)
    if key_cache is not None:
        key_cache.forget_cached()
    return service


_MISSING = "the tenant is gone (deleted meanwhile)"


def _taken(name: str) -> str:
    return f"a service named {name!r} already exists"


async def delete_service(
    sessions: async_sessionmaker[AsyncSession],
    tenant_id: str,
    service_id: str,
    *,
    ingest_state: IngestState | None = None,
) -> None:
    """Delete a service without integrations or incidents, its windows, and its Redis keys."""

    async def work(session: AsyncSession) -> None:
        service = await get_service(session, tenant_id, service_id)
        integrations = await session.scalar(
            select(func.count()).where(Integration.service_id == service_id, Integration.deleted_at.is_(None))
        )
        if integrations:
            raise FailedPrecondition(f"service {service_id!r} still has {integrations} integration(s)")
        has_incidents = await session.scalar(select(func.count()).where(Incident.service_id == service_id))
        if has_incidents:
            raise FailedPrecondition(f"service {service_id!r} has incidents; its history would be lost")
        windows = await session.scalars(
            select(MaintenanceWindow).where(MaintenanceWindow.service_id == service_id)
        )
        for window in windows:
            await session.delete(window)
        await session.delete(service)

    await retrying_write(sessions, work)
    if ingest_state is not None:
        await ingest_state.forget_service(service_id)


async def create_maintenance_window(
    sessions: async_sessionmaker[AsyncSession],
    clock: Clock,
    tenant_id: str,
    service_id: str,
    start: datetime | None,
    end: datetime | None,
    reason: str,
    *,
    ingest_state: IngestState | None = None,
) -> MaintenanceWindow:
    if start is None:
        raise InvalidArgument.field("maintenance_window.start_time", "is required")
    if end is None:
        raise InvalidArgument.field("maintenance_window.end_time", "is required")
    if end <= start:
        raise InvalidArgument.field("maintenance_window.end_time", "must be after start_time")

    async def work(session: AsyncSession) -> MaintenanceWindow:
        await get_service(session, tenant_id, service_id)
        window = MaintenanceWindow(
            id=uuid7(),
            tenant_id=tenant_id,
            service_id=service_id,
            start_at=start,
            end_at=end,
            reason=reason,
            created_at=clock.now(),
        )
        session.add(window)
        return window

    window = await retrying_write(sessions, work)
    await _windows_changed(ingest_state, window.service_id)
    return window


async def list_maintenance_windows(
    sessions: async_sessionmaker[AsyncSession],
    clock: Clock,
    tenant_id: str,
    service_id: str,
    include_past: bool,
) -> list[MaintenanceWindow]:
    async with sessions() as session:
        await get_service(session, tenant_id, service_id)
        query = select(MaintenanceWindow).where(MaintenanceWindow.service_id == service_id)
        if not include_past:
            query = query.where(MaintenanceWindow.end_at > clock.now())
        return list((await session.scalars(query.order_by(MaintenanceWindow.start_at))).all())


async def list_service_events(
    sessions: async_sessionmaker[AsyncSession],
    tenant_id: str,
    service_id: str,
    page_size: int,
    before: str | None,
) -> list[ServiceEvent]:
    """The service's change events, newest first, older than ``before`` (an event id); another
    tenant's service answers NOT_FOUND."""
    async with sessions() as session:
        await get_service(session, tenant_id, service_id)
        query = select(ServiceEvent).where(
            ServiceEvent.tenant_id == tenant_id, ServiceEvent.service_id == service_id
        )
        if before is not None:
            query = query.where(ServiceEvent.id < before)
        query = query.order_by(ServiceEvent.id.desc()).limit(page_size)
        return list((await session.scalars(query)).all())


async def delete_maintenance_window(
    sessions: async_sessionmaker[AsyncSession],
    tenant_id: str,
    window_id: str,
    *,
    ingest_state: IngestState | None = None,
) -> str:
    """Delete a window; returns the service it belonged to."""

    async def work(session: AsyncSession) -> str:
        window = await session.get(MaintenanceWindow, window_id) if is_valid_id(window_id) else None
        if window is None or window.tenant_id != tenant_id:
            raise NotFound(f"maintenance window {window_id!r} not found")
        await session.delete(window)
        return window.service_id

    service_id = await retrying_write(sessions, work)
    await _windows_changed(ingest_state, service_id)
    return service_id


async def _windows_changed(ingest_state: IngestState | None, service_id: str) -> None:
    if ingest_state is not None:
        # Shielded: a caller that hangs up now must not leave every writer's copy stale.
        await asyncio.shield(ingest_state.windows_changed(service_id))


async def _check_policy(session: AsyncSession, tenant_id: str, spec: ServiceFields) -> None:
    """A service may only name an escalation policy of its own tenant (held until the write commits)."""
    if spec.escalation_policy_id:
        await check_policy_reference(
            session, tenant_id, spec.escalation_policy_id, "service.escalation_policy_id"
        )


def _values(spec: ServiceFields) -> dict[str, Any]:
    return {f.name: getattr(spec, f.name) for f in fields(ServiceFields)}
