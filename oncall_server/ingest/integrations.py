"""Integrations: alert sources, their keys and routing rules.

The ingest path resolves a key on every request, so resolved keys are cached
in process for a few seconds. Changes made through this process invalidate
its cache at once; other replicas see them within ``CACHE_SECONDS``.

An integration's type names the adapter that parses its alerts: creation
refuses a type no loaded plugin provides, and alerts for an integration whose
plugin was removed or blocked since are refused (:class:`~oncall_server.plugins.NoAdapter`,
422 / ``FAILED_PRECONDITION``), logged once per integration and counted in
``oncall_ingest_refused_no_adapter_total``.

An integration may carry a field mapping (:mod:`oncall_server.ingest.field_mapping`): validated
when saved, compiled once per cached context, applied after its adapter on every alert.
:meth:`Integrations.test_field_mapping` shows what a sample payload would become, storing nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oncall_server import failures, json_codec, security
from oncall_server.clock import Clock
from oncall_server.configuration.services import get_service, grouping_window_ms
from oncall_server.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from oncall_server.hookspecs import AdapterContext
from oncall_server.ids import is_valid_id, uuid7
from oncall_server.ingest import validation
from oncall_server.ingest.field_mapping import FieldMapping, compile_mapping, parse_mapping
from oncall_server.ingest.model import NormalizedEvent
from oncall_server.ingest.routing_rules import RoutingRule, parse_rules, rules_to_json
from oncall_server.plugins import NoAdapter, Plugins
from oncall_server.storage.engine import retrying_write
from oncall_server.storage.models import Integration, Service, Tenant

log = logging.getLogger(__name__)
KEY_PREFIX = "oci_"
CACHE_SECONDS = 5.0
_CACHE_LIMIT = 10_000
NO_ADAPTER_REFUSALS = Counter(
    "oncall_ingest_refused_no_adapter_total",
    "Ingest requests refused because the integration's type is provided by no loaded plugin.",
    ["integration_type"],
)


@dataclass(frozen=True, slots=True)
class IntegrationContext:
    """Everything the ingest path needs to know about the key it was given."""

    integration_id: str
    tenant_id: str
    service_id: str
    name: str
    type: str
    routing_rules: tuple[RoutingRule, ...]
    grouping_window_ms: int
    key_digest: str = ""
    field_mapping: FieldMapping | None = None  # compiled once per cached context


class Integrations:
    """Integration CRUD and key resolution for one process."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], clock: Clock, plugins: Plugins) -> None:
        self.sessions = sessions
        self.clock = clock
        self.plugins = plugins  # their adapters decide which integration types exist
        self._cache: dict[str, tuple[float, IntegrationContext]] = {}
        self._warned_no_adapter: set[str] = set()

    def _check_adapter(self, context: IntegrationContext) -> IntegrationContext:
        """The context, unless no loaded plugin parses its type: then NoAdapter, logged once."""
        if context.type in self.plugins.adapters:
            return context
        NO_ADAPTER_REFUSALS.labels(context.type).inc()
        if context.integration_id not in self._warned_no_adapter:
            self._warned_no_adapter.add(context.integration_id)
            log.warning(
                "integration %s (%r, tenant %s) has type %r, which no loaded plugin provides "
                "(loaded: %s); its alerts are refused until a plugin providing it is installed "
                "or unblocked (ONCALL_BLOCK_PLUGINS)",
                context.integration_id,
                context.name,
                context.tenant_id,
                context.type,
                self.plugins.adapter_types_text(),
            )
        raise NoAdapter(
            f"integration {context.name!r} has type {context.type!r}, which no loaded plugin provides; "
            "its alerts cannot be parsed until the operator installs or unblocks that plugin"
        )

    async def resolve_key(self, key: str | None) -> IntegrationContext:
        """The integration a key belongs to; UNAUTHENTICATED for a missing or unknown key, and for
        the key of a deactivated or deleted tenant (a key this process resolved less than
        ``CACHE_SECONDS`` ago keeps working until its cache entry expires)."""
        if not key:
            raise Unauthenticated("an integration key is required (?key=... or the X-Integration-Key header)")
        wanted = security.digest(key)
        cached = self._cache.get(wanted)
        if cached and cached[0] > time.monotonic():
            return self._check_adapter(cached[1])
        context = await self._load_context(Integration.key_digest == wanted)
        if context is None or not security.matches(key, context.key_digest):
            raise Unauthenticated("unknown integration key")
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[wanted] = (time.monotonic() + CACHE_SECONDS, context)
        return self._check_adapter(context)

    async def context_of(self, integration_id: str) -> IntegrationContext:
        """The context of an integration found by id (internal callers that route by tenant)."""
        context = await self._load_context(Integration.id == integration_id)
        if context is None:
            raise NotFound(f"integration {integration_id!r} not found")
        return self._check_adapter(context)

    async def for_tenant(self, tenant_id: str, integration_type: str) -> IntegrationContext:
        """The tenant's (oldest) integration of a type: how internal sources route by ``tenant_id``."""
        if is_valid_id(tenant_id):
            async with self.sessions() as session:
                found = (
                    await session.execute(
                        select(Integration.id, Tenant.deactivated_at)
                        .join(Tenant, Tenant.id == Integration.tenant_id)
                        .where(
                            Integration.tenant_id == tenant_id,
                            Integration.type == integration_type,
                            Integration.deleted_at.is_(None),
                        )
                        .order_by(Integration.id)
                        .limit(1)
                    )
                ).first()
            if found is not None:
                if found.deactivated_at is not None:
                    raise FailedPrecondition(f"tenant {tenant_id!r} is deactivated")
                return await self.context_of(found.id)
        log.warning("no %s integration for tenant %r", integration_type, tenant_id)
        raise NotFound(f"tenant {tenant_id!r} has no {integration_type} integration")

    async def _load_context(self, where: Any) -> IntegrationContext | None:
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(Integration, Service)
                    .join(Service, Service.id == Integration.service_id)
                    .join(Tenant, Tenant.id == Integration.tenant_id)
                    .where(where, Integration.deleted_at.is_(None), Tenant.deactivated_at.is_(None))
                )
            ).first()
        if row is None:
            return None
        integration, service = row
        return IntegrationContext(
            integration.id,
            integration.tenant_id,
            integration.service_id,
            integration.name,
            integration.type,
            tuple(parse_rules(integration.routing_rules)),
            grouping_window_ms(service),
            integration.key_digest or "",
            compile_mapping(integration.field_mapping),
        )

    def forget_cached(self) -> None:
        """Drop every cached key (after a change made through this process)."""
        self._cache.clear()

    async def create(
        self,
        tenant_id: str,
        service_id: str,
        name: str,
        type_: str,
        routing_rules: Any,
        field_mapping: Any = None,
    ) -> tuple[Integration, str]:
        """A new integration and its key, shown only now."""
        name = json_codec.check_name(name, "integration.name")
        type_ = type_.strip() or "webhook"
        self.plugins.check_adapter_type(type_)
        rules = rules_to_json(parse_rules(routing_rules or []))
        mapping = parse_mapping(field_mapping, "integration.field_mapping")
        key = security.new_secret(KEY_PREFIX)
        now = self.clock.now()

        async def work(session: AsyncSession) -> Integration:
            await get_service(session, tenant_id, service_id)
            integration = Integration(
                id=uuid7(),
                tenant_id=tenant_id,
                service_id=service_id,
                name=name,
                type=type_,
                key_digest=security.digest(key),
                key_prefix=security.display_prefix(key),
                routing_rules=rules,
                field_mapping=mapping,
                created_at=now,
                updated_at=now,
            )
            session.add(integration)
            return integration

        try:
            integration = await retrying_write(self.sessions, work)
        except IntegrityError as exc:
            raise failures.integrity_error(
                exc,
                taken="integration key collision; retry",
                missing="the tenant or service is gone (deleted meanwhile)",
            ) from None
        return integration, key

    async def get(self, tenant_id: str, integration_id: str) -> Integration:
        async with self.sessions() as session:
            return await self._get(session, tenant_id, integration_id)

    async def _get(self, session: AsyncSession, tenant_id: str, integration_id: str) -> Integration:
        integration = await session.get(Integration, integration_id) if is_valid_id(integration_id) else None
        if integration is None or integration.tenant_id != tenant_id or integration.deleted_at is not None:
            raise NotFound(f"integration {integration_id!r} not found")
        return integration

    async def list_integrations(
        self, tenant_id: str, service_id: str | None, page_size: int, after: str | None
    ) -> list[Integration]:
        query = (
            select(Integration)
            .where(Integration.tenant_id == tenant_id, Integration.deleted_at.is_(None))
            .order_by(Integration.id)
            .limit(page_size)
        )
        if service_id:
            query = query.where(Integration.service_id == service_id)
        if after:
            query = query.where(Integration.id > after)
        async with self.sessions() as session:
            return list((await session.scalars(query)).all())

    async def update(self, tenant_id: str, integration_id: str, changes: dict[str, Any]) -> Integration:
        """Apply ``name``, ``service_id``, ``routing_rules`` and ``field_mapping`` changes (a null or
        empty mapping removes it); invalid input changes nothing."""
        unknown = sorted(set(changes) - {"name", "service_id", "routing_rules", "field_mapping"})
        if unknown:
            raise InvalidArgument.field(
                unknown[0], "cannot be changed (writable: name, service_id, routing_rules, field_mapping)"
            )
        rules = rules_to_json(parse_rules(changes["routing_rules"])) if "routing_rules" in changes else None
        mapping = parse_mapping(changes["field_mapping"]) if "field_mapping" in changes else None

        async def work(session: AsyncSession) -> Integration:
            integration = await self._get(session, tenant_id, integration_id)
            if "name" in changes:
                integration.name = json_codec.check_name(changes["name"], "integration.name")
            if "service_id" in changes:
                await get_service(session, tenant_id, str(changes["service_id"]))
                integration.service_id = str(changes["service_id"])
            if rules is not None:
                integration.routing_rules = rules
            if "field_mapping" in changes:
                integration.field_mapping = mapping
            integration.updated_at = self.clock.now()
            return integration

        integration = await retrying_write(self.sessions, work)
        self.forget_cached()
        return integration

    async def test_field_mapping(
        self,
        tenant_id: str,
        integration_id: str,
        integration_type: str,
        field_mapping: Any,
        sample: Any,
        *,
        use_stored: bool,
    ) -> tuple[list[NormalizedEvent], list[str]]:
        """What ``sample`` (decoded JSON) would become: the events as the pipeline would store them
        (routing rules aside) and notes on mapped fields that kept the adapter's value. Nothing is
        stored. The integration, when given, supplies the adapter and, with ``use_stored``, the
        mapping; else ``integration_type`` (default webhook) does."""
        name = "Test"
        if integration_id:
            integration = await self.get(tenant_id, integration_id)
            name, integration_type = integration.name, integration.type
            if use_stored:
                field_mapping = integration.field_mapping
        integration_type = integration_type.strip() or "webhook"
        self.plugins.check_adapter_type(integration_type)
        if use_stored and integration_id:
            mapping = compile_mapping(field_mapping)
        else:
            mapping = compile_mapping(parse_mapping(field_mapping))
        adapter = self.plugins.adapter(integration_type)
        context = AdapterContext(name, integration_type, {})
        notes: list[str] = []
        if mapping is None:
            events = adapter.parse(sample, context)
        else:
            events = mapping.normalize(adapter, sample, context, notes)
        paths = (
            ["sample_payload"] if len(events) == 1 else [f"sample_payload[{i}]" for i in range(len(events))]
        )
        for event, path in zip(events, paths, strict=True):
            event.raw_payload = ""  # the caller has the sample; an answer need not echo it
            validation.check_event(event, path)
        return events, notes

    async def delete(self, tenant_id: str, integration_id: str) -> None:
        """Soft delete: the key stops working, past alerts keep their integration."""

        async def work(session: AsyncSession) -> None:
            integration = await self._get(session, tenant_id, integration_id)
            integration.deleted_at = self.clock.now()
            integration.key_digest = None

        await retrying_write(self.sessions, work)
        self.forget_cached()

    async def rotate_key(self, tenant_id: str, integration_id: str) -> tuple[Integration, str]:
        key = security.new_secret(KEY_PREFIX)

        async def work(session: AsyncSession) -> Integration:
            integration = await self._get(session, tenant_id, integration_id)
            integration.key_digest = security.digest(key)
            integration.key_prefix = security.display_prefix(key)
            integration.updated_at = self.clock.now()
            return integration

        integration = await retrying_write(self.sessions, work)
        self.forget_cached()
        return integration, key
