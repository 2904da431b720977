"""TLS for the HTTP gateway and the gRPC server: one certificate chain and private key (PEM files,
``ONCALL_TLS_CERT_FILE`` and ``ONCALL_TLS_KEY_FILE``), read and checked at startup, read again on
:meth:`ServerTls.reload` (SIGHUP).

Both files are read once per (re)load and the same bytes serve both listeners, checked as a pair
first, so a renewal caught between writing the certificate and the key is refused (and the previous
pair kept) rather than served half. The HTTP side loads a new pair into the same ``SSLContext``
(new handshakes use it); gRPC asks :meth:`ServerTls._fetch_grpc_config` at each handshake, which
hands over a reloaded pair once (``grpc.dynamic_ssl_server_credentials``). Connections already open
keep the certificate they were made with. Key bytes are never logged: messages name the settings
and the files, and the certificate's SHA-256 fingerprint.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import ssl
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc

from oncall_server.runtime.settings import Settings

log = logging.getLogger(__name__)

CERT_SETTING = "ONCALL_TLS_CERT_FILE"
KEY_SETTING = "ONCALL_TLS_KEY_FILE"
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


class TlsError(RuntimeError):
    """The TLS settings or files cannot be served; the message names the setting and the file."""


@dataclass(frozen=True)
class CertificatePair:
    """A certificate chain (leaf first) and its private key, as PEM bytes checked to match."""

    chain_pem: bytes
    key_pem: bytes

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the leaf certificate (DER), as ``openssl x509 -fingerprint -sha256`` shows it."""
        match = _PEM_CERTIFICATE.search(self.chain_pem)
        assert match is not None  # checked by read_pair
        der = ssl.PEM_cert_to_DER_cert(match.group(0).decode("ascii"))
        return hashlib.sha256(der).hexdigest().upper()


def configured_files(settings: Settings) -> tuple[Path, Path] | None:
    """The certificate and key files, or None for plain listeners; one without the other is refused."""
    cert, key = settings.tls_cert_file.strip(), settings.tls_key_file.strip()
    if bool(cert) != bool(key):
        given, missing = (CERT_SETTING, KEY_SETTING) if cert else (KEY_SETTING, CERT_SETTING)
        raise TlsError(f"{given} is set but {missing} is not: set both to serve TLS, or neither")
    return (Path(cert), Path(key)) if cert else None


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read {setting} {path}: {exc.strerror or exc}") from None


def read_pair(cert_file: Path, key_file: Path) -> CertificatePair:
    """Read both files and check them: PEM certificates, and the key of the first one."""
    chain = _read(cert_file, CERT_SETTING)
    key = _read(key_file, KEY_SETTING)
    if not _PEM_CERTIFICATE.search(chain):
        raise TlsError(f"{CERT_SETTING} {cert_file} holds no PEM certificate")
    try:
        # A bare context: create_default_context() would load the system's CAs (~100 ms) for nothing.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=chain.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
        raise TlsError(
            f"{CERT_SETTING} {cert_file} holds an unreadable certificate ({_reason(exc)})"
        ) from None
    pair = CertificatePair(chain, key)
    load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), pair, cert_file, key_file)
    return pair


def load_pair(context: ssl.SSLContext, pair: CertificatePair, cert_file: Path, key_file: Path) -> None:
    """Load the pair into ``context`` (new handshakes use it), or raise :class:`TlsError`."""

    def no_password() -> bytes:
        raise TlsError(f"{KEY_SETTING} {key_file} is encrypted: give an unencrypted private key")

    with _pem_files(pair) as (chain_path, key_path):
        try:
            context.load_cert_chain(chain_path, key_path, password=no_password)
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise TlsError(
                    f"{KEY_SETTING} {key_file} is not the private key of the certificate in "
                    f"{CERT_SETTING} {cert_file}"
                ) from None
            raise TlsError(
                f"{KEY_SETTING} {key_file} holds no usable PEM private key ({_reason(exc)})"
            ) from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.args[-1])
    return type(exc).__name__


@contextlib.contextmanager
def _pem_files(pair: CertificatePair) -> Iterator[tuple[str, str]]:
    """Paths OpenSSL can read the pair's bytes from: anonymous memory files where the system has
    them (Linux), else files in a private temporary directory removed at once."""
    if hasattr(os, "memfd_create"):
        fds = [os.memfd_create("oncall-tls-chain"), os.memfd_create("oncall-tls-key")]
        try:
            for fd, data in zip(fds, (pair.chain_pem, pair.key_pem), strict=True):
                os.write(fd, data)
            yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="oncall-tls-") as directory:
        chain_path, key_path = Path(directory, "chain.pem"), Path(directory, "key.pem")
        chain_path.write_bytes(pair.chain_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(pair.key_pem)
        yield str(chain_path), str(key_path)


def http_context(pair: CertificatePair, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """The gateway's server context: TLS 1.2 or newer, Python's default ciphers, HTTP/1.1."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    load_pair(context, pair, cert_file, key_file)
    return context


def _grpc_config(pair: CertificatePair) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(pair.key_pem, pair.chain_pem)])


class ServerTls:
    """The served pair, the gateway's ``SSLContext`` and the gRPC credentials, reloaded together."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.pair = read_pair(cert_file, key_file)
        self.http_context = http_context(self.pair, cert_file, key_file)
        self._grpc_next: grpc.ServerCertificateConfiguration | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerTls | None:
        """None without TLS settings; raises :class:`TlsError` for settings or files it cannot serve."""
        files = configured_files(settings)
        return cls(*files) if files is not None else None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Credentials for ``add_secure_port`` (gRPC's minimum is TLS 1.2), following reloads."""
        # The fetcher may return None ("no change", as grpc's docs say); the stubs do not know it.
        fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], self._fetch_grpc_config)
        return grpc.dynamic_ssl_server_credentials(_grpc_config(self.pair), fetcher)

    def _fetch_grpc_config(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC at every handshake, on one of its threads: a reloaded pair once, else None
        # ("unchanged").
        config, self._grpc_next = self._grpc_next, None
        return config

    def reload(self) -> bool:
        """Read the files again and serve them to new connections; on failure keep the served pair,
        log why (naming the file) and return False."""
        try:
            pair = read_pair(self.cert_file, self.key_file)
            if pair == self.pair:
                log.info("TLS certificate unchanged (sha256 %s)", pair.fingerprint)
                return True
            load_pair(self.http_context, pair, self.cert_file, self.key_file)
        except TlsError as exc:
            log.error("TLS reload failed, still serving the previous certificate: %s", exc)
            return False
        self._grpc_next = _grpc_config(pair)
        self.pair = pair
        log.info("TLS certificate reloaded from %s (sha256 %s)", self.cert_file, pair.fingerprint)
        return True
