"""The statements an ingest batch runs, built once (per dialect where they differ).

One statement object per shape lets SQLAlchemy, and ``storage.bulk``, cache its compiled form
instead of compiling a new statement for every batch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, func, select

from oncall_server.incidents.model import IncidentStatus
from oncall_server.storage import dialects
from oncall_server.storage.models import Alert, AlertDelivery, Incident

MAX_DELIVERIES_PER_ALERT = 20

# An alert keeps its newest MAX_DELIVERIES_PER_ALERT deliveries (a storm merges into one alert).
PRUNE_DELIVERIES = delete(AlertDelivery).where(
    AlertDelivery.alert_id == bindparam("alert_id"),
    AlertDelivery.id
    < select(AlertDelivery.id)
    .where(AlertDelivery.alert_id == bindparam("alert_id"))
    .order_by(AlertDelivery.id.desc())
    .offset(MAX_DELIVERIES_PER_ALERT - 1)
    .limit(1)
    .scalar_subquery(),
)


@dataclass(frozen=True, slots=True)
class Statements:
    """The writer's upserts, in the dialect's ``INSERT ... ON CONFLICT``.

    They run with a list of rows (``storage.bulk.execute_returning``, or SQLAlchemy's
    insertmanyvalues), never as a new multi-row statement built and compiled per batch.
    """

    upsert_alerts: Any
    upsert_incidents: Any
    insert_idempotent: Any


@functools.cache
def statements(dialect: str) -> Statements:
    """The upserts for a dialect name; an unsupported one raises ``Unavailable``."""
    database = dialects.named(dialect)
    alerts = database.insert(Alert)
    upsert_alerts = alerts.on_conflict_do_update(
        index_elements=[Alert.service_id, Alert.open_dedup_key],
        set_={
            "occurrence_count": Alert.occurrence_count + alerts.excluded.occurrence_count,
            "last_seen_at": alerts.excluded.last_seen_at,
            "latest_raw_payload": func.coalesce(
                alerts.excluded.latest_raw_payload, alerts.excluded.raw_payload
            ),
        },
    ).returning(Alert.id, Alert.service_id, Alert.open_dedup_key, Alert.incident_id, Alert.occurrence_count)
    incidents = database.insert(Incident)
    upsert_incidents = incidents.on_conflict_do_update(
        index_elements=[Incident.id],
        set_={
            "alert_count": Incident.alert_count + incidents.excluded.alert_count,
            "last_alert_at": incidents.excluded.last_alert_at,
            "updated_at": incidents.excluded.updated_at,
        },
        where=Incident.status != IncidentStatus.RESOLVED.value,
    ).returning(Incident.id, Incident.alert_count)
    insert_idempotent = (
        database.insert(Alert)
        .on_conflict_do_nothing(index_elements=[Alert.integration_id, Alert.idempotency_key])
        .returning(Alert.id)
    )
    return Statements(upsert_alerts, upsert_incidents, insert_idempotent)
