"""``oncall-server incidents ...``, the night shift's CLI, run as a process against a real server:
list, show, ack, unack, reassign, note, resolve, watch; credentials and target from flags,
environment and the config file; TLS; exit codes and one-line errors (docs/cli.md)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from oncall_server.testing import RunningServer, Tenant, add_user, bootstrap, running_server, server_settings
from tests.helpers import CLI, post_json, webhook_url

pytestmark = pytest.mark.slow  # a CLI process per command

ALERT = {
    "title": "CPU usage critical on client-server-01",
    "severity": "critical",
    "dedup_key": "rmm-device-4821-cpu",
    "body": "CPU sustained at 98% for 5 minutes.",
    "source_ref": "alert-4821",
}


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any ``ONCALL_*`` or gRPC variable, a HOME without a
    config file, and ``extra``."""
    kept = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ONCALL_", "GRPC_")) and k != "XDG_CONFIG_HOME"
    }
    return kept | {"HOME": str(home)} | extra


async def cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """``python -m oncall_server.runtime.cli incidents <args>``: exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, "incidents", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def ok(*args: str, env: dict[str, str]) -> str:
    code, out, err = await cli(*args, env=env)
    assert code == 0, err
    assert err == ""
    return out


async def ok_json(*args: str, env: dict[str, str]) -> Any:
    return json.loads(await ok(*args, "--json", env=env))


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def open_incident(server: RunningServer, tenant: Tenant, alert: dict[str, Any] | None = None) -> str:
    status, body = await post_json(webhook_url(server, tenant), alert or ALERT)
    assert status == 202, body
    return str(body["incident_id"])


async def test_night_shift_flow_list_show_ack_reassign_note_resolve(
    server: RunningServer, tmp_path: Path
) -> None:
    tenant = await bootstrap(server.app)  # its API token is named "tester"
    alice = await add_user(server.app, tenant.tenant_id, "Alice")
    incident_id = await open_incident(server, tenant)
    env = clean_env(tmp_path, ONCALL_TOKEN=tenant.api_token, ONCALL_TARGET=server.grpc_target)

    table = (await ok("list", env=env)).splitlines()
    assert table[0].split() == ["ID", "STATUS", "SEVERITY", "ALERTS", "AGE", "TITLE"]
    assert table[1].split()[:4] == [incident_id, "triggered", "critical", "1"]
    assert table[1].endswith("CPU usage critical on client-server-01")
    listed = await ok_json("list", "--status", "triggered", "--severity", "critical", env=env)
    assert [i["id"] for i in listed["incidents"]] == [incident_id]
    assert listed["incidents"][0]["status"] == "INCIDENT_STATUS_TRIGGERED"
    assert (await ok_json("list", "--status", "resolved", env=env))["incidents"] == []
    assert (await ok_json("list", "--service", "no-such-service", env=env))["incidents"] == []

    shown = await ok("show", incident_id, "--raw", "--timeline", env=env)
    assert f"Incident       {incident_id}" in shown
    assert "Status         triggered" in shown
    assert "Alerts (1)" in shown and '"dedup_key": "rmm-device-4821-cpu"' in shown  # the raw payload
    assert "Timeline (" in shown and re.search(r"Z  triggered +system +CPU usage critical", shown)
    data = await ok_json("show", incident_id, "--raw", "--timeline", env=env)
    assert data["incident"]["id"] == incident_id
    assert json.loads(data["alerts"][0]["raw_payload"]) == ALERT
    assert data["timeline"][0]["kind"] == "TIMELINE_ENTRY_KIND_TRIGGERED"
    without_raw = await ok_json("show", incident_id, "--alerts", env=env)
    assert "raw_payload" not in without_raw["alerts"][0] and "timeline" not in without_raw

    # The actor is the token's name: the CLI sends no free-text actor.
    acked = await ok("ack", incident_id, env=env)
    assert acked.strip() == (
        f"acknowledged {incident_id} (acknowledged) by tester: CPU usage critical on client-server-01"
    )
    unacked = await ok_json("unack", incident_id, env=env)
    assert unacked["incident"]["status"] == "INCIDENT_STATUS_TRIGGERED"
    reassigned = await ok_json("reassign", incident_id, "--to", "alice@example.com", env=env)
    assert reassigned["incident"]["assigned_to"] == alice
    noted = await ok("note", incident_id, "restarted the backup agent", env=env)
    assert noted.startswith(f"note added to {incident_id} by tester at ")
    resolved = await ok_json("resolve", incident_id, "--summary", "runaway backup job killed", env=env)
    assert resolved["incident"]["status"] == "INCIDENT_STATUS_RESOLVED"
    assert resolved["incident"]["resolved_by"] == "tester"
    assert resolved["incident"]["resolution_summary"] == "runaway backup job killed"

    timeline = (await ok_json("show", incident_id, "--timeline", env=env))["timeline"]
    said = [
        (e["kind"].removeprefix("TIMELINE_ENTRY_KIND_"), e.get("actor"), e.get("message")) for e in timeline
    ]
    assert ("ACKNOWLEDGED", "tester", "Acknowledged by tester") in said
    assert ("UNACKNOWLEDGED", "tester") in [s[:2] for s in said]
    assert ("REASSIGNED", "tester") in [s[:2] for s in said]
    assert ("NOTE", "tester", "restarted the backup agent") in said
    assert ("RESOLVED", "tester", "runaway backup job killed") in said
    shown = await ok("show", incident_id, env=env)
    assert "Status         resolved" in shown and "Summary        runaway backup job killed" in shown

    # Refused by the server: 6, one line.
    code, out, err = await cli("ack", incident_id, env=env)
    assert (code, out) == (6, "")
    assert one_line_error(err).startswith(f"error: FAILED_PRECONDITION: incident '{incident_id}' is resolved")
    code, _, err = await cli("reassign", incident_id, "--to", "nobody@example.com", env=env)
    assert code == 6, err


async def test_exit_codes_and_one_line_errors(server: RunningServer, tmp_path: Path) -> None:
    tenant = await bootstrap(server.app)
    env = clean_env(tmp_path, ONCALL_TOKEN=tenant.api_token, ONCALL_TARGET=server.grpc_target)
    down = f"127.0.0.1:{free_port()}"
    (
        (wrong_token, _, wrong_token_err),
        (no_token, _, no_token_err),
        (unknown, unknown_out, unknown_err),
        (unknown_json, unknown_json_out, unknown_json_err),
        (server_down, _, server_down_err),
        (missing_id, _, missing_id_err),
        (bad_status, _, _),
        (bad_command, _, _),
        (missing_to, _, _),
    ) = await asyncio.gather(
        cli("list", env=env | {"ONCALL_TOKEN": "oct_wrong"}),
        cli("list", env={k: v for k, v in env.items() if k != "ONCALL_TOKEN"}),
        cli("show", "01234567-no-such-incident", env=env),
        cli("ack", "01234567-no-such-incident", "--json", env=env),
        cli("list", "--target", down, "--json", env=env),
        cli("show", env=env),
        cli("list", "--status", "open", env=env),
        cli("frobnicate", env=env),
        cli("reassign", "x", env=env),
    )
    assert wrong_token == 3
    assert one_line_error(wrong_token_err) == (
        "error: UNAUTHENTICATED: a valid API token is required (authorization: Bearer <token>)"
    )
    assert no_token == 3
    assert one_line_error(no_token_err).startswith("error: no API token: set ONCALL_TOKEN")
    assert (unknown, unknown_out) == (4, "")
    assert one_line_error(unknown_err) == "error: NOT_FOUND: incident '01234567-no-such-incident' not found"
    assert (unknown_json, unknown_json_out) == (4, "")  # --json: the error is the same line, on stderr
    assert one_line_error(unknown_json_err) == unknown_err.strip()
    assert server_down == 5
    assert one_line_error(server_down_err).startswith("error: UNAVAILABLE: ")
    assert (missing_id, bad_status, bad_command, missing_to) == (2, 2, 2, 2)  # argparse: usage
    assert "the following arguments are required: id" in missing_id_err
    assert "Traceback" not in missing_id_err


async def test_credentials_and_target_from_flags_environment_and_config_file(
    server: RunningServer, tmp_path: Path
) -> None:
    tenant = await bootstrap(server.app)
    incident_id = await open_incident(server, tenant)
    port = server.grpc_target.rsplit(":", 1)[1]
    token_file = tmp_path / "token"
    token_file.write_text(tenant.api_token + "\n")
    down = f"127.0.0.1:{free_port()}"
    config_dir = tmp_path / "xdg" / "oncall"
    config_dir.mkdir(parents=True)
    # Relative paths in the config file are relative to the file.
    (config_dir / "cli.toml").write_text(f'target = "{server.grpc_target}"\ntoken_file = "../../token"\n')
    with_config = clean_env(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    plain = clean_env(tmp_path / "nowhere")

    async def ids(*args: str, env: dict[str, str]) -> list[str]:
        return [i["id"] for i in (await ok_json("list", *args, env=env))["incidents"]]

    results = await asyncio.gather(
        # --token-file, and the target from the server's own ONCALL_GRPC_LISTEN (0.0.0.0: loopback)
        ids("--token-file", str(token_file), env=plain | {"ONCALL_GRPC_LISTEN": f"0.0.0.0:{port}"}),
        # ONCALL_TOKEN + ONCALL_TARGET
        ids(env=plain | {"ONCALL_TOKEN": tenant.api_token, "ONCALL_TARGET": server.grpc_target}),
        # everything from the config file
        ids(env=with_config),
        # the flag beats the environment, which beats the config file
        ids("--target", server.grpc_target, env=with_config | {"ONCALL_TARGET": down}),
        ids("--token", tenant.api_token, env=with_config | {"ONCALL_TOKEN": "oct_wrong"}),
        # ONCALL_TARGET beats ONCALL_GRPC_LISTEN
        ids(env=with_config | {"ONCALL_TARGET": server.grpc_target, "ONCALL_GRPC_LISTEN": down}),
    )
    assert results == [[incident_id]] * len(results)

    code, _, err = await cli("list", env=with_config | {"ONCALL_TARGET": down})  # env beats the file
    assert code == 5, err
    code, _, err = await cli("list", env=with_config | {"ONCALL_TOKEN": "oct_wrong"})
    assert code == 3, err
    code, _, err = await cli("list", "--token-file", str(tmp_path / "missing"), env=plain)
    assert code == 2
    assert one_line_error(err).startswith(f"error: cannot read token file '{tmp_path / 'missing'}'")
    (config_dir / "cli.toml").write_text('target = "x"\ntoken = "oct_in_plain_text"\n')
    code, _, err = await cli("list", env=with_config)
    assert code == 2
    assert "unknown key 'token'" in one_line_error(err)


async def test_watch_prints_a_line_per_change_until_ctrl_c(server: RunningServer, tmp_path: Path) -> None:
    tenant = await bootstrap(server.app)
    env = clean_env(tmp_path, ONCALL_TOKEN=tenant.api_token, ONCALL_TARGET=server.grpc_target)
    watcher = await asyncio.create_subprocess_exec(
        *CLI, "incidents", "watch", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert watcher.stdout is not None and watcher.stderr is not None
    try:
        # The stream says nothing until the first change, so the test cannot know when the server
        # subscribed: alerts are sent until one is seen.
        line, opened = "", []
        for attempt in range(30):
            opened.append(
                await open_incident(server, tenant, {"title": f"Disk full {attempt}", "severity": "high"})
            )
            try:
                line = (await asyncio.wait_for(watcher.stdout.readline(), 1.0)).decode()
                break
            except TimeoutError:
                continue
        assert line, "watch printed nothing"
        fields = line.split()
        assert fields[1] in opened and fields[2:6] == ["triggered", "high", "triggered", "by"]
        assert line.rstrip().endswith("| Disk full " + str(opened.index(fields[1])))
        watcher.send_signal(signal.SIGINT)  # Ctrl-C
        await asyncio.wait_for(watcher.wait(), 15)
        assert watcher.returncode == 0
        assert await watcher.stderr.read() == b""
    finally:
        if watcher.returncode is None:
            watcher.kill()
            await watcher.wait()


async def test_watch_json_one_object_per_line_and_sigterm(server: RunningServer, tmp_path: Path) -> None:
    tenant = await bootstrap(server.app)
    env = clean_env(tmp_path, ONCALL_TOKEN=tenant.api_token, ONCALL_TARGET=server.grpc_target)
    watcher = await asyncio.create_subprocess_exec(
        *CLI, "incidents", "watch", "--json", "--service", tenant.service_id,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert watcher.stdout is not None
    try:
        line = b""
        for _ in range(30):
            await open_incident(server, tenant, {"title": "Backup failed", "severity": "medium"})
            try:
                line = await asyncio.wait_for(watcher.stdout.readline(), 1.0)
                break
            except TimeoutError:
                continue
        change = json.loads(line)
        assert change["incident"]["title"] == "Backup failed"
        assert change["entry"]["kind"] == "TIMELINE_ENTRY_KIND_TRIGGERED"
        watcher.terminate()
        assert await asyncio.wait_for(watcher.wait(), 15) == 0
    finally:
        if watcher.returncode is None:
            watcher.kill()
            await watcher.wait()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_a_tls_server_with_ca_from_flag_or_environment(
    tmp_path: Path, redis_url: str, redis: object
) -> None:
    from tests.test_tls import issue

    issued = issue(tmp_path, "cli")
    settings = server_settings(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path / 'oncall.db'}",
        redis_url,
        tls_cert_file=str(issued.cert),
        tls_key_file=str(issued.key),
    )
    async with running_server(settings) as server:
        tenant = await bootstrap(server.app)
        connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(issued.ca)))
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.post(webhook_url(server, tenant), json=ALERT) as response,
        ):
            assert response.status == 202, await response.text()
            incident_id = (await response.json())["incident_id"]
        port = server.grpc_target.rsplit(":", 1)[1]
        env = clean_env(tmp_path, ONCALL_TOKEN=tenant.api_token, ONCALL_TARGET=server.grpc_target)
        server_env = clean_env(
            tmp_path,
            ONCALL_TOKEN=tenant.api_token,
            ONCALL_GRPC_LISTEN=f"127.0.0.1:{port}",
            ONCALL_TLS_CERT_FILE=str(issued.cert),
            ONCALL_CA_FILE=str(issued.ca),
        )
        (
            (flag, flag_out, _),
            (from_env, env_out, _),
            (plain, _, plain_err),
            (system, _, system_err),
        ) = await asyncio.gather(
            cli("list", "--ca", str(issued.ca), "--json", env=env),
            cli("list", "--json", env=server_env),  # TLS because the server's env says so
            cli("list", env=env),  # a plain channel to a TLS listener
            cli("list", "--tls", env=env),  # the system's roots do not know the test CA
        )
        assert (flag, from_env) == (0, 0)
        assert [i["id"] for i in json.loads(flag_out)["incidents"]] == [incident_id]
        assert [i["id"] for i in json.loads(env_out)["incidents"]] == [incident_id]
        assert plain == 5 and one_line_error(plain_err).startswith("error: UNAVAILABLE: ")
        assert system == 5 and one_line_error(system_err).startswith("error: UNAVAILABLE: ")
