"""``oncall-server``: run the server, migrate, and bootstrap tenants, services and keys."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from oncall_server import __version__
from oncall_server.clock import SystemClock
from oncall_server.configuration import escalation_policies, services, tenants, users
from oncall_server.errors import OncallError
from oncall_server.ingest.integrations import CACHE_SECONDS, Integrations
from oncall_server.plugins import Plugins
from oncall_server.runtime.settings import Settings
from oncall_server.runtime.workers import WorkerExited
from oncall_server.storage import migrate
from oncall_server.storage.engine import create_engine, session_factory


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in (
        "data_dir",
        "database_url",
        "redis_url",
        "grpc_listen",
        "http_listen",
        "roles",
        "log_level",
        "workers",
    ):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)


def _run(coro: Awaitable[int]) -> int:
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


async def _cmd_serve(args: argparse.Namespace) -> int:
    from oncall_server.runtime.server import serve

    settings = _settings(args)
    process = " [%(process)d]" if settings.workers > 1 else ""
    logging.basicConfig(
        level=settings.log_level, format=f"%(asctime)s %(levelname)s{process} %(name)s: %(message)s"
    )
    try:
        await serve(settings, worker_of=args.worker_of)
    except WorkerExited as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (RuntimeError, OSError) as exc:  # a port in use, a data directory in use, no Redis binary
        message = str(exc).split(";")[0]
        print(f"error: cannot start: {message}", file=sys.stderr)
        if "bind" in message.lower() or "address" in message.lower():
            print(
                "hint: another server may be running; choose --grpc-listen / --http-listen", file=sys.stderr
            )
        return 1
    return 0


async def _with_db(args: argparse.Namespace, work: Callable[..., Awaitable[int]]) -> int:
    """Admin commands touch SQL only, so they also work while the server runs."""
    settings = _settings(args)
    engine = create_engine(settings.resolved_database_url, sqlite_driver=settings.sqlite_driver)
    try:
        await migrate.upgrade(engine)
        return await work(session_factory(engine), SystemClock())
    finally:
        await engine.dispose()


async def _cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    engine = create_engine(settings.resolved_database_url, sqlite_driver=settings.sqlite_driver)
    try:
        await migrate.upgrade(engine)
        print(f"schema at revision {await migrate.current_revision(engine)}")
    finally:
        await engine.dispose()
    return 0


def _emit(args: argparse.Namespace, data: dict[str, Any]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            print(f"{key}: {value}")


async def _cmd_tenant_create(args: argparse.Namespace) -> int:
    async def work(sessions: Any, clock: Any) -> int:
        tenant = await tenants.create_tenant(sessions, clock, args.name)
        _emit(args, {"tenant_id": tenant.id, "name": tenant.name})
        return 0

    return await _with_db(args, work)


async def _cmd_tenant_list(args: argparse.Namespace) -> int:
    async def work(sessions: Any, clock: Any) -> int:
        described = [tenants.describe(t) for t in await tenants.list_tenants(sessions)]
        if args.json:
            print(json.dumps(described, indent=2))
            return 0
        print(f"{'ID':36}  {'STATUS':11}  NAME")
        for tenant in described:
            print(f"{tenant['tenant_id']:36}  {tenant['status']:11}  {tenant['name']}")
        return 0

    return await _with_db(args, work)


async def _cmd_tenant_deactivate(args: argparse.Namespace) -> int:
    """Tokens and keys refused, escalations stopped; then, once every server's key cache has
    expired, stop whatever an alert accepted with a cached key started meanwhile."""

    async def work(sessions: Any, clock: Any) -> int:
        tenant, stopped = await tenants.deactivate_tenant(sessions, clock, args.name)
        if args.wait > 0:
            print(
                f"tenant {tenant.name!r} deactivated; waiting {args.wait:g}s for running servers' "
                "integration-key caches to expire...",
                file=sys.stderr,
            )
            await asyncio.sleep(args.wait)
            stopped += await tenants.stop_paging(sessions, clock, tenant.id, "tenant deactivated")
        _emit(args, {**tenants.describe(tenant), "escalations_stopped": stopped})
        return 0

    return await _with_db(args, work)


async def _cmd_tenant_activate(args: argparse.Namespace) -> int:
    async def work(sessions: Any, clock: Any) -> int:
        _emit(args, tenants.describe(await tenants.activate_tenant(sessions, args.name)))
        return 0

    return await _with_db(args, work)


async def _cmd_tenant_delete(args: argparse.Namespace) -> int:
    """Every row of a deactivated tenant, for good; without --yes only says what would go."""

    async def work(sessions: Any, clock: Any) -> int:
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
        _emit(args, {"tenant_id": tenant.id, "name": tenant.name, "deleted": deleted})
        return 0

    return await _with_db(args, work)


async def _cmd_token_create(args: argparse.Namespace) -> int:
    async def work(sessions: Any, clock: Any) -> int:
        tenant = await tenants.find_tenant(sessions, args.tenant)
        secret, token = await tenants.create_api_token(sessions, clock, tenant.id, args.name)
        _emit(args, {"token_id": token.id, "tenant_id": tenant.id, "api_token": secret})
        return 0

    return await _with_db(args, work)


async def _cmd_service_create(args: argparse.Namespace) -> int:
    async def work(sessions: Any, clock: Any) -> int:
        tenant = await tenants.find_tenant(sessions, args.tenant)
        spec = services.ServiceFields(
            name=args.name,
            criticality=args.criticality,
            alert_grouping=args.alert_grouping,
            alert_grouping_timeout_minutes=args.alert_grouping_timeout_minutes,
        )
        service = await services.create_service(sessions, clock, tenant.id, spec)
        _emit(args, {"service_id": service.id, "name": service.name})
        return 0

    return await _with_db(args, work)


async def _cmd_integration_create(args: argparse.Namespace) -> int:
    async def work(sessions: Any, clock: Any) -> int:
        tenant = await tenants.find_tenant(sessions, args.tenant)
        # Refuses a type no loaded plugin provides (INVALID_ARGUMENT naming integration.type).
        integration, key = await Integrations(sessions, clock, Plugins().load()).create(
            tenant.id, args.service, args.name, args.type, []
        )
        _emit(args, {"integration_id": integration.id, "integration_key": key})
        return 0

    return await _with_db(args, work)


BOOTSTRAP_EMAIL = "oncall@bootstrap.invalid"


async def _cmd_bootstrap(args: argparse.Namespace) -> int:
    """Tenant, service, webhook integration and API token in one go, reusing names that exist."""

    async def work(sessions: Any, clock: Any) -> int:
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
        _emit(
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

    return await _with_db(args, work)


async def _first_policy(sessions: Any, clock: Any, tenant_id: str, service_id: str) -> Any:
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


async def _cmd_incidents_list(args: argparse.Namespace) -> int:
    """Lists incidents through the generated gRPC stub, as any client would."""
    import grpc

    from oncall_server.api.v1 import alert_pb2, incident_pb2, incident_service_pb2, incident_service_pb2_grpc

    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = incident_service_pb2_grpc.IncidentServiceStub(channel)
        status = {"": 0, "triggered": 1, "acknowledged": 2, "resolved": 3}[args.status]
        response = await stub.ListIncidents(
            incident_service_pb2.ListIncidentsRequest(status=status, page_size=args.limit),  # type: ignore[arg-type]
            metadata=[("authorization", f"Bearer {args.token}")],
        )
    if args.json:
        from google.protobuf import json_format

        print(json_format.MessageToJson(response, preserving_proto_field_name=True))
        return 0
    print(f"{'ID':36}  {'STATUS':12}  {'SEVERITY':8}  {'ALERTS':>6}  TITLE")
    for inc in response.incidents:
        severity = alert_pb2.Severity.Name(inc.severity).removeprefix("SEVERITY_").lower()
        state = incident_pb2.IncidentStatus.Name(inc.status).removeprefix("INCIDENT_STATUS_").lower()
        print(f"{inc.id:36}  {state:12}  {severity:8}  {inc.alert_count:>6}  {inc.title}")
    return 0


@contextlib.asynccontextmanager
async def _bus_redis(args: argparse.Namespace) -> AsyncIterator[Any]:
    """The external Redis, or the embedded one's socket when a local server runs on this data dir."""
    from urllib.parse import quote

    from oncall_server import redis_client

    settings = _settings(args)
    if settings.redis_url:
        redis = redis_client.connect(settings.redis_url, timeout_seconds=settings.redis_timeout_seconds)
    else:
        socket_path = (settings.data_dir / "redis" / "redis.sock").resolve()
        if not socket_path.exists():
            raise OncallError(f"no Redis: set --redis-url, or start the server on {settings.data_dir} first")
        redis = redis_client.connect(
            f"unix://{quote(str(socket_path))}", timeout_seconds=settings.redis_timeout_seconds
        )
    try:
        yield redis
    finally:
        await redis.aclose()


