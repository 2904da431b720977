"""What the commands that go through the gRPC API share: where the server is, how to reach it (plain
or TLS), which API token to send, and how a failed call becomes one line and an exit code.

Everything comes from flags, else environment variables, else the config file
(``~/.config/oncall/cli.toml``); docs/cli.md has the precedence and the exit codes.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

# Exit codes (docs/cli.md). argparse itself exits 2 on a usage error.
EXIT_OK = 0
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_UNAVAILABLE = 5
EXIT_REFUSED = 6

_EXIT_OF_CODE = {
    grpc.StatusCode.UNAUTHENTICATED: EXIT_AUTH,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_AUTH,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_REFUSED,
    grpc.StatusCode.FAILED_PRECONDITION: EXIT_REFUSED,
}

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 10.0
CONFIG_KEYS: dict[str, type | tuple[type, ...]] = {
    "target": str,
    "token_file": str,
    "ca": str,
    "tls": bool,
    "timeout": (int, float),
}


class CliError(Exception):
    """A problem found before or around a call, with the exit code it means."""

    def __init__(self, message: str, exit_code: int = EXIT_OTHER) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def exit_code_of(error: grpc.aio.AioRpcError) -> int:
    return _EXIT_OF_CODE.get(error.code(), EXIT_OTHER)


def describe(error: grpc.aio.AioRpcError) -> str:
    """``NOT_FOUND: incident '...' not found``, on one line whatever the server said."""
    details = " ".join((error.details() or "").split())
    return f"{error.code().name}: {details}" if details else error.code().name


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """The connection and credential flags every API command takes."""
    group = parser.add_argument_group("connection (flag > environment > config file; docs/cli.md)")
    group.add_argument(
        "--target",
        help="gRPC host:port (env ONCALL_TARGET; config `target`; else from ONCALL_GRPC_LISTEN; "
        f"else {DEFAULT_TARGET})",
    )
    group.add_argument(
        "--token-file", help="file holding the API token (env ONCALL_TOKEN holds the token itself)"
    )
    group.add_argument(
        "--token",
        help="the API token itself; visible to other users in `ps`: prefer ONCALL_TOKEN or --token-file",
    )
    group.add_argument(
        "--ca", help="PEM root certificate(s) to verify a TLS server with (env ONCALL_CA_FILE; config `ca`)"
    )
    group.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="TLS with the system's roots (--ca implies TLS); --no-tls: a plain channel whatever else says",
    )
    group.add_argument(
        "--timeout",
        type=float,
        help=f"seconds each call may take (config `timeout`; default {DEFAULT_TIMEOUT:g})",
    )
    group.add_argument(
        "--config", help="config file (env ONCALL_CLI_CONFIG; default ~/.config/oncall/cli.toml)"
    )
    parser.add_argument("--json", action="store_true", help="print proto3 JSON")


def config_path(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[Path, bool]:
    """The config file and whether it was asked for (then it must exist)."""
    given = getattr(args, "config", None) or env.get("ONCALL_CLI_CONFIG")
    if given:
        return Path(given).expanduser(), True
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "oncall" / "cli.toml", False


def load_config(path: Path, required: bool) -> dict[str, Any]:
    """The ``[...]``-less TOML file of ``target``, ``token_file``, ``ca``, ``tls``, ``timeout``."""
    try:
        with path.open("rb") as file:
            config = tomllib.load(file)
    except FileNotFoundError:
        if required:
            raise CliError(f"config file {str(path)!r} does not exist", EXIT_USAGE) from None
        return {}
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise CliError(f"config file {str(path)!r}: {' '.join(str(error).split())}", EXIT_USAGE) from None
    for key, value in config.items():
        kinds = CONFIG_KEYS.get(key)
        if kinds is None:
            known = ", ".join(CONFIG_KEYS)
            raise CliError(f"config file {str(path)!r}: unknown key {key!r} (known: {known})", EXIT_USAGE)
        if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is not bool):
            raise CliError(f"config file {str(path)!r}: {key!r} has the wrong type", EXIT_USAGE)
    # Relative paths in the file are relative to the file.
    for key in ("token_file", "ca"):
        if key in config:
            config[key] = str(path.parent / Path(config[key]).expanduser())
    return config


def target_from_listen(listen: str) -> str:
    """The address a client on this host dials for a server listening on ``listen``."""
    host, _, port = listen.strip().rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Connection:
    """Where and how to call, resolved from flags, environment and config file."""

    target: str
    token: str
    tls: bool
    root_certificates: bytes | None
    timeout: float

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    def channel(self) -> grpc.aio.Channel:
        if not self.tls:
            return grpc.aio.insecure_channel(self.target)
        credentials = grpc.ssl_channel_credentials(root_certificates=self.root_certificates)
        return grpc.aio.secure_channel(self.target, credentials)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as error:
        raise CliError(f"cannot read {what} {path!r}: {error.strerror or error}", EXIT_USAGE) from None


def connection(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Connection:
    """Flag > environment > config file > (target only) ONCALL_GRPC_LISTEN > the default."""
    env = os.environ if env is None else env
    config = load_config(*config_path(args, env))

    from_listen = False
    target = args.target or env.get("ONCALL_TARGET") or config.get("target")
    if not target and env.get("ONCALL_GRPC_LISTEN"):
        target, from_listen = target_from_listen(env["ONCALL_GRPC_LISTEN"]), True
    target = target or DEFAULT_TARGET

    if args.token is not None and args.token_file is not None:
        raise CliError("give --token or --token-file, not both", EXIT_USAGE)
    if args.token is not None:
        token = args.token
    elif args.token_file is not None:
        token = _read(args.token_file, "token file").decode(errors="replace")
    elif env.get("ONCALL_TOKEN"):
        token = env["ONCALL_TOKEN"]
    elif "token_file" in config:
        token = _read(config["token_file"], "token file").decode(errors="replace")
    else:
        token = ""
    token = token.strip()
    if not token:
        raise CliError(
            "no API token: set ONCALL_TOKEN, or give --token-file FILE, or token_file in the config file",
            EXIT_AUTH,
        )
    if not (token.isascii() and token.isprintable()):
        raise CliError("the API token must be printable ASCII", EXIT_AUTH)

    ca = args.ca or env.get("ONCALL_CA_FILE") or config.get("ca")
    root_certificates = _read(ca, "CA file") if ca else None
    # The server's own environment says whether the listener it derived the target from is TLS.
    server_tls = from_listen and bool(env.get("ONCALL_TLS_CERT_FILE", "").strip())
    tls = bool(ca) or bool(args.tls) or bool(config.get("tls")) or server_tls
    if args.tls is False:
        tls, root_certificates = False, None

    timeout = args.timeout if args.timeout is not None else float(config.get("timeout", DEFAULT_TIMEOUT))
    if timeout <= 0:
        raise CliError("--timeout must be positive", EXIT_USAGE)
    return Connection(target, token, tls, root_certificates, timeout)
