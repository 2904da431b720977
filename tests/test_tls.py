"""TLS on both listeners (``ONCALL_TLS_CERT_FILE``/``ONCALL_TLS_KEY_FILE``), against real loopback
listeners, with a CA and server certificates the test makes with the ``openssl`` command."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest

from oncall_server.api.v1 import (
    catalog_service_pb2,
    catalog_service_pb2_grpc,
    incident_service_pb2,
    incident_service_pb2_grpc,
)
from oncall_server.runtime.server import Server
from oncall_server.runtime.settings import Settings
from oncall_server.runtime.tls import TlsError
from oncall_server.testing import RunningServer, bootstrap, running_server, server_settings
from tests.helpers import CLI, run_cli, wait_for_line

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@dataclass(frozen=True)
class Issued:
    """A CA and a server certificate it signed for 127.0.0.1 and localhost."""

    ca: Path
    cert: Path
    key: Path

    @property
    def fingerprint(self) -> str:
        der = ssl.PEM_cert_to_DER_cert(self.cert.read_text())
        return hashlib.sha256(der).hexdigest()


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def issue(directory: Path, name: str) -> Issued:
    """A fresh CA (EC P-256) and a server certificate from it, in ``directory/name.*``."""
    d = directory
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(d / f"{name}-ca.key"), "-out", str(d / f"{name}-ca.pem"), "-days", "2",
        "-subj", f"/CN=On-Call test CA {name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"), "-subj", "/CN=localhost",
    )  # fmt: skip
    (d / f"{name}.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    openssl(
        "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / f"{name}-ca.pem"),
        "-CAkey", str(d / f"{name}-ca.key"), "-CAcreateserial", "-days", "2",
        "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.pem"),
    )  # fmt: skip
    return Issued(d / f"{name}-ca.pem", d / f"{name}.pem", d / f"{name}.key")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    """Two unrelated CAs with a server certificate each (the second for reloads)."""
    directory = tmp_path_factory.mktemp("tls")
    return {"one": issue(directory, "one"), "two": issue(directory, "two")}


def served_files(tmp_path: Path, issued: Issued) -> tuple[Path, Path]:
    """Copies of a certificate and key at the paths the server is given (replaced on reload)."""
    cert, key = tmp_path / "served.pem", tmp_path / "served.key"
    shutil.copyfile(issued.cert, cert)
    shutil.copyfile(issued.key, key)
    return cert, key


@pytest.fixture
async def tls_server(
    tmp_path: Path, redis_url: str, redis: object, certs: dict[str, Issued]
) -> AsyncIterator[RunningServer]:
    """A server with every role, serving certificate ``one`` on both listeners (SQLite only)."""
    cert, key = served_files(tmp_path, certs["one"])
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'oncall.db'}"
    settings = server_settings(
        tmp_path, database_url, redis_url, tls_cert_file=str(cert), tls_key_file=str(key)
    )
    async with running_server(settings) as running:
        yield running


def client_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def grpc_credentials(ca: Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())


async def peer_fingerprint(port: int, ca: Path) -> str:
    """SHA-256 of the certificate a new TLS connection to the port is shown (verified against ``ca``)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(ca))
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return hashlib.sha256(der).hexdigest()
    finally:
        writer.close()
        await writer.wait_closed()


def http_port(server: RunningServer) -> int:
    return int(server.http_url.rsplit(":", 1)[1])


async def list_services(target: str, ca: Path | None, token: str) -> int:
    """ListServices over a TLS channel trusting ``ca`` (None: a plain channel); the count."""
    channel = (
        grpc.aio.secure_channel(target, grpc_credentials(ca))
        if ca is not None
        else grpc.aio.insecure_channel(target)
    )
    async with channel:
        stub = catalog_service_pb2_grpc.CatalogServiceStub(channel)
        response = await stub.ListServices(
            catalog_service_pb2.ListServicesRequest(),
            metadata=[("authorization", f"Bearer {token}")],
            timeout=5,
        )
        return len(response.services)


