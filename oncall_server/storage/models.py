"""SQLAlchemy 2 models.

SQL is the source of truth; Redis holds only what can be rebuilt from these
tables. Two constraints carry the correctness of ingest on their own, even if
Redis is wrong or empty:

* ``uq_alerts_service_id_open_dedup_key``: ``open_dedup_key`` equals
  ``dedup_key`` while an alert is open and is NULL once it is resolved, so a
  plain unique constraint (NULLs are distinct on both databases) allows
  exactly one open alert per dedup key and service — the approach Grafana
  OnCall takes.
* the incidents primary key: the writer upserts incident rows, so whichever
  process commits first creates the incident and the others only count.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID = String(36)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both databases (SQLite has no time zones)."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)

    def bind_processor(self, dialect: Dialect) -> Callable[[datetime | None], Any] | None:
        """A converter that remembers its last two values (:func:`remember_last`): a batch binds
        the same ``now`` to most rows.

        On SQLite it is one C-level ``isoformat`` instead of two Python steps per value:
        SQLAlchemy's SQLite DATETIME formats each with a ``%``-dict in Python after
        :meth:`process_bind_param`. The text is the same as its default storage format
        (``YYYY-MM-DD HH:MM:SS.ffffff``), so stored rows and comparisons are unchanged.
        """
        if dialect.name == "sqlite":

            def to_sqlite_text(value: datetime | None) -> str | None:
                if value is None:
                    return None
                if value.tzinfo is None:
                    raise ValueError("naive datetime given to a UTC column")
                return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

            return remember_last(to_sqlite_text)
        convert = super().bind_processor(dialect)
        return None if convert is None else remember_last(convert)


def remember_last(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``convert`` with a two-entry memo keyed by identity (for immutable values only).

    Ingest binds the same two objects to most timestamp columns of a batch (the batch's
    ``now`` and the request's receive time), alternating within a row: converting them once
    per value took ~9 % of server CPU under batched webhook load. The memo holds references
    to its keys, so a key cannot be freed and its id reused; it is one tuple swapped
    atomically, so threads sharing the converter never pair a key with another's value.
    """
    memo: tuple[Any, Any, Any, Any] = (object(), None, object(), None)

    def remembering(value: Any) -> Any:
        nonlocal memo
        key, converted, older_key, older = current = memo
        if value is key:
            return converted
        if value is older_key:
            memo = (older_key, older, key, converted)
            return older
        converted = convert(value)
        memo = (value, converted, current[0], current[1])
        return converted

    return remembering


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


# The shared columns, declared once. sort_order keeps them first in each table, as they were.
PrimaryKey = Annotated[str, mapped_column(ID, primary_key=True, sort_order=-2)]
TenantKey = Annotated[str, mapped_column(ID, ForeignKey("tenants.id"), sort_order=-1)]


class HasId:
    """A UUIDv7 text primary key (every table but ``alert_deliveries``)."""

    id: Mapped[PrimaryKey]


class HasCreatedAt:
    created_at: Mapped[datetime]


class TenantOwned(HasId):
    """A row that belongs to a tenant and goes when the tenant's data is deleted."""

    tenant_id: Mapped[TenantKey]


class Tenant(HasId, HasCreatedAt, Base):
    """A customer organisation (an MSP); every other row belongs to one.

    A deactivated tenant (``deactivated_at`` set, by ``oncall-server tenant deactivate``) keeps its
    data, but its API tokens and integration keys are refused and its escalations stopped.
    """

    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(200), unique=True)
    deactivated_at: Mapped[datetime | None]


class ApiToken(TenantOwned, HasCreatedAt, Base):
    """An admin API token, scoped to one tenant. Only its digest is stored."""

    __tablename__ = "api_tokens"

    tenant_id: Mapped[TenantKey] = mapped_column(index=True)
    name: Mapped[str] = mapped_column(String(200))
    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
    revoked_at: Mapped[datetime | None]


class Service(TenantOwned, HasCreatedAt, Base):
    """A paging target; its settings decide grouping and escalation."""

    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    criticality: Mapped[str] = mapped_column(String(16), default="high")
    escalation_policy_id: Mapped[str | None] = mapped_column(ID)
    alert_grouping: Mapped[str] = mapped_column(String(16), default="none")
    alert_grouping_timeout_minutes: Mapped[int] = mapped_column(Integer, default=0)
    auto_resolve_seconds: Mapped[int | None] = mapped_column(Integer)
    acknowledgement_timeout_seconds: Mapped[int | None] = mapped_column(Integer)
    # A source's resolve events resolve the incident once none of its alerts is open; its
    # acknowledge events acknowledge the incident.
    resolve_from_source: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    acknowledge_from_source: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    updated_at: Mapped[datetime]


