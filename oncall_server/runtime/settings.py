"""Settings, from ``ONCALL_*`` environment variables or CLI flags.

With nothing set the server runs on embedded defaults: a SQLite file and a
private Redis under the data directory.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ALL_ROLES = ("grpc", "gateway", "bus", "scheduler", "notifier")


class Settings(BaseSettings):
    """Every knob an operator can turn. Documented in docs/configuration.md."""

    model_config = SettingsConfigDict(env_prefix="ONCALL_", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(
        default=Path("oncall-data"), description="SQLite file and embedded Redis live here."
    )
    database_url: str = Field(default="", description="SQLAlchemy URL; empty means SQLite in data_dir.")
    sqlite_driver: Literal["onehop", "stock"] = Field(
        default="onehop",
        description="SQLite adapter: onehop (ours, one thread trip per statement) or stock "
        "(SQLAlchemy's aiosqlite dialect, to bisect an SQLAlchemy or aiosqlite upgrade).",
    )
    redis_url: str = Field(default="", description="Redis URL; empty means an embedded redis-server.")
    redis_timeout_seconds: float = Field(
        default=5.0,
        ge=0.5,  # above the bus consumer's 200 ms blocking reads
        le=300.0,
        description="Longest wait for Redis to connect or answer a command before the call fails.",
    )
    grpc_listen: str = Field(default="127.0.0.1:50051", description="host:port of the gRPC server.")
    http_listen: str = Field(default="127.0.0.1:8080", description="host:port of the HTTP gateway.")
    public_url: str = Field(
        default="http://127.0.0.1:8080", description="Base of incident links (https:// by default with TLS)."
    )
    # TLS for both listeners (runtime/tls.py); both or neither. "" and not None: workers get "None" back.
    tls_cert_file: str = Field(
        default="", description="PEM certificate chain (leaf first) the gateway and gRPC serve; empty: plain."
    )
    tls_key_file: str = Field(
        default="", description="PEM private key of ONCALL_TLS_CERT_FILE's certificate."
    )
    max_body_bytes: int = Field(default=512 * 1024, description="Largest accepted webhook body (413 above).")
    # HTTP gateway connections: slow or idle clients must not hold connections without bound.
    http_header_timeout_seconds: float = Field(
        default=10.0,
        ge=0.0,
        le=3600.0,
        description="Close a connection whose request headers are not complete this long after it "
        "opened or after the request's first byte (0: no limit).",
    )
    http_body_timeout_seconds: float = Field(
        default=30.0,
        gt=0.0,
        le=3600.0,
        description="Answer 408 and close when a request's body is not complete this long after its headers.",
    )
    http_keepalive_seconds: float = Field(
        default=75.0,
        ge=0.0,
        le=3600.0,
        description="Close a keep-alive connection idle this long between requests (0: close after each).",
    )
    http_max_connections_per_client: int = Field(
        default=256,
        ge=0,
        description="Most open HTTP connections from one client address per process; more are answered "
        "503 and closed (0: no limit). Behind a proxy, above its connection pool.",
    )
    max_batch_alerts: int = Field(default=1000, description="Most alerts in one ingest request.")
    write_batch_size: int = Field(default=500, description="Most alerts committed in one transaction.")
    ingest_integration_queue_alerts: int = Field(
        default=5000,
        ge=1,
        description="Most alerts of one integration waiting to be stored per process; more are refused "
        "with a retry hint (429 + Retry-After, 503 for senders that retry only 5xx, RESOURCE_EXHAUSTED).",
    )
    ingest_tenant_queue_alerts: int = Field(
        default=10000, ge=1, description="Most alerts of one tenant waiting to be stored per process."
    )
    ingest_queue_alerts: int = Field(
        default=50000, ge=1, description="Most alerts of all tenants waiting to be stored per process."
    )
    ingest_queue_wait_seconds: float = Field(
        default=5.0,
        ge=0.0,
        le=60.0,
        description="How long a request over a queue limit waits for room before it is refused "
        "(0: refuse at once). Waiting turns a flooding sender's retries into back-pressure.",
    )
    ingest_fair_share_alerts: int = Field(
        default=100,
        ge=1,
        description="Most alerts one tenant adds to a group commit while other tenants' alerts wait; a "
        "tenant alone gets the whole batch (ONCALL_WRITE_BATCH_SIZE).",
    )
    write_linger_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=1000.0,
        description="While requests queue up, start a group commit no sooner than this after the last.",
    )
    drain_seconds: float = Field(default=10.0, description="Grace period for in-flight requests on SIGTERM.")
    log_level: str = Field(default="INFO")
    access_log: bool = Field(default=True, description="Log one line per HTTP request (keys scrubbed).")
    defend_service_key: str = Field(
        default="",
        validation_alias=AliasChoices("DEFEND_SERVICE_KEY", "ONCALL_DEFEND_SERVICE_KEY"),
        description="Shared secret Defend sends as X-Integration-Key; unset refuses every Defend call.",
    )
    defend_detection_url: str = Field(
        default="https://defend.theoneoncall.app/detections/{source_ref}",
        description="Link to a detection in the Defend console; {source_ref} is the Defend alert ID.",
    )
    bus_group: str = Field(
        default="oncall", description="Consumer group of this deployment on the bus streams."
    )
    bus_claim_idle_ms: int = Field(
        default=60_000, description="Reclaim a message pending this long (longer than the longest handler)."
    )
    bus_max_deliveries: int = Field(default=5, description="Failures before a message is dead-lettered.")
    # Paging: the escalation scheduler and the notification outbox dispatcher
    scheduler_lease_seconds: float = Field(
        default=10.0,
        ge=1.0,
        le=3600.0,
        description="A claimed escalation step returns to the queue if not done in this time.",
    )
    scheduler_poll_seconds: float = Field(
        default=0.5, description="Longest the scheduler sleeps before looking for due steps again."
    )
    notify_max_attempts: int = Field(default=10, description="Delivery attempts before a notification fails.")
    notify_retry_base_seconds: float = Field(
        default=1.0, description="First retry delay; it doubles on each failed attempt."
    )
    notify_retry_max_seconds: float = Field(default=300.0, description="Longest delay between retries.")
    notify_poll_seconds: float = Field(
        default=0.5, description="Longest the dispatcher sleeps before looking for due notifications."
    )
    notify_send_timeout_seconds: float = Field(
        default=30.0,
        ge=0.1,
        le=600.0,
        description="Longest one send may take; past it the page counts as failed with an unknown outcome "
        "(retried on at-least-once channels, recorded unknown on at-most-once ones).",
    )
    notify_lease_seconds: float = Field(
        default=10.0,
        ge=1.0,
        le=3600.0,
        description="A notification being sent is leased this long, renewed while its send runs; "
        "a dead replica's sends are taken over once it runs out.",
    )
    # Notification channels (plugins/oncall_channels)
    webhook_timeout_seconds: float = Field(
        default=10.0, description="Whole-request timeout of one webhook delivery (connect, send, answer)."
    )
    # NoDecode: the env value is "10.0.0.0/8,192.168.1.0/24", not JSON; the validator splits it.
    webhook_allowed_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs webhooks may reach although private/loopback/link-local (SSRF guard exceptions).",
    )
    smtp_host: str = Field(default="", description="SMTP relay for the email channel; empty disables email.")
    smtp_port: int = Field(default=25, description="SMTP relay port.")
    smtp_from: str = Field(default="oncall@localhost", description="Envelope and From: address of pages.")
    smtp_username: str = Field(default="", description="SMTP AUTH user; empty skips AUTH.")
    smtp_password: SecretStr = Field(default=SecretStr(""), description="SMTP AUTH password.")
    smtp_starttls: bool = Field(default=False, description="Upgrade the SMTP connection with STARTTLS.")
    smtp_timeout_seconds: float = Field(default=10.0, description="Timeout of each SMTP socket operation.")
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Server processes sharing the gRPC and HTTP ports (SO_REUSEPORT), each with every role.",
    )
    # NoDecode: "oncall_channels,example_uptime" is a comma list, not JSON; the validator splits it.
    block_plugins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Plugin (entry point) names not to load."
    )
    # NoDecode: ONCALL_ROLES=grpc,bus is a comma list, not JSON; the validator splits it.
    roles: Annotated[tuple[str, ...], NoDecode] = Field(
        default=ALL_ROLES, description="Roles this process runs."
    )

    @field_validator("roles", mode="before")
    @classmethod
    def _split_roles(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, (list, tuple)):
            unknown = sorted(set(value) - set(ALL_ROLES))
            if unknown:
                raise ValueError(f"unknown roles {unknown}; choose from {list(ALL_ROLES)}")
        return value

    @field_validator("block_plugins", mode="before")
    @classmethod
    def _split_plugins(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_allowed_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            # Canonical form ("10.1.2.3" -> "10.1.2.3/32"); a bad CIDR raises ValueError, naming it.
            return [str(ipaddress.ip_network(str(part).strip(), strict=False)) for part in value]
        return value

    @model_validator(mode="after")
    def _https_links_with_tls(self) -> Settings:
        # The default link base follows the listener's scheme; a configured one is left as given.
        if self.tls_cert_file.strip() and "public_url" not in self.model_fields_set:
            self.public_url = "https://" + self.public_url.removeprefix("http://")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The async SQLAlchemy URL to use."""
        if not self.database_url:
            return f"sqlite+aiosqlite:///{(self.data_dir / 'oncall.db').resolve()}"
        return normalize_database_url(self.database_url)


def normalize_database_url(url: str) -> str:
    """Accept the URLs operators paste (``postgresql://``, ``sqlite:///``) and pick the async driver."""
    for prefix, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(prefix):
            return driver + url[len(prefix) :]
    return url


def split_host_port(listen: str) -> tuple[str, int]:
    """Parse ``host:port`` (``[::1]:80`` too)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)
