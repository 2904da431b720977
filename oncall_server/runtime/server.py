"""Runs the enabled roles in one asyncio process and stops them in reverse order.

SIGTERM/SIGINT: report NOT_SERVING (gRPC health, for good), stop accepting, let in-flight requests
finish (up to ``drain_seconds``), flush the ingest writer, close.

With ``ONCALL_TLS_CERT_FILE`` and ``ONCALL_TLS_KEY_FILE`` both listeners serve TLS
(:mod:`oncall_server.runtime.tls`), and SIGHUP reads the certificate and key again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oncall_server.clock import Clock
from oncall_server.faces.grpc.auth import AuthInterceptor
from oncall_server.faces.grpc.interceptor import ErrorInterceptor
from oncall_server.faces.grpc.registry import SERVICE_NAMES, SERVICES, add_services
from oncall_server.faces.grpc.standard import HEALTH_SERVICE_NAME, HealthServicer, enable_server_reflection
from oncall_server.faces.http import connections
from oncall_server.faces.http.gateway import ScrubbingAccessLogger, build_gateway
from oncall_server.ingest.bus import BusConsumer
from oncall_server.runtime import workers
from oncall_server.runtime.app import App
from oncall_server.runtime.readiness import Readiness, Report
from oncall_server.runtime.settings import Settings, split_host_port
from oncall_server.runtime.tls import ServerTls

log = logging.getLogger(__name__)
GC_GEN0_THRESHOLD = 20_000


class Role(Protocol):
    name: str

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class GrpcRole:
    """The gRPC server; its health status ("" and every ``oncall.v1`` service) follows
    :class:`Readiness`, checked every few seconds here and whenever ``/readyz`` asks."""

    name = "grpc"

    def __init__(self, app: App, tls: ServerTls | None = None, readiness: Readiness | None = None) -> None:
        self.app = app
        self.tls = tls
        self.readiness = readiness if readiness is not None else Readiness(app)
        self.health = HealthServicer()
        self._stopping = asyncio.Event()
        self._checking: asyncio.Task[None] | None = None
        self.server = grpc.aio.server(
            # The first is outermost: errors from the auth check are mapped like the handler's.
            interceptors=[
                ErrorInterceptor(),
                AuthInterceptor(app.sessions, [e.descriptor for e in SERVICES]),
            ],
            options=[
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                # Off, so a second server on the port fails loudly; on for sibling workers.
                ("grpc.so_reuseport", 1 if app.settings.workers > 1 else 0),
            ],
        )
        add_services(app, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        enable_server_reflection([*SERVICE_NAMES, HEALTH_SERVICE_NAME], self.server)
        host, port = split_host_port(app.settings.grpc_listen)
        if tls is None:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        else:
            self.port = self.server.add_secure_port(f"{host}:{port}", tls.grpc_credentials())
        if self.port == 0:
            raise RuntimeError(f"cannot listen for gRPC on {app.settings.grpc_listen}")

    async def start(self) -> None:
        self.readiness.subscribe(self._mirror)
        await self.readiness.check()  # the first status is known before the first call
        await self.server.start()
        self._stopping.clear()
        self._checking = asyncio.create_task(self.readiness.run_until(self._stopping), name="readiness")
        log.info("gRPC listening on port %d%s", self.port, " (TLS)" if self.tls else "")

    async def _mirror(self, report: Report) -> None:
        serving = health_pb2.HealthCheckResponse
        status = serving.SERVING if report.ready else serving.NOT_SERVING
        for name in ["", *SERVICE_NAMES]:
            await self.health.set(name, status)  # ignored once shutting down (NOT_SERVING for good)

    async def stop(self) -> None:
        self._stopping.set()
        if self._checking is not None:
            await self._checking  # a check in progress ends within its timeout
            self._checking = None
        self.readiness.unsubscribe(self._mirror)
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace=self.app.settings.drain_seconds)


class GatewayRole:
    name = "gateway"

    def __init__(self, app: App, tls: ServerTls | None = None, readiness: Readiness | None = None) -> None:
        self.app = app
        self.tls = tls
        self.runner = web.AppRunner(
            build_gateway(app, readiness=readiness),
            access_log_class=ScrubbingAccessLogger,
            access_log=logging.getLogger("oncall.access") if app.settings.access_log else None,
            shutdown_timeout=app.settings.drain_seconds,
            **connections.runner_options(app.settings),
        )
        self.listener: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        await self.runner.setup()
        # Connections come through the gateway's guard (header timeout, per-client limit).
        self.listener = await connections.listen(
            self.runner, self.app.settings, self.tls.http_context if self.tls else None
        )
        sockets = self.listener.sockets
        self.port = sockets[0].getsockname()[1] if sockets else 0
        log.info("HTTP gateway listening on port %d%s", self.port, " (HTTPS)" if self.tls else "")

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()  # stop accepting; the runner closes the open connections
        await self.runner.cleanup()


class LoopRole:
    """A background loop (the escalation scheduler, the notification dispatcher) as a role."""

    def __init__(self, name: str, run_forever: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
        self.name = name
        self._run_forever = run_forever
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run_forever(self._stopping), name=self.name)
        log.info("%s running", self.name)

    async def stop(self) -> None:
        """Let the current step finish; its claim stays safe either way (lease + fencing)."""
        if self._task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(self._task, timeout=10)
        except TimeoutError:
            log.warning("%s did not stop in time; cancelled", self.name)
        self._task = None


class Server:
    """The process: the App plus its roles."""

    def __init__(self, app: App, roles: list[Role], tls: ServerTls | None = None) -> None:
        self.app = app
        self.roles = roles
        self.tls = tls
        self._stopping = asyncio.Event()

    @classmethod
    async def create(cls, settings: Settings, *, clock: Clock | None = None) -> Server:
        tls = ServerTls.from_settings(settings)  # refused (TlsError) before anything opens
        app = await App.open(settings, clock=clock)
        roles: list[Role] = []
        try:
            readiness = Readiness(app)  # one for /readyz and the gRPC health status
            if "grpc" in settings.roles:
                roles.append(GrpcRole(app, tls, readiness))
            if "gateway" in settings.roles:
                roles.append(GatewayRole(app, tls, readiness))
            if "bus" in settings.roles:
                roles.append(BusConsumer(app))
            if "scheduler" in settings.roles:
                roles.append(LoopRole("scheduler", app.escalator.run_forever))
            if "notifier" in settings.roles:
                roles.append(LoopRole("notifier", app.dispatcher.run_forever))
        except BaseException:
            await app.close()
            raise
        return cls(app, roles, tls)

    def role(self, name: str) -> Role:
        return next(r for r in self.roles if r.name == name)

    async def start(self) -> None:
        started: list[Role] = []
        try:
            for role in self.roles:
                await role.start()
                started.append(role)
        except BaseException:
            for role in reversed(started):
                await role.stop()
            await self.app.close()
            raise

    async def stop(self) -> None:
        for role in reversed(self.roles):
            try:
                await role.stop()
            except Exception:
                log.exception("stopping %s failed", role.name)
        await self.app.close()

    def request_stop(self) -> None:
        self._stopping.set()

    def reload_tls(self) -> bool:
        """Serve the TLS files' current certificate and key to new connections (SIGHUP); a pair that
        cannot be served is logged and the previous one kept (False). True without TLS."""
        return self.tls.reload() if self.tls is not None else True

    async def run_until_signalled(
        self, on_ready: Callable[[], None] | None = None, *, forward_reload: bool = False
    ) -> None:
        """``forward_reload``: this is the first of several workers; SIGHUP reaches them too."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        if self.tls is not None:  # without TLS, SIGHUP does what it always did
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup, forward_reload)
        await self.start()
        log.info("on-call server ready")
        if on_ready is not None:
            on_ready()
        await self._stopping.wait()
        log.info("shutting down: draining in-flight requests")
        await self.stop()
        log.info("stopped cleanly")

    def _on_sighup(self, forward: bool) -> None:
        log.info("SIGHUP: reloading the TLS certificate and key")
        self.reload_tls()
        if forward:
            for pid in _worker_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGHUP)