class Integration(TenantOwned, HasCreatedAt, Base):
    """An alert source: a key bound to a service, an adapter type and routing rules."""

    __tablename__ = "integrations"

    tenant_id: Mapped[TenantKey] = mapped_column(index=True)
    service_id: Mapped[str] = mapped_column(ID, ForeignKey("services.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(64), default="webhook")
    key_digest: Mapped[str | None] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16), default="")
    routing_rules: Mapped[list[Any]] = mapped_column(default=list)
    # Where its payloads keep their fields (ingest/field_mapping.py); NULL: the adapter's own.
    field_mapping: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    updated_at: Mapped[datetime]
    deleted_at: Mapped[datetime | None]


class MaintenanceWindow(TenantOwned, HasCreatedAt, Base):
    """While one is active, a service's alerts are stored suppressed and page nobody."""

    __tablename__ = "maintenance_windows"
    __table_args__ = (Index(None, "service_id", "end_at"),)

    service_id: Mapped[str] = mapped_column(ID, ForeignKey("services.id"))
    start_at: Mapped[datetime]
    end_at: Mapped[datetime]
    reason: Mapped[str] = mapped_column(Text, default="")


class Incident(TenantOwned, HasCreatedAt, Base):
    """The unit that is paged, acknowledged and resolved."""

    __tablename__ = "incidents"
    __table_args__ = (
        # Named: the convention names an index by its first column, and both start with tenant_id.
        Index("ix_incidents_tenant_id_status", "tenant_id", "status", "id"),
        Index(None, "tenant_id", "id"),
        Index(None, "service_id", "status"),
    )

    service_id: Mapped[str] = mapped_column(ID, ForeignKey("services.id"))
    title: Mapped[str] = mapped_column(Text)
    severity: Mapped[int] = mapped_column(SmallInteger)
    status: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(64), default="")
    source_ref: Mapped[str] = mapped_column(String(255), default="")
    dedup_key: Mapped[str | None] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    alert_count: Mapped[int] = mapped_column(Integer, default=1)
    assigned_to: Mapped[str] = mapped_column(String(200), default="")
    updated_at: Mapped[datetime]
    last_alert_at: Mapped[datetime]
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str] = mapped_column(String(200), default="")
    resolved_at: Mapped[datetime | None]
    resolved_by: Mapped[str] = mapped_column(String(200), default="")
    resolution_summary: Mapped[str] = mapped_column(Text, default="")
    # Escalation state; SQL holds it so the scheduler's Redis set can be rebuilt.
    # The policy as it was when escalation started: later edits don't change it.
    escalation_snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Fencing token: bumped on every (re)start and stop, so a stale step finds a mismatch.
    escalation_run: Mapped[int] = mapped_column(Integer, default=1)
    # The next step to run: loop * len(tiers) + tier; ACK_TIMEOUT_STEP while acknowledged.
    escalation_step: Mapped[int] = mapped_column(Integer, default=0)
    # When the next step is due; NULL when nothing is pending.
    escalation_due_at: Mapped[datetime | None] = mapped_column(index=True)