async def _cmd_bus_publish(args: argparse.Namespace) -> int:
    from oncall_server.ingest import bus

    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        raise OncallError(f"payload is not valid JSON: {exc}") from None
    async with _bus_redis(args) as redis:
        message_id = await bus.publish(redis, args.source, payload)
    _emit(args, {"stream": bus.stream_of(args.source), "message_id": message_id})
    return 0


async def _cmd_bus_dead_letters(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from oncall_server.ingest import bus

    async with _bus_redis(args) as redis:
        letters = await bus.dead_letters(redis, args.limit)
    if args.json:
        print(json.dumps([asdict(letter) for letter in letters], indent=2))
    for letter in [] if args.json else letters:
        print(f"{letter.id}  {letter.stream}  {letter.failed_at}  {letter.error}")
    return 0


async def _cmd_bus_replay(args: argparse.Namespace) -> int:
    from oncall_server.ingest import bus

    async with _bus_redis(args) as redis:
        message_id = await bus.replay(redis, args.id)
    _emit(args, {"replayed": args.id, "message_id": message_id})
    return 0


async def _cmd_plugins(args: argparse.Namespace) -> int:
    from oncall_server.plugins import Plugins

    plugins = Plugins(settings=_settings(args)).load()
    for info in plugins.loaded:
        print(f"{info.name:24} {info.distribution} {info.version}")
    print("adapters: " + ", ".join(sorted(plugins.adapters)))
    print("notification channels: " + ", ".join(sorted(plugins.channels)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oncall-server", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="data directory (env ONCALL_DATA_DIR; default ./oncall-data)")
    common.add_argument(
        "--database-url", help="SQLAlchemy URL (env ONCALL_DATABASE_URL; default SQLite in data dir)"
    )
    common.add_argument("--json", action="store_true", help="print JSON")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the server")
    serve.add_argument("--redis-url", help="Redis URL (env ONCALL_REDIS_URL; default: embedded redis-server)")
    serve.add_argument("--grpc-listen", help="host:port (env ONCALL_GRPC_LISTEN; default 127.0.0.1:50051)")
    serve.add_argument("--http-listen", help="host:port (env ONCALL_HTTP_LISTEN; default 127.0.0.1:8080)")
    serve.add_argument("--roles", help="comma-separated roles to run (env ONCALL_ROLES; default all)")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING (env ONCALL_LOG_LEVEL)")
    serve.add_argument(
        "--workers",
        type=int,
        help="processes sharing the ports, to use more cores (env ONCALL_WORKERS; default 1)",
    )
    serve.add_argument("--worker-of", type=int, help=argparse.SUPPRESS)  # set by the first process
    serve.set_defaults(handler=_cmd_serve)

    sub.add_parser("migrate", parents=[common], help="create or upgrade the schema").set_defaults(
        handler=_cmd_migrate
    )

    boot = sub.add_parser(
        "bootstrap", parents=[common], help="tenant + service + webhook integration + API token"
    )
    boot.add_argument("--tenant", default="demo")
    boot.add_argument("--service", default="Default Service")
    boot.add_argument("--integration", default="Generic Webhook")
    boot.set_defaults(handler=_cmd_bootstrap)

    tenant = sub.add_parser("tenant", help="tenants").add_subparsers(dest="action", required=True)
    tenant_create = tenant.add_parser("create", parents=[common], help="a new tenant (an MSP client)")
    tenant_create.add_argument("name")
    tenant_create.set_defaults(handler=_cmd_tenant_create)
    tenant.add_parser("list", parents=[common], help="every tenant, with its status").set_defaults(
        handler=_cmd_tenant_list
    )
    tenant_deactivate = tenant.add_parser(
        "deactivate",
        parents=[common],
        help="refuse the tenant's tokens and keys and stop its escalations (its data stays)",
    )
    tenant_deactivate.add_argument("name", help="tenant id or name")
    tenant_deactivate.add_argument(
        "--wait",
        type=float,
        default=CACHE_SECONDS + 1,
        help="seconds to wait for servers' key caches to expire before stopping escalations "
        f"again (default {CACHE_SECONDS + 1:g})",
    )
    tenant_deactivate.set_defaults(handler=_cmd_tenant_deactivate)
    tenant_activate = tenant.add_parser(
        "activate", parents=[common], help="accept a deactivated tenant's tokens and keys again"
    )
    tenant_activate.add_argument("name", help="tenant id or name")
    tenant_activate.set_defaults(handler=_cmd_tenant_activate)
    tenant_delete = tenant.add_parser(
        "delete", parents=[common], help="delete a deactivated tenant and all its data, for good"
    )
    tenant_delete.add_argument("name", help="tenant id or name")
    tenant_delete.add_argument("--yes", action="store_true", help="really delete (else: list what would go)")
    tenant_delete.set_defaults(handler=_cmd_tenant_delete)

    token = sub.add_parser("token", help="admin API tokens").add_subparsers(dest="action", required=True)
    token_create = token.add_parser("create", parents=[common], help="a new admin API token, shown once")
    token_create.add_argument("--tenant", required=True, help="tenant id or name")
    token_create.add_argument("--name", default="admin")
    token_create.set_defaults(handler=_cmd_token_create)

    service = sub.add_parser("service", help="services").add_subparsers(dest="action", required=True)
    service_create = service.add_parser("create", parents=[common], help="a new service")
    service_create.add_argument("name")
    service_create.add_argument("--tenant", required=True, help="tenant id or name")
    service_create.add_argument("--criticality", default="high", choices=services.CRITICALITIES)
    service_create.add_argument("--alert-grouping", default="none", choices=services.GROUPINGS)
    service_create.add_argument("--alert-grouping-timeout-minutes", type=int, default=0)
    service_create.set_defaults(handler=_cmd_service_create)

    integration = sub.add_parser("integration", help="integrations").add_subparsers(
        dest="action", required=True
    )
    integration_create = integration.add_parser(
        "create", parents=[common], help="a new integration and its key, shown once"
    )
    integration_create.add_argument("name")
    integration_create.add_argument("--tenant", required=True, help="tenant id or name")
    integration_create.add_argument("--service", required=True, help="service id")
    integration_create.add_argument(
        "--type", default="webhook", help="adapter name (default webhook; `oncall-server plugins` lists them)"
    )
    integration_create.set_defaults(handler=_cmd_integration_create)

    incidents = sub.add_parser("incidents", help="incidents, via the gRPC API").add_subparsers(
        dest="action", required=True
    )
    incidents_list = incidents.add_parser("list")
    incidents_list.add_argument("--token", required=True, help="API token (from bootstrap)")
    incidents_list.add_argument("--target", default="127.0.0.1:50051", help="gRPC address")
    incidents_list.add_argument("--status", default="", choices=["", "triggered", "acknowledged", "resolved"])
    incidents_list.add_argument("--limit", type=int, default=20)
    incidents_list.add_argument("--json", action="store_true")
    incidents_list.set_defaults(handler=_cmd_incidents_list)

    sub.add_parser("plugins", help="list loaded plugins").set_defaults(handler=_cmd_plugins)

    bus_common = argparse.ArgumentParser(add_help=False, parents=[common])
    bus_common.add_argument("--redis-url", help="Redis URL (default: the embedded Redis of --data-dir)")
    bus_cmd = sub.add_parser("bus", help="the event bus").add_subparsers(dest="action", required=True)
    publish = bus_cmd.add_parser("publish", parents=[bus_common], help="publish one event")
    publish.add_argument("source", help="rmm, security, backups or psa")
    publish.add_argument("payload", help="the event as JSON")
    publish.set_defaults(handler=_cmd_bus_publish)
    dead = bus_cmd.add_parser("dead-letters", parents=[bus_common], help="list dead-lettered messages")
    dead.add_argument("--limit", type=int, default=100)
    dead.set_defaults(handler=_cmd_bus_dead_letters)
    replay = bus_cmd.add_parser("replay", parents=[bus_common], help="put a dead letter back on its stream")
    replay.add_argument("id", help="dead letter id (from dead-letters)")
    replay.set_defaults(handler=_cmd_bus_replay)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args.handler(args))
    except OncallError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as error:  # the server's answer to an API command, said plainly
        print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
