"""Claimed outbox rows made ready to send: each one's page, destination, channel and delivery semantics.

A row handed over by the transaction that wrote it carries its content (the page then says what
that transaction saw); the others are read in one query, as the incident is now.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine

from oncall_server.hookspecs import AT_LEAST_ONCE, AT_MOST_ONCE, Channel, Destination, Page, delivery_of
from oncall_server.paging.outbox import PAGE, OutboxRow, incident_url
from oncall_server.severity import Severity
from oncall_server.storage.engine import single_read
from oncall_server.storage.models import ContactMethod, Incident, Notification, Service, User

log = logging.getLogger(__name__)

# What a page says, for a batch of claimed rows in one query (user and method may have been deleted).
_CONTENT = (
    select(
        Notification.id,
        Incident.id.label("incident_id"),
        Incident.tenant_id,
        Incident.service_id,
        Incident.title,
        Incident.severity,
        Incident.status,
        Incident.description,
        Incident.source,
        Incident.source_ref,
        Incident.details,
        Service.name.label("service_name"),
        User.id.label("user_id"),
        User.name.label("user_name"),
        User.email.label("user_email"),
        ContactMethod.id.label("contact_method_id"),
        ContactMethod.type.label("contact_type"),
        ContactMethod.address,
        ContactMethod.secret,
    )
    .join(Incident, Incident.id == Notification.incident_id)
    .outerjoin(Service, Service.id == Incident.service_id)
    .outerjoin(User, User.id == Notification.user_id)
    .outerjoin(ContactMethod, ContactMethod.id == Notification.contact_method_id)
    .where(Notification.id.in_(bindparam("ids", expanding=True)))
)


@dataclass(slots=True)
class Delivery:
    """One claimed row on its way out, and then what became of its send."""

    row: OutboxRow
    page: Page | None
    destination: Destination | None
    error: str = ""
    retryable: bool = True
    user_name: str = ""
    service_id: str = ""
    channel: Channel | None = None
    at_most_once: bool = True
    unknown: bool = False  # the send went out, its outcome did not come back


def _delivery_semantics(channel: Channel) -> str:
    try:
        return delivery_of(channel)
    except ValueError as exc:  # a plugin's typo: the safe reading, loudly
        log.error("%s; treated as %s", exc, AT_MOST_ONCE)
        return AT_MOST_ONCE


async def prepare_deliveries(
    engine: AsyncEngine, claimed: list[OutboxRow], channels: Mapping[str, Channel], public_url: str
) -> list[Delivery]:
    """Each row's page and destination: from the row when it was handed over with them, else read
    as the incident is now. A row whose user, contact method or channel is gone fails for good."""
    unknown = [row.id for row in claimed if row.content is None]
    content: dict[str, Any] = {}
    if unknown:
        async with single_read(engine) as conn:
            content = {row.id: row for row in await conn.execute(_CONTENT, {"ids": unknown})}
    out = []
    for row in claimed:
        found = row.content or content[row.id]
        if found.user_id is None or found.contact_method_id is None:
            out.append(
                Delivery(
                    row, None, None, "the user or contact method was deleted", False, "", found.service_id
                )
            )
            continue
        page = build_page(row, found, public_url)
        destination = Destination(found.contact_method_id, found.contact_type, found.address, found.secret)
        delivery = Delivery(row, page, destination, user_name=found.user_name, service_id=found.service_id)
        channel = channels.get(row.channel)
        if channel is None:
            delivery.error = f"no notification channel named {row.channel!r} is installed"
            delivery.retryable = False
        else:
            delivery.channel = channel
            delivery.at_most_once = _delivery_semantics(channel) != AT_LEAST_ONCE
        out.append(delivery)
    return out


def build_page(row: OutboxRow, content: Any, public_url: str) -> Page:
    """The message content the spec asks for, from the incident as it is now (a ``_CONTENT`` row)."""
    details = content.details or {}
    return Page(
        notification_id=row.id,
        kind=row.kind,
        tenant_id=content.tenant_id,
        incident_id=content.incident_id,
        incident_url=incident_url(public_url, content.incident_id),
        title=content.title,
        severity=Severity(content.severity).label,
        status=content.status,
        service_id=content.service_id,
        service_name=content.service_name or "",
        description=content.description,
        source=content.source,
        source_ref=content.source_ref,
        device_name=str(details.get("device_name", "")),
        detection_type=str(details.get("detection_type", "")),
        mitre_technique=str(details.get("mitre_technique", "")),
        recommended_action=str(details.get("recommended_action", "")),
        defend_url=str(details.get("defend_url", "")),
        tier=row.tier + 1 if row.kind == PAGE else 0,
        loop=row.loop,
        user_id=content.user_id,
        user_name=content.user_name,
        user_email=content.user_email,
        created_at=row.created_at,
    )
