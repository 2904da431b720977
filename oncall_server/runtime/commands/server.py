"""Running the server, upgrading its schema, and listing the plugins it would load."""

from __future__ import annotations

import argparse
import logging
import sys

from oncall_server.runtime.commands import migrated_engine, settings_of
from oncall_server.runtime.workers import WorkerExited
from oncall_server.storage import migrate


async def run(args: argparse.Namespace) -> int:
    from oncall_server.runtime.server import serve

    settings = settings_of(args)
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


async def migrate_schema(args: argparse.Namespace) -> int:
    async with migrated_engine(args) as engine:
        print(f"schema at revision {await migrate.current_revision(engine)}")
    return 0


async def list_plugins(args: argparse.Namespace) -> int:
    from oncall_server.plugins import Plugins

    plugins = Plugins(settings=settings_of(args)).load()
    for info in plugins.loaded:
        print(f"{info.name:24} {info.distribution} {info.version}")
    print("adapters: " + ", ".join(sorted(plugins.adapters)))
    print("notification channels: " + ", ".join(sorted(plugins.channels)))
    return 0