async def test_https_webhook_and_grpc_over_tls(tls_server: RunningServer, certs: dict[str, Issued]) -> None:
    assert tls_server.http_url.startswith("https://127.0.0.1:")
    tenant = await bootstrap(tls_server.app)
    url = f"{tls_server.http_url}/api/webhooks/ingest?key={tenant.integration_key}"
    connector = aiohttp.TCPConnector(ssl=client_context(certs["one"].ca))
    alert = {"title": "disk full", "severity": "critical"}
    async with aiohttp.ClientSession(connector=connector) as http, http.post(url, json=alert) as response:
        assert response.status == 202, await response.text()
        incident_id = (await response.json())["incident_id"]
    assert tls_server.server.tls is not None
    assert tls_server.server.tls.http_context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert await list_services(tls_server.grpc_target, certs["one"].ca, tenant.api_token) == 1
    async with grpc.aio.secure_channel(tls_server.grpc_target, grpc_credentials(certs["one"].ca)) as channel:
        got = await incident_service_pb2_grpc.IncidentServiceStub(channel).GetIncident(
            incident_service_pb2.GetIncidentRequest(incident_id=incident_id), metadata=tenant.auth, timeout=5
        )
    # With TLS and no ONCALL_PUBLIC_URL, incident links are https.
    assert got.incident.incident_url == f"https://127.0.0.1:8080/incidents/{incident_id}"


async def test_plain_clients_are_refused_by_tls_listeners(
    tls_server: RunningServer, certs: dict[str, Issued]
) -> None:
    tenant = await bootstrap(tls_server.app)
    plain_url = tls_server.http_url.replace("https://", "http://") + "/healthz"
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(plain_url) as response:
                await response.read()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await list_services(tls_server.grpc_target, None, tenant.api_token)
    assert refused.value.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
    # A client that does not trust the server's CA is refused too, on both listeners.
    with pytest.raises(ssl.SSLCertVerificationError):
        await peer_fingerprint(http_port(tls_server), certs["two"].ca)
    with pytest.raises(grpc.aio.AioRpcError):
        await list_services(tls_server.grpc_target, certs["two"].ca, tenant.api_token)


async def test_reload_serves_the_new_certificate_to_new_connections(
    tls_server: RunningServer, certs: dict[str, Issued], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = await bootstrap(tls_server.app)
    port = http_port(tls_server)
    assert await peer_fingerprint(port, certs["one"].ca) == certs["one"].fingerprint
    old_channel = grpc.aio.secure_channel(tls_server.grpc_target, grpc_credentials(certs["one"].ca))
    old_stub = catalog_service_pb2_grpc.CatalogServiceStub(old_channel)
    auth = [("authorization", f"Bearer {tenant.api_token}")]
    await old_stub.ListServices(catalog_service_pb2.ListServicesRequest(), metadata=auth, timeout=5)

    served_files(tmp_path, certs["two"])  # a renewal: both files replaced
    assert tls_server.server.reload_tls() is True

    assert await peer_fingerprint(port, certs["two"].ca) == certs["two"].fingerprint
    assert await list_services(tls_server.grpc_target, certs["two"].ca, tenant.api_token) == 1
    with pytest.raises(grpc.aio.AioRpcError):  # new gRPC connections no longer show certificate one
        await list_services(tls_server.grpc_target, certs["one"].ca, tenant.api_token)
    # The connection made before the reload keeps working.
    await old_stub.ListServices(catalog_service_pb2.ListServicesRequest(), metadata=auth, timeout=5)
    await old_channel.close()

    # A reload that cannot be served (the key of another certificate) keeps the current pair.
    shutil.copyfile(certs["one"].key, tmp_path / "served.key")
    with caplog.at_level(logging.ERROR, logger="oncall_server.runtime.tls"):
        assert tls_server.server.reload_tls() is False
    [failure] = [r.getMessage() for r in caplog.records if r.name == "oncall_server.runtime.tls"]
    assert f"ONCALL_TLS_KEY_FILE {tmp_path / 'served.key'} is not the private key" in failure
    assert "still serving the previous certificate" in failure
    assert "PRIVATE KEY" not in caplog.text
    assert await peer_fingerprint(port, certs["two"].ca) == certs["two"].fingerprint
    assert await list_services(tls_server.grpc_target, certs["two"].ca, tenant.api_token) == 1


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (("CERT", ""), "ONCALL_TLS_CERT_FILE is set but ONCALL_TLS_KEY_FILE is not"),
        (("", "KEY"), "ONCALL_TLS_KEY_FILE is set but ONCALL_TLS_CERT_FILE is not"),
        (("CERT", "OTHER_KEY"), "ONCALL_TLS_KEY_FILE OTHER_KEY is not the private key of the certificate"),
        (("CERT", "MISSING"), "cannot read ONCALL_TLS_KEY_FILE MISSING: No such file or directory"),
        (("MISSING", "KEY"), "cannot read ONCALL_TLS_CERT_FILE MISSING: No such file or directory"),
        (("KEY", "KEY"), "ONCALL_TLS_CERT_FILE KEY holds no PEM certificate"),
        (("CERT", "CERT"), "ONCALL_TLS_KEY_FILE CERT holds no usable PEM private key"),
    ],
)  # fmt: skip
async def test_bad_tls_settings_refuse_to_start(
    tmp_path: Path, certs: dict[str, Issued], files: tuple[str, str], message: str
) -> None:
    paths = {
        "": "",
        "CERT": str(certs["one"].cert),
        "KEY": str(certs["one"].key),
        "OTHER_KEY": str(certs["two"].key),
        "MISSING": str(tmp_path / "missing.key"),
    }
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'oncall.db'}",
        redis_url="redis://127.0.0.1:1/0",  # never reached: TLS is checked before anything opens
        tls_cert_file=paths[files[0]],
        tls_key_file=paths[files[1]],
    )
    for placeholder, path in paths.items():
        if placeholder:
            message = message.replace(f" {placeholder}", f" {path}")
    with pytest.raises(TlsError) as refused:
        await Server.create(settings)
    assert message in str(refused.value)
    assert "BEGIN" not in str(refused.value)


