"""``serve --workers 2``: two processes on one pair of ports, real HTTP, every alert paged once."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import tempfile
from pathlib import Path

import aiohttp
import pytest

from oncall_server.testing import wait_for
from tests.helpers import CLI, run_cli, wait_for_line

pytestmark = pytest.mark.slow
ALERTS = 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_pids(parent: int) -> list[int]:
    """Processes started with ``--worker-of <parent>``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                b"--worker-of" in cmdline
                and cmdline[cmdline.index(b"--worker-of") + 1] == str(parent).encode()
            ):
                found.append(int(entry.name))
    return found


async def start_workers(
    data_dir: Path, database_url: str
) -> tuple[asyncio.subprocess.Process, int, list[str]]:
    http_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONCALL_")} | {"ONCALL_ACCESS_LOG": "true"}
    server = await asyncio.create_subprocess_exec(
        *CLI, "serve", "--data-dir", str(data_dir), "--database-url", database_url, "--workers", "2",
        "--grpc-listen", f"127.0.0.1:{free_port()}", "--http-listen", f"127.0.0.1:{http_port}",
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert server.stderr is not None
    seen: list[str] = []
    await wait_for_line(server.stderr, "worker processes serving beside this one", seen)
    await wait_for_line(
        server.stderr, rf"\[{server.pid}\] oncall_server.runtime.server: on-call server ready", seen
    )

    async def keep_reading(stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            seen.append(line.decode())

    asyncio.get_running_loop().create_task(keep_reading(server.stderr))
    return server, http_port, seen


async def test_two_workers_share_the_ports_and_page_every_alert_once(database_url: str) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="oncall-workers-", dir="/tmp"))
    creds = await run_cli("bootstrap", "--database-url", database_url, data_dir=data_dir)
    server, http_port, log = await start_workers(data_dir, database_url)
    try:
        assert len(worker_pids(server.pid)) == 1
        url = f"http://127.0.0.1:{http_port}/api/webhooks/ingest?key={creds['integration_key']}"

        async def send(i: int) -> tuple[int, str]:
            async with aiohttp.ClientSession() as http:  # a connection each: the kernel spreads them
                body = {"title": f"disk full {i}", "severity": "critical", "dedup_key": f"disk-{i}"}
                async with http.post(url, json=body) as response:
                    return response.status, (await response.json())["incident_id"]

        answers = await asyncio.gather(*(send(i) for i in range(ALERTS)))
        assert {status for status, _ in answers} == {202}
        incidents = {incident for _, incident in answers}
        assert len(incidents) == ALERTS

        def paged() -> list[str]:
            return [
                m.group(1)
                for line in log
                if (m := re.search(r"page notification=\S+ .* incident=(\S+)", line))
            ]

        async def all_paged() -> bool:
            return len(paged()) >= ALERTS

        await wait_for(all_paged, timeout=20)
        await asyncio.sleep(0.5)  # a second page for any incident would show up now
        assert sorted(paged()) == sorted(incidents)  # each incident paged exactly once
        served_by = {m.group(1) for line in log if (m := re.search(r"\[(\d+)\] oncall.access: .*POST", line))}
        assert len(served_by) == 2, f"one process served every request: {served_by}"
    finally:
        server.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.wait(), 30) == 0, "".join(log[-20:])
    assert worker_pids(server.pid) == []


async def test_a_worker_that_dies_stops_the_set_with_an_error(database_url: str) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="oncall-workers-", dir="/tmp"))
    await run_cli("bootstrap", "--database-url", database_url, data_dir=data_dir)
    server, _, log = await start_workers(data_dir, database_url)
    [worker] = worker_pids(server.pid)
    os.kill(worker, signal.SIGKILL)
    assert await asyncio.wait_for(server.wait(), 30) == 1

    async def reported() -> bool:  # the log reader may still be draining the pipe
        return any(f"worker process {worker} exited with status -9" in line for line in log)

    try:
        await wait_for(reported)
    except TimeoutError:
        raise AssertionError("".join(log[-20:])) from None


async def test_workers_need_fixed_ports() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="oncall-workers-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONCALL_")}
    proc = await asyncio.create_subprocess_exec(
        *CLI, "serve", "--data-dir", str(data_dir), "--workers", "2", "--grpc-listen", "127.0.0.1:0",
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert "needs fixed ports" in err.decode()
