"""Tenant lifecycle (create, list, deactivate, activate, delete) and admin API tokens."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from oncall_server.clock import Clock
from oncall_server.configuration import tenants
from oncall_server.errors import OncallError
from oncall_server.ingest.integrations import CACHE_SECONDS
from oncall_server.runtime.commands import Sessions, admin_command, emit


@admin_command
async def create(args: argparse.Namespace, sessions: Sessions, clock: Clock) -> int:
    tenant = await tenants.create_tenant(sessions, clock, args.name)
    emit(args, {"tenant_id": tenant.id, "name": tenant.name})
    return 0


@admin_command
async def list_all(args: argparse.Namespace, sessions: Sessions, clock: Clock) -> int:
    described = [tenants.describe(t) for t in await tenants.list_tenants(sessions)]
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    print(f"{'ID':36}  {'STATUS':11}  NAME")
    for tenant in described:
        print(f"{tenant['tenant_id']:36}  {tenant['status']:11}  {tenant['name']}")
    return 0


@admin_command
async def deactivate(args: argparse.Namespace, sessions: Sessions, clock: Clock) -> int:
    """Tokens and keys refused, escalations stopped; then, once every server's key cache has
    expired, stop whatever an alert accepted with a cached key started meanwhile."""
    tenant, stopped = await tenants.deactivate_tenant(sessions, clock, args.name)
    if args.wait > 0:
        print(
            f"tenant {tenant.name!r} deactivated; waiting {args.wait:g}s for running servers' "
            "integration-key caches to expire...",
            file=sys.stderr,
        )
        await asyncio.sleep(args.wait)
        stopped += await tenants.stop_paging(sessions, clock, tenant.id, "tenant deactivated")
    emit(args, {**tenants.describe(tenant), "escalations_stopped": stopped})
    return 0


@admin_command
async def activate(args: argparse.Namespace, sessions: Sessions, clock: Clock) -> int:
    emit(args, tenants.describe(await tenants.activate_tenant(sessions, args.name)))
    return 0


@admin_command
async def delete(args: argparse.Namespace, sessions: Sessions, clock: Clock) -> int:
    """Every row of a deactivated tenant, for good; without --yes only says what would go."""
    tenant = await tenants.find_tenant(sessions, args.name)
    if tenant.deactivated_at is None:
        raise OncallError(
            f"tenant {tenant.name!r} is active; deactivate it first (oncall-server tenant deactivate)"
        )
    if not args.yes:
        rows = await tenants.tenant_contents(sessions, tenant.id)
        listed = ", ".join(f"{count} {table}" for table, count in rows.items()) or "no rows"
        print(
            f"tenant {tenant.name!r} ({tenant.id}) has {listed}; "
            "run again with --yes to delete the tenant and all of them for good",
            file=sys.stderr,
        )
        return 1
    deleted = await tenants.delete_tenant(sessions, clock, tenant.id, key_cache_seconds=CACHE_SECONDS)
    emit(args, {"tenant_id": tenant.id, "name": tenant.name, "deleted": deleted})
    return 0


@admin_command
async def create_token(args: argparse.Namespace, sessions: Sessions, clock: Clock) -> int:
    tenant = await tenants.find_tenant(sessions, args.tenant)
    secret, token = await tenants.create_api_token(sessions, clock, tenant.id, args.name)
    emit(args, {"token_id": token.id, "tenant_id": tenant.id, "api_token": secret})
    return 0