class Alert(TenantOwned, Base):
    """One alert; repeated deliveries with its dedup key are merged into it."""

    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint("service_id", "open_dedup_key"),
        UniqueConstraint("integration_id", "idempotency_key"),
        Index(None, "incident_id", "id"),
    )

    service_id: Mapped[str] = mapped_column(ID, ForeignKey("services.id"))
    integration_id: Mapped[str] = mapped_column(ID)
    # Deferred: a batch inserts alerts before the incidents they open.
    incident_id: Mapped[str | None] = mapped_column(
        ID, ForeignKey("incidents.id", deferrable=True, initially="DEFERRED")
    )
    dedup_key: Mapped[str | None] = mapped_column(String(255))
    open_dedup_key: Mapped[str | None] = mapped_column(String(255))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    title: Mapped[str] = mapped_column(Text)
    severity: Mapped[int] = mapped_column(SmallInteger)
    state: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(64), default="")
    source_ref: Mapped[str] = mapped_column(String(255), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    occurrence_count: Mapped[int] = mapped_column(Integer, default=1)
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    # The first delivery, byte for byte; merged deliveries go to alert_deliveries.
    raw_payload: Mapped[str] = mapped_column(Text, default="")
    latest_raw_payload: Mapped[str | None] = mapped_column(Text)
    resolved_at: Mapped[datetime | None]


class AlertDelivery(Base):
    """Raw deliveries merged into an alert; only the newest MAX_DELIVERIES_PER_ALERT are kept."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (Index(None, "alert_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    alert_id: Mapped[str] = mapped_column(ID, ForeignKey("alerts.id"))
    received_at: Mapped[datetime]
    raw_payload: Mapped[str] = mapped_column(Text)


class TimelineEntry(HasId, HasCreatedAt, Base):
    """Who did what to an incident, and when."""

    __tablename__ = "timeline_entries"
    __table_args__ = (Index(None, "incident_id", "id"),)

    tenant_id: Mapped[str] = mapped_column(ID)
    incident_id: Mapped[str] = mapped_column(
        ID, ForeignKey("incidents.id", deferrable=True, initially="DEFERRED")
    )
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(200), default="system")
    message: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class User(TenantOwned, HasCreatedAt, Base):
    """A person who can be paged."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("tenant_id", "email"),)

    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    updated_at: Mapped[datetime]


class ContactMethod(TenantOwned, HasCreatedAt, Base):
    """Where a user is reached: ``type`` names a notification channel (email, webhook, log, plugins')."""

    __tablename__ = "contact_methods"
    __table_args__ = (Index(None, "user_id", "id"),)

    user_id: Mapped[str] = mapped_column(ID, ForeignKey("users.id"))
    type: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(Text)
    # Webhook signing secret: kept in the clear because the sender must sign with it.
    secret: Mapped[str] = mapped_column(String(128), default="")


class NotificationRule(TenantOwned, HasCreatedAt, Base):
    """A user wants ``contact_method`` used ``delay_seconds`` after they are paged."""

    __tablename__ = "notification_rules"
    __table_args__ = (Index(None, "user_id", "id"),)

    user_id: Mapped[str] = mapped_column(ID, ForeignKey("users.id"))
    contact_method_id: Mapped[str] = mapped_column(ID, ForeignKey("contact_methods.id"))
    delay_seconds: Mapped[int] = mapped_column(Integer, default=0)


class OnCallSchedule(TenantOwned, HasCreatedAt, Base):
    """Rotations (layers) and overrides; ``layers``/``overrides`` are the JSON of schedules.py's types."""

    __tablename__ = "schedules"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    name: Mapped[str] = mapped_column(String(200))
    time_zone: Mapped[str] = mapped_column(String(64))
    layers: Mapped[list[Any]] = mapped_column(default=list)
    overrides: Mapped[list[Any]] = mapped_column(default=list)
    updated_at: Mapped[datetime]


class EscalationPolicy(TenantOwned, HasCreatedAt, Base):
    """Ordered tiers of targets; ``tiers`` is ``[{"delay_seconds": n, "targets": [{"type", "id"}]}]``."""

    __tablename__ = "escalation_policies"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    tiers: Mapped[list[Any]] = mapped_column(default=list)
    # How many more times the whole policy runs after the first pass.
    repeat_count: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime]


class Notification(HasId, HasCreatedAt, Base):
    """The outbox: one row per page (or other message) to one contact method.

    Written in the transaction of the state change that causes it; the
    dispatcher sends it afterwards. ``dedup_key`` is unique, so running an
    escalation step twice cannot page the same person twice.
    """

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("dedup_key"),
        Index(None, "status", "next_attempt_at"),
        Index(None, "incident_id", "status"),
    )

    tenant_id: Mapped[str] = mapped_column(ID)
    incident_id: Mapped[str] = mapped_column(ID, ForeignKey("incidents.id"))
    # "page" (escalation; fenced by escalation_run) or "assigned" (a reassignment's page).
    kind: Mapped[str] = mapped_column(String(16))
    # "{incident}:{run}:{step}:{user}:{contact method}" for pages, so a rerun step is a no-op.
    dedup_key: Mapped[str] = mapped_column(String(255))
    escalation_run: Mapped[int] = mapped_column(Integer)
    tier: Mapped[int] = mapped_column(Integer)
    loop: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[str] = mapped_column(ID)
    contact_method_id: Mapped[str] = mapped_column(ID)
    channel: Mapped[str] = mapped_column(String(64))
    # "pending" -> "sending" (leased) -> "sent" | "failed"; or "cancelled" by an ack/resolve.
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    last_error: Mapped[str] = mapped_column(Text, default="")
    sent_at: Mapped[datetime | None]


class ServiceEvent(TenantOwned, HasCreatedAt, Base):
    """A change event (a deploy, a configuration change) on a service's timeline: never an incident."""

    __tablename__ = "service_events"
    __table_args__ = (Index(None, "service_id", "id"),)

    service_id: Mapped[str] = mapped_column(ID, ForeignKey("services.id"))
    integration_id: Mapped[str] = mapped_column(ID)
    summary: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(255), default="")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    raw_payload: Mapped[str] = mapped_column(Text, default="")
    occurred_at: Mapped[datetime]
