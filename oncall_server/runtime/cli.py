"""``oncall-server``: run the server, migrate, and bootstrap tenants, services and keys."""

from __future__ import annotations

import os
import sys

if sys.argv[1:2] == ["incidents"]:
    # Before gRPC is imported: its core's own log lines (a failed TLS handshake is logged at INFO)
    # would break the API commands' one-line errors. GRPC_VERBOSITY set by the caller wins.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import argparse
import asyncio
from collections.abc import Awaitable
from typing import Any

import grpc

from oncall_server import __version__
from oncall_server.errors import OncallError
from oncall_server.runtime.commands import api, incidents


def build_parser() -> argparse.ArgumentParser:
    # Imported here, not above: `incidents ...` (main() builds only its parser) starts faster.
    from oncall_server.configuration import services
    from oncall_server.ingest.integrations import CACHE_SECONDS
    from oncall_server.runtime.commands import bus, catalog, server, tenants

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

    _add_incident_commands(sub)

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


def _add_incident_commands(sub: Any) -> None:
    """``incidents ...``: the night shift's commands through the gRPC API (docs/cli.md)."""
    client = argparse.ArgumentParser(add_help=False)
    api.add_client_arguments(client)
    client.set_defaults(api_client=True)
    actions = sub.add_parser(
        "incidents", help="list, show, acknowledge, resolve, reassign, note and watch incidents (gRPC API)"
    ).add_subparsers(dest="action", required=True)

    listing = actions.add_parser("list", parents=[client], help="incidents, newest first")
    listing.add_argument("--status", choices=incidents.INCIDENT_STATUSES)
    listing.add_argument("--service", help="service id")
    listing.add_argument("--severity", choices=incidents.SEVERITIES)
    listing.add_argument("--source", help="source system of the first alert (e.g. defend)")
    listing.add_argument("--limit", type=int, default=20, help="most incidents to print (default 20)")
    listing.set_defaults(handler=incidents.list_incidents)

    show = actions.add_parser("show", parents=[client], help="one incident, its alerts and timeline")
    show.add_argument("id", help="incident id")
    show.add_argument("--alerts", action="store_true", help="its alerts")
    show.add_argument("--raw", action="store_true", help="its alerts with their raw JSON payloads")
    show.add_argument("--timeline", action="store_true", help="its timeline, oldest first")
    show.set_defaults(handler=incidents.show)

    for name, handler, what in (
        ("ack", incidents.acknowledge, "acknowledge: escalation stops"),
        ("unack", incidents.unacknowledge, "withdraw the acknowledgement: escalation restarts"),
    ):
        act = actions.add_parser(name, parents=[client], help=what)
        act.add_argument("id", help="incident id")
        act.set_defaults(handler=handler)
    resolve = actions.add_parser("resolve", parents=[client], help="resolve the incident and its alerts")
    resolve.add_argument("id", help="incident id")
    resolve.add_argument("--summary", help="resolution summary")
    resolve.set_defaults(handler=incidents.resolve)
    reassign = actions.add_parser("reassign", parents=[client], help="assign to a user, who is paged")
    reassign.add_argument("id", help="incident id")
    reassign.add_argument("--to", required=True, metavar="USER", help="user id or email")
    reassign.set_defaults(handler=incidents.reassign)
    note = actions.add_parser("note", parents=[client], help="add a note to the timeline")
    note.add_argument("id", help="incident id")
    note.add_argument("text", help="the note")
    note.set_defaults(handler=incidents.note)
    watch = actions.add_parser("watch", parents=[client], help="one line per change, until Ctrl-C")
    watch.add_argument("--service", help="only this service's incidents")
    watch.set_defaults(handler=incidents.watch)


def build_incidents_parser() -> argparse.ArgumentParser:
    """Only ``incidents ...``, for a quick start: the other commands' modules load the database layer."""
    parser = argparse.ArgumentParser(prog="oncall-server", description=__doc__)
    _add_incident_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_incidents_parser() if argv[:1] == ["incidents"] else build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args.handler(args))
    except OncallError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    except api.CliError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except grpc.aio.AioRpcError as error:  # the server's answer to an API command, said plainly
        print(f"error: {api.describe(error)}", file=sys.stderr)
        return api.exit_code_of(error)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        sys.stderr.close()
        return 0
    except Exception as error:
        if not getattr(args, "api_client", False):
            raise
        # An API command says what went wrong in one line, never with a traceback.
        print(f"error: {type(error).__name__}: {' '.join(str(error).split())}", file=sys.stderr)
        return api.EXIT_OTHER


def _run(coro: Awaitable[int]) -> int:
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


if __name__ == "__main__":
    raise SystemExit(main())