def _worker_pids() -> list[int]:
    """This process's workers (``serve --worker-of <this pid>``), from /proc: the worker set keeps
    no list this module can reach. Other children (the embedded redis-server) are left alone."""
    me = str(os.getpid())
    marker = f"\0--worker-of\0{me}\0".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if ppid == me and marker in cmdline + b"\0":
            pids.append(int(entry.name))
    return pids


async def serve(settings: Settings, *, worker_of: int | None = None) -> None:
    """Run until SIGTERM/SIGINT; with ``settings.workers > 1`` this process also starts and
    supervises the other workers (``worker_of`` is set in those)."""
    if worker_of is not None:
        workers.die_with_parent(worker_of)
        await _serve_one(settings, on_ready=lambda: os.kill(worker_of, signal.SIGUSR1))
        return
    ServerTls.from_settings(settings)  # bad TLS settings or files: refused before Redis or workers start
    if settings.workers > 1:
        await workers.serve_with_workers(settings, run_one=functools.partial(_serve_one, forward_reload=True))
    else:
        await _serve_one(settings)


async def _serve_one(
    settings: Settings, on_ready: Callable[[], None] | None = None, *, forward_reload: bool = False
) -> None:
    server = await Server.create(settings)
    # Startup objects (modules, the app, compiled SQL) never die: keep the collector off them, and
    # collect young objects less often: per-request garbage is short-lived, and gen-0 passes cost
    # ~14% of ingest CPU at the default threshold (bench profile).
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
    await server.run_until_signalled(on_ready, forward_reload=forward_reload)
