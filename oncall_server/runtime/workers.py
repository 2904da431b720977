"""Several server processes on one pair of ports, so one deployment uses every core.

Python runs one event loop per process; ``ONCALL_WORKERS=N`` starts N processes that bind the same
gRPC and HTTP ports with SO_REUSEPORT, and the kernel spreads connections over them. Each worker
is a full replica running every enabled role — the kind of replica DESIGN.md already allows any
number of: the scheduler's leases, the outbox's claims and the writer's upserts keep them from
stepping on each other, and on SQLite a file lock queues their write transactions
(``storage/dialects.py``).

The first process starts the embedded Redis (if no ``ONCALL_REDIS_URL``) and migrates the schema
once, then starts the others with its settings in their environment and waits until they are
serving. It stops them when it stops; if one dies, it stops all and exits with an error, so a
supervisor restarts the whole set.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

from pydantic import SecretStr

from oncall_server.redis_embedded import EmbeddedRedis
from oncall_server.runtime.settings import Settings, split_host_port
from oncall_server.storage import migrate
from oncall_server.storage.engine import create_engine

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 60.0
_PR_SET_PDEATHSIG = 1


class WorkerExited(RuntimeError):
    """A worker process ended while the server was running."""


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as ``ONCALL_*`` variables, so a worker process builds the same Settings."""
    env: dict[str, str] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, (list, tuple)):
            text = ",".join(str(part) for part in value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"ONCALL_{name.upper()}"] = text
    return env


def die_with_parent(parent_pid: int) -> None:
    """In a worker: get SIGTERM when the first process dies, so no worker outlives the set."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # it died before prctl took effect
        raise WorkerExited(f"the first server process ({parent_pid}) is gone")


async def serve_with_workers(settings: Settings, run_one: Callable[[Settings], Awaitable[None]]) -> None:
    """Start ``settings.workers - 1`` worker processes, serve in this one too, stop them together."""
    for listen in (settings.grpc_listen, settings.http_listen):
        if split_host_port(listen)[1] == 0:
            raise RuntimeError(
                f"ONCALL_WORKERS={settings.workers} needs fixed ports (the workers share them), not {listen}"
            )
    embedded: EmbeddedRedis | None = None
    if not settings.redis_url:
        embedded = EmbeddedRedis(settings.data_dir)
        settings = settings.model_copy(update={"redis_url": await embedded.start()})
    try:
        engine = create_engine(settings.resolved_database_url, sqlite_driver=settings.sqlite_driver)
        try:
            await migrate.upgrade(engine)  # once, before several processes would race to do it
        finally:
            await engine.dispose()
        await _run_set(settings, run_one)
    finally:
        if embedded is not None:
            await embedded.stop()


async def _run_set(settings: Settings, run_one: Callable[[Settings], Awaitable[None]]) -> None:
    loop = asyncio.get_running_loop()
    ready = 0
    all_ready = asyncio.Event()
    others = settings.workers - 1

    def one_ready() -> None:
        nonlocal ready
        ready += 1
        if ready >= others:
            all_ready.set()

    loop.add_signal_handler(signal.SIGUSR1, one_ready)
    env = os.environ | settings_env(settings)
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "oncall_server.runtime.cli",
            "serve",
            "--worker-of",
            str(os.getpid()),
            env=env,
        )
        for _ in range(others)
    ]
    exits: dict[asyncio.Future[object], asyncio.subprocess.Process] = {
        asyncio.ensure_future(child.wait()): child for child in children
    }
    try:
        waiting: asyncio.Future[object] = asyncio.ensure_future(all_ready.wait())
        done, _ = await asyncio.wait(
            [waiting, *exits], timeout=READY_TIMEOUT_SECONDS, return_when=asyncio.FIRST_COMPLETED
        )
        if waiting not in done:
            waiting.cancel()
            raise WorkerExited(f"only {ready} of {others} worker process(es) started")
        log.info("%d worker processes serving beside this one", others)
        own: asyncio.Future[object] = asyncio.ensure_future(run_one(settings))
        done, _ = await asyncio.wait([own, *exits], return_when=asyncio.FIRST_COMPLETED)
        if own not in done:
            child = exits[next(iter(done))]
            os.kill(os.getpid(), signal.SIGTERM)  # this process's server drains like on a normal stop
            await own
            if child.returncode == 0:  # it was told to stop too (a signal to the whole process group)
                return
            log.error(
                "worker process %d exited with status %s; stopped every worker", child.pid, child.returncode
            )
            raise WorkerExited(f"worker process {child.pid} exited with status {child.returncode}")
        await own
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        await _stop_all(children, settings.drain_seconds + 10)


async def _stop_all(children: list[asyncio.subprocess.Process], timeout: float) -> None:
    for child in children:
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
    for child in children:
        try:
            await asyncio.wait_for(child.wait(), timeout)
        except TimeoutError:
            log.warning("worker process %d did not stop in time; killed", child.pid)
            child.kill()
            await child.wait()
