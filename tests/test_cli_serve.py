"""The README flow in real processes: serve on embedded defaults, bootstrap, curl, page, list, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
from pathlib import Path

import pytest

from tests.helpers import CLI, post_json, run_cli, start_serve, wait_for_line


@pytest.mark.slow
async def test_serve_on_embedded_defaults_then_sigterm_exits_cleanly() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="oncall-cli-", dir="/tmp"))
    server = await start_serve(data_dir)
    assert server.stderr is not None
    seen: list[str] = []
    try:
        grpc_port = (await wait_for_line(server.stderr, r"gRPC listening on port (\d+)", seen)).group(1)
        http_port = (await wait_for_line(server.stderr, r"HTTP gateway listening on port (\d+)", seen)).group(
            1
        )
        await wait_for_line(server.stderr, "ready", seen)
        redis_pid = int((data_dir / "redis" / "redis.pid").read_text())
        assert (data_dir / "redis" / "appendonly.aof").exists() or (
            data_dir / "redis" / "appendonlydir"
        ).exists()

        creds = await run_cli("bootstrap", data_dir=data_dir)
        status, body = await post_json(
            f"http://127.0.0.1:{http_port}/api/webhooks/ingest?key={creds['integration_key']}",
            {"title": "CPU usage critical on client-server-01", "severity": "critical", "dedup_key": "cpu-1"},
        )
        assert status == 202, body
        # bootstrap gave the service a policy paging an "On-call" user through the log channel.
        await wait_for_line(
            server.stderr, rf"page notification=\S+ kind=page .*incident={body['incident_id']}", seen
        )

        lister = await asyncio.create_subprocess_exec(
            *CLI,
            "incidents",
            "list",
            "--token",
            creds["api_token"],
            "--target",
            f"127.0.0.1:{grpc_port}",
            "--json",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await lister.communicate()
        incidents = json.loads(out)["incidents"]
        assert [i["id"] for i in incidents] == [body["incident_id"]]
        assert incidents[0]["title"] == "CPU usage critical on client-server-01"
        table = await asyncio.create_subprocess_exec(
            *CLI, "incidents", "list", "--token", creds["api_token"], "--target", f"127.0.0.1:{grpc_port}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        printed, errors = await table.communicate()
        assert table.returncode == 0, errors.decode()
        row = printed.decode().splitlines()[1].split()
        assert row[:4] == [body["incident_id"], "triggered", "critical", "1"]
        refused = await asyncio.create_subprocess_exec(
            *CLI, "incidents", "list", "--token", "oct_wrong", "--target", f"127.0.0.1:{grpc_port}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, said = await refused.communicate()
        assert refused.returncode == 3  # auth (docs/cli.md): the server's answer in one line, no traceback
        assert said.decode().strip() == (
            "error: UNAUTHENTICATED: a valid API token is required (authorization: Bearer <token>)"
        )

        # An RMM event published on the bus (through the embedded Redis) becomes an incident too.
        await run_cli("integration", "create", "RMM", "--type", "rmm", "--tenant", creds["tenant_id"],
                   "--service", creds["service_id"], data_dir=data_dir)  # fmt: skip
        event = {
            "title": "Disk failing",
            "severity": "high",
            "alert_id": "r-1",
            "tenant_id": creds["tenant_id"],
        }
        published = await run_cli("bus", "publish", "rmm", json.dumps(event), data_dir=data_dir)
        assert published["stream"] == "oncall:bus:rmm"
        for _ in range(100):
            target = f"127.0.0.1:{grpc_port}"
            lister = await asyncio.create_subprocess_exec(
                *CLI, "incidents", "list", "--token", creds["api_token"], "--target", target, "--json",
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await lister.communicate()
            titles = [i["title"] for i in json.loads(out)["incidents"]]
            if "Disk failing" in titles:
                break
            await asyncio.sleep(0.1)
        assert "Disk failing" in titles

        server.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(server.stderr.read(), 30)
        assert await asyncio.wait_for(server.wait(), 30) == 0
        log = "".join(seen) + rest.decode()
        assert "stopped cleanly" in log
        assert creds["integration_key"] not in log  # keys never reach the logs
        with pytest.raises(ProcessLookupError):
            os.kill(redis_pid, 0)  # the embedded Redis stopped with us
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()


async def test_a_port_in_use_is_a_clear_error_and_leaves_no_redis_behind() -> None:
    import socket

    data_dir = Path(tempfile.mkdtemp(prefix="oncall-port-", dir="/tmp"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            *CLI, "serve", "--data-dir", str(data_dir), "--grpc-listen", f"127.0.0.1:{port}",
            "--http-listen", "127.0.0.1:0", stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert f"error: cannot start: Failed to bind to address 127.0.0.1:{port}" in err.decode()
    assert "Traceback" not in err.decode()
    assert not (data_dir / "redis" / "redis.pid").exists()  # the embedded Redis was stopped
