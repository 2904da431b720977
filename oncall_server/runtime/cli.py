"""``oncall-server``: run the server, migrate, and bootstrap tenants, services and keys."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable

import grpc

from oncall_server import __version__
from oncall_server.configuration import services
from oncall_server.errors import OncallError
from oncall_server.ingest.integrations import CACHE_SECONDS
from oncall_server.runtime.commands import api, bus, catalog, server, tenants


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
    serve.set_defaults(handler=server.run)

    sub.add_parser("migrate", parents=[common], help="create or upgrade the schema").set_defaults(
        handler=server.migrate_schema
    )

    boot = sub.add_parser(
        "bootstrap", parents=[common], help="tenant + service + webhook integration + API token"
    )
    boot.add_argument("--tenant", default="demo")
    boot.add_argument("--service", default="Default Service")
    boot.add_argument("--integration", default="Generic Webhook")
    boot.set_defaults(handler=catalog.bootstrap)

    tenant = sub.add_parser("tenant", help="tenants").add_subparsers(dest="action", required=True)
    tenant_create = tenant.add_parser("create", parents=[common], help="a new tenant (an MSP client)")
    tenant_create.add_argument("name")
    tenant_create.set_defaults(handler=tenants.create)
    tenant.add_parser("list", parents=[common], help="every tenant, with its status").set_defaults(
        handler=tenants.list_all
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
    tenant_deactivate.set_defaults(handler=tenants.deactivate)
    tenant_activate = tenant.add_parser(
        "activate", parents=[common], help="accept a deactivated tenant's tokens and keys again"
    )
    tenant_activate.add_argument("name", help="tenant id or name")
    tenant_activate.set_defaults(handler=tenants.activate)
    tenant_delete = tenant.add_parser(
        "delete", parents=[common], help="delete a deactivated tenant and all its data, for good"
    )
    tenant_delete.add_argument("name", help="tenant id or name")
    tenant_delete.add_argument("--yes", action="store_true", help="really delete (else: list what would go)")
    tenant_delete.set_defaults(handler=tenants.delete)

    token = sub.add_parser("token", help="admin API tokens").add_subparsers(dest="action", required=True)
    token_create = token.add_parser("create", parents=[common], help="a new admin API token, shown once")
    token_create.add_argument("--tenant", required=True, help="tenant id or name")
    token_create.add_argument("--name", default="admin")
    token_create.set_defaults(handler=tenants.create_token)

    service = sub.add_parser("service", help="services").add_subparsers(dest="action", required=True)
    service_create = service.add_parser("create", parents=[common], help="a new service")
    service_create.add_argument("name")
    service_create.add_argument("--tenant", required=True, help="tenant id or name")
    service_create.add_argument("--criticality", default="high", choices=services.CRITICALITIES)
    service_create.add_argument("--alert-grouping", default="none", choices=services.GROUPINGS)
    service_create.add_argument("--alert-grouping-timeout-minutes", type=int, default=0)
    service_create.set_defaults(handler=catalog.create_service)

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
    integration_create.set_defaults(handler=catalog.create_integration)

    incidents = sub.add_parser("incidents", help="incidents, via the gRPC API").add_subparsers(
        dest="action", required=True
    )
    incidents_list = incidents.add_parser("list")
    incidents_list.add_argument("--token", required=True, help="API token (from bootstrap)")
    incidents_list.add_argument("--target", default="127.0.0.1:50051", help="gRPC address")
    incidents_list.add_argument("--status", default="", choices=api.INCIDENT_STATUSES)
    incidents_list.add_argument("--limit", type=int, default=20)
    incidents_list.add_argument("--json", action="store_true")
    incidents_list.set_defaults(handler=api.list_incidents)

    sub.add_parser("plugins", help="list loaded plugins").set_defaults(handler=server.list_plugins)

    bus_common = argparse.ArgumentParser(add_help=False, parents=[common])
    bus_common.add_argument("--redis-url", help="Redis URL (default: the embedded Redis of --data-dir)")
    bus_cmd = sub.add_parser("bus", help="the event bus").add_subparsers(dest="action", required=True)
    publish = bus_cmd.add_parser("publish", parents=[bus_common], help="publish one event")
    publish.add_argument("source", help="rmm, security, backups or psa")
    publish.add_argument("payload", help="the event as JSON")
    publish.set_defaults(handler=bus.publish)
    dead = bus_cmd.add_parser("dead-letters", parents=[bus_common], help="list dead-lettered messages")
    dead.add_argument("--limit", type=int, default=100)
    dead.set_defaults(handler=bus.dead_letters)
    replay = bus_cmd.add_parser("replay", parents=[bus_common], help="put a dead letter back on its stream")
    replay.add_argument("id", help="dead letter id (from dead-letters)")
    replay.set_defaults(handler=bus.replay)
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


def _run(coro: Awaitable[int]) -> int:
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


if __name__ == "__main__":
    raise SystemExit(main())
