"""Between storage rows and ``oncall.v1`` messages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.descriptor import EnumDescriptor

from oncall_server import json_codec
from oncall_server.api.v1 import alert_pb2, incident_pb2, integration_pb2, service_pb2
from oncall_server.configuration import services
from oncall_server.errors import InvalidArgument
from oncall_server.ingest.drops import DroppedAlert
from oncall_server.ingest.model import IngestResult
from oncall_server.ingest.routing_rules import RoutingRule, rules_to_json
from oncall_server.paging.outbox import incident_url
from oncall_server.severity import Severity
from oncall_server.storage import models

_V = TypeVar("_V", bound=int)
_V_co = TypeVar("_V_co", bound=int, covariant=True)


class ProtoEnum(Protocol[_V_co]):
    """A generated enum (``incident_pb2.IncidentStatus``)."""

    DESCRIPTOR: EnumDescriptor

    def Value(self, name: str) -> _V_co: ...


def enum_labels(enum: ProtoEnum[_V]) -> dict[str, _V]:
    """An ``oncall.v1`` enum by the lowercase labels storage uses (``INCIDENT_STATUS_TRIGGERED``
    is ``"triggered"``), from its descriptor: the names line up, so no map is written by hand.
    The ``*_UNSPECIFIED`` zero value has no label."""
    prefix = enum.DESCRIPTOR.values_by_number[0].name.removesuffix("UNSPECIFIED")
    return {
        v.name.removeprefix(prefix).lower(): enum.Value(v.name) for v in enum.DESCRIPTOR.values if v.number
    }


def by_number(labels: dict[str, _V]) -> dict[_V, str]:
    return {number: label for label, number in labels.items()}


INCIDENT_STATUS = enum_labels(incident_pb2.IncidentStatus)
INCIDENT_STATUS_NAME = by_number(INCIDENT_STATUS)
ALERT_STATE = enum_labels(alert_pb2.AlertState)
TIMELINE_KIND = enum_labels(incident_pb2.TimelineEntryKind)
CRITICALITY = enum_labels(service_pb2.Criticality)
CRITICALITY_NAME = by_number(CRITICALITY)
GROUPING = enum_labels(service_pb2.AlertGrouping)
GROUPING_NAME = by_number(GROUPING)
SEVERITY_OF = {number: Severity[label.upper()] for label, number in enum_labels(alert_pb2.Severity).items()}
"""``oncall.v1.Severity`` numbers to :class:`Severity`, matched by name."""


def timestamp(when: datetime | None) -> timestamp_pb2.Timestamp | None:
    if when is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def from_timestamp(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def duration_seconds(message: service_pb2.Service, field: str) -> int | None:
    if not message.HasField(field):  # type: ignore[arg-type]
        return None
    value: duration_pb2.Duration = getattr(message, field)
    return int(value.ToTimedelta().total_seconds())


def duration(seconds: int | None) -> duration_pb2.Duration | None:
    if seconds is None:
        return None
    return duration_pb2.Duration(seconds=seconds)


def _alert_fields(row: models.Incident | models.Alert) -> dict[str, Any]:
    """The fields an incident has as an alert has them (an incident takes them from its first alert)."""
    return {
        "id": row.id,
        "service_id": row.service_id,
        "title": row.title,
        "severity": row.severity,
        "source": row.source,
        "source_ref": row.source_ref,
        "dedup_key": row.dedup_key or "",
        "description": row.description,
        "details": row.details,
    }


def incident(row: models.Incident, public_url: str) -> incident_pb2.Incident:
    return incident_pb2.Incident(
        **_alert_fields(row),
        status=INCIDENT_STATUS[row.status],
        alert_count=row.alert_count,
        assigned_to=row.assigned_to,
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at),
        acknowledge_time=timestamp(row.acknowledged_at),
        acknowledged_by=row.acknowledged_by,
        resolve_time=timestamp(row.resolved_at),
        resolved_by=row.resolved_by,
        resolution_summary=row.resolution_summary,
        incident_url=incident_url(public_url, row.id),
    )


def alert(row: models.Alert) -> alert_pb2.Alert:
    return alert_pb2.Alert(
        **_alert_fields(row),
        incident_id=row.incident_id or "",
        integration_id=row.integration_id,
        state=ALERT_STATE[row.state],
        occurrence_count=row.occurrence_count,
        first_seen_time=timestamp(row.first_seen_at),
        last_seen_time=timestamp(row.last_seen_at),
        raw_payload=row.latest_raw_payload or row.raw_payload,
        resolve_time=timestamp(row.resolved_at),
    )


def timeline_entry(row: models.TimelineEntry) -> incident_pb2.TimelineEntry:
    return incident_pb2.TimelineEntry(
        id=row.id,
        incident_id=row.incident_id,
        kind=TIMELINE_KIND.get(row.kind, incident_pb2.TIMELINE_ENTRY_KIND_UNSPECIFIED),
        actor=row.actor,
        message=row.message,
        create_time=timestamp(row.created_at),
        details=row.details,
    )


def routing_rule(rule: RoutingRule) -> integration_pb2.RoutingRule:
    from google.protobuf import json_format

    message = integration_pb2.RoutingRule()
    data = rules_to_json([rule])[0]
    condition = next(k for k in data if k != "name")
    body = dict(data[condition])
    if "minimum_severity" in body:
        body["minimum_severity"] = "SEVERITY_" + str(body["minimum_severity"]).upper()
    if "operator" in body:
        body["operator"] = "FIELD_MATCH_OPERATOR_" + str(body["operator"]).upper()
    json_format.ParseDict(
        {"name": data.get("name", ""), condition: body}, message, ignore_unknown_fields=False
    )
    return message


def routing_rules_from(messages: list[integration_pb2.RoutingRule]) -> list[dict[str, object]]:
    """Proto rules to the JSON form routing_rules.parse_rules validates (with field names)."""
    from google.protobuf import json_format

    return [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in messages]


def integration(row: models.Integration) -> integration_pb2.Integration:
    from oncall_server.ingest.routing_rules import parse_rules

    return integration_pb2.Integration(
        id=row.id,
        service_id=row.service_id,
        name=row.name,
        type=row.type,
        routing_rules=[routing_rule(r) for r in parse_rules(row.routing_rules)],
        key_prefix=row.key_prefix,
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at),
    )


def dropped_alert(drop: DroppedAlert) -> integration_pb2.DroppedAlert:
    return integration_pb2.DroppedAlert(
        integration_id=drop.integration_id,
        rule_index=drop.rule_index,
        rule=drop.rule,
        reason=drop.reason,
        title=drop.title,
        drop_time=timestamp(drop.dropped_at),
    )


def service(row: models.Service) -> service_pb2.Service:
    return service_pb2.Service(
        id=row.id,
        name=row.name,
        description=row.description,
        criticality=CRITICALITY[row.criticality],
        escalation_policy_id=row.escalation_policy_id or "",
        alert_grouping=GROUPING[row.alert_grouping],
        alert_grouping_timeout_minutes=row.alert_grouping_timeout_minutes,
        auto_resolve_timeout=duration(row.auto_resolve_seconds),
        acknowledgement_timeout=duration(row.acknowledgement_timeout_seconds),
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at),
        resolve_from_source=row.resolve_from_source,
        acknowledge_from_source=row.acknowledge_from_source,
    )


def service_event(row: models.ServiceEvent) -> service_pb2.ServiceEvent:
    return service_pb2.ServiceEvent(
        id=row.id,
        service_id=row.service_id,
        integration_id=row.integration_id,
        summary=row.summary,
        source=row.source,
        details=string_details(row.details),
        occurred_time=timestamp(row.occurred_at),
        create_time=timestamp(row.created_at),
    )


def string_details(details: dict[str, Any] | None) -> dict[str, str]:
    """Stored details as a ``map<string, string>``: strings as they are, other values as JSON text."""
    return {str(k): v if isinstance(v, str) else json_codec.dumps(v) for k, v in (details or {}).items()}


# Settings that are on unless a create says otherwise (proto3 optional: unset is not false).
_ON_BY_DEFAULT = ("resolve_from_source", "acknowledge_from_source")
SERVICE_FIELDS = (
    "name",
    "description",
    "criticality",
    "escalation_policy_id",
    "alert_grouping",
    "alert_grouping_timeout_minutes",
    "auto_resolve_timeout",
    "acknowledgement_timeout",
    *_ON_BY_DEFAULT,
)


def service_changes(message: service_pb2.Service, paths: list[str] | None) -> dict[str, object]:
    """The writable fields of a Service message as ServiceFields values, limited to ``paths``."""
    creating = not paths
    paths = paths or list(SERVICE_FIELDS)
    unknown = sorted(set(paths) - set(SERVICE_FIELDS))
    if unknown:
        raise InvalidArgument.field("update_mask", f"cannot update {unknown[0]!r}")
    out: dict[str, object] = {}
    for path in paths:
        if path == "criticality":
            out[path] = CRITICALITY_NAME.get(message.criticality, "high")
        elif path == "alert_grouping":
            out[path] = GROUPING_NAME.get(message.alert_grouping, "none")
        elif path == "escalation_policy_id":
            out[path] = message.escalation_policy_id or None
        elif path == "auto_resolve_timeout":
            out["auto_resolve_seconds"] = duration_seconds(message, path)
        elif path == "acknowledgement_timeout":
            out["acknowledgement_timeout_seconds"] = duration_seconds(message, path)
        elif path in _ON_BY_DEFAULT:  # unset: on for a create, off for an update naming it
            out[path] = getattr(message, path) if message.HasField(path) else creating  # type: ignore[arg-type]
        else:
            out[path] = getattr(message, path)
    return out


def service_fields(message: service_pb2.Service) -> services.ServiceFields:
    return services.ServiceFields(**service_changes(message, None))  # type: ignore[arg-type]


def ingest_result(result: IngestResult) -> object:
    from oncall_server.api.v1 import ingest_service_pb2

    return ingest_service_pb2.IngestResult(
        outcome=int(result.outcome),  # type: ignore[arg-type]
        alert_id=result.alert_id,
        incident_id=result.incident_id,
        dedup_key=result.dedup_key,
    )