def test_public_url_follows_tls_unless_set() -> None:
    assert Settings().public_url == "http://127.0.0.1:8080"
    tls = {"tls_cert_file": "c.pem", "tls_key_file": "k.pem"}
    assert Settings(**tls).public_url == "https://127.0.0.1:8080"
    assert Settings(**tls, public_url="https://oncall.example.com").public_url == "https://oncall.example.com"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
async def test_serve_refuses_half_a_tls_configuration_with_a_clear_error(
    tmp_path: Path, certs: dict[str, Issued]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONCALL_")}
    env["ONCALL_TLS_CERT_FILE"] = str(certs["one"].cert)
    process = await asyncio.create_subprocess_exec(
        *CLI, "serve", "--data-dir", str(tmp_path), "--grpc-listen", "127.0.0.1:0",
        "--http-listen", "127.0.0.1:0", stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert stderr.decode().strip() == (
        "error: cannot start: ONCALL_TLS_CERT_FILE is set but ONCALL_TLS_KEY_FILE is not: "
        "set both to serve TLS, or neither"
    )
    assert not (tmp_path / "redis").exists()  # refused before the embedded Redis started


@pytest.mark.slow
async def test_sighup_reloads_every_worker(tmp_path: Path, certs: dict[str, Issued]) -> None:
    """``serve --workers 2`` over TLS: SIGHUP to the first process reloads it and its worker."""
    data_dir = Path(tempfile.mkdtemp(prefix="oncall-tls-serve-", dir="/tmp"))
    creds = await run_cli("bootstrap", data_dir=data_dir)
    cert, key = served_files(tmp_path, certs["one"])
    port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONCALL_")} | {
        "ONCALL_TLS_CERT_FILE": str(cert),
        "ONCALL_TLS_KEY_FILE": str(key),
    }
    server = await asyncio.create_subprocess_exec(
        *CLI, "serve", "--data-dir", str(data_dir), "--workers", "2",
        "--grpc-listen", f"127.0.0.1:{grpc_port}", "--http-listen", f"127.0.0.1:{port}",
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert server.stderr is not None
    seen: list[str] = []
    try:
        await wait_for_line(server.stderr, rf"HTTP gateway listening on port {port} \(HTTPS\)", seen)
        await wait_for_line(
            server.stderr, rf"\[{server.pid}\] oncall_server.runtime.server: on-call server ready", seen
        )
        assert any(f"gRPC listening on port {grpc_port} (TLS)" in line for line in seen)
        # Many connections: the kernel spreads them over both processes.
        fingerprints = await asyncio.gather(*(peer_fingerprint(port, certs["one"].ca) for _ in range(20)))
        assert set(fingerprints) == {certs["one"].fingerprint}

        served_files(tmp_path, certs["two"])
        server.send_signal(signal.SIGHUP)
        reloaded = {
            (await wait_for_line(server.stderr, r"\[(\d+)\] .*TLS certificate reloaded from", seen)).group(1)
            for _ in range(2)
        }
        assert len(reloaded) == 2, "".join(seen[-10:])  # both processes
        fingerprints = await asyncio.gather(*(peer_fingerprint(port, certs["two"].ca) for _ in range(20)))
        assert set(fingerprints) == {certs["two"].fingerprint}
        for _ in range(4):
            assert await list_services(f"127.0.0.1:{grpc_port}", certs["two"].ca, creds["api_token"]) == 1
    finally:
        server.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.wait(), 30) == 0, "".join(seen[-20:])
        shutil.rmtree(data_dir, ignore_errors=True)
