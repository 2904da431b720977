"""Services and integrations, and ``bootstrap``: everything a first alert needs, in one go."""

from __future__ import annotations

import argparse

from oncall_server.clock import Clock
from oncall_server.configuration import escalation_policies, services, tenants, users
from oncall_server.errors import OncallError
from oncall_server.ingest.integrations import Integrations
from oncall_server.plugins import Plugins
from oncall_server.runtime.commands import Sessions, admin_command, emit
from oncall_server.storage.models import Service

BOOTSTRAP_EMAIL = "oncall@bootstrap.invalid"


@admin_command
async def create_service(args: argparse.Namespace, sessions: Sessions, clock: Clock) -> int:
    tenant = await tenants.find_tenant(sessions, args.tenant)
    spec = services.ServiceFields(
        name=args.name,
        criticality=args.criticality,
        alert_grouping=args.alert_grouping,
        alert_grouping_timeout_minutes=args.alert_grouping_timeout_minutes,
    )
    service = await services.create_service(sessions, clock, tenant.id, spec)
    emit(args, {"service_id": service.id, "name": service.name})
    return 0


@admin_command
async def create_integration(args: argparse.Namespace, sessions: Sessions, clock: Clock) -> int:
    tenant = await tenants.find_tenant(sessions, args.tenant)
    # Refuses a type no loaded plugin provides (INVALID_ARGUMENT naming integration.type).
    integration, key = await Integrations(sessions, clock, Plugins().load()).create(
        tenant.id, args.service, args.name, args.type, []
    )
    emit(args, {"integration_id": integration.id, "integration_key": key})
    return 0


@admin_command
async def bootstrap(args: argparse.Namespace, sessions: Sessions, clock: Clock) -> int:
    """Tenant, service, webhook integration and API token in one go, reusing names that exist."""
    try:
        tenant = await tenants.find_tenant(sessions, args.tenant)
    except OncallError:
        tenant = await tenants.create_tenant(sessions, clock, args.tenant)
    if tenant.deactivated_at is not None:  # before creating anything: its keys would not work
        raise OncallError(
            f"tenant {tenant.name!r} is deactivated; activate it first (oncall-server tenant activate)"
        )
    existing = await services.list_services(sessions, tenant.id, 1000, None)
    service = next((s for s in existing if s.name == args.service), None)
    if service is None:
        service = await services.create_service(
            sessions, clock, tenant.id, services.ServiceFields(name=args.service)
        )
    if not service.escalation_policy_id:
        service = await _first_policy(sessions, clock, tenant.id, service.id)
    integration, key = await Integrations(sessions, clock, Plugins().load()).create(
        tenant.id, service.id, args.integration, "webhook", []
    )
    secret, _ = await tenants.create_api_token(sessions, clock, tenant.id, "bootstrap")
    emit(
        args,
        {
            "tenant_id": tenant.id,
            "service_id": service.id,
            "escalation_policy_id": service.escalation_policy_id or "",
            "integration_id": integration.id,
            "integration_key": key,
            "api_token": secret,
        },
    )
    return 0


async def _first_policy(sessions: Sessions, clock: Clock, tenant_id: str, service_id: str) -> Service:
    """So the first incident pages someone: an "On-call" user paged to the server log, in a policy."""
    records = await users.list_users(sessions, tenant_id, 1000, None)
    user = next((u.user for u in records if u.user.email == BOOTSTRAP_EMAIL), None)
    if user is None:
        user = (
            await users.create_user(
                sessions, clock, tenant_id, users.UserFields(name="On-call", email=BOOTSTRAP_EMAIL)
            )
        ).user
        await users.add_contact_method(
            sessions,
            clock,
            Plugins().load(),
            tenant_id,
            user.id,
            users.ContactMethodFields(type="log", address="server log"),
        )
    policy = await escalation_policies.create_policy(
        sessions,
        clock,
        tenant_id,
        escalation_policies.PolicySpec(
            name=f"Default for {service_id[-8:]}",
            description="Created by bootstrap: pages the On-call user in the server log.",
            tiers=[escalation_policies.TierSpec(300, [escalation_policies.TargetSpec("user", user.id)])],
        ),
    )
    return await services.update_service(
        sessions, clock, tenant_id, service_id, {"escalation_policy_id": policy.id}
    )
