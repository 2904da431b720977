"""Between storage rows and ``oncall.v1`` messages."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from google.protobuf import descriptor, duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from oncall_server import json_codec
from oncall_server.api.v1 import alert_pb2, incident_pb2, integration_pb2, service_pb2
from oncall_server.configuration import services
from oncall_server.errors import InvalidArgument
from oncall_server.ingest.drops import DroppedAlert
from oncall_server.ingest.model import IngestResult
from oncall_server.ingest.routing_rules import RoutingRule, rules_to_json
from oncall_server.paging.outbox import incident_url
from oncall_server.storage import models

INCIDENT_STATUS = {
    "triggered": incident_pb2.INCIDENT_STATUS_TRIGGERED,
    "acknowledged": incident_pb2.INCIDENT_STATUS_ACKNOWLEDGED,
    "resolved": incident_pb2.INCIDENT_STATUS_RESOLVED,
}
INCIDENT_STATUS_NAME = {v: k for k, v in INCIDENT_STATUS.items()}
ALERT_STATE = {
    "triggered": alert_pb2.ALERT_STATE_TRIGGERED,
    "acknowledged": alert_pb2.ALERT_STATE_ACKNOWLEDGED,
    "grouped": alert_pb2.ALERT_STATE_GROUPED,
    "resolved": alert_pb2.ALERT_STATE_RESOLVED,
    "suppressed": alert_pb2.ALERT_STATE_SUPPRESSED,
}
TIMELINE_KIND = {
    name.removeprefix("TIMELINE_ENTRY_KIND_").lower(): value
    for name, value in incident_pb2.TimelineEntryKind.items()
    if value
}
CRITICALITY = {
    "critical": service_pb2.CRITICALITY_CRITICAL,
    "high": service_pb2.CRITICALITY_HIGH,
    "medium": service_pb2.CRITICALITY_MEDIUM,
    "low": service_pb2.CRITICALITY_LOW,
}
CRITICALITY_NAME = {v: k for k, v in CRITICALITY.items()}
GROUPING = {"none": service_pb2.ALERT_GROUPING_NONE, "time": service_pb2.ALERT_GROUPING_TIME}
GROUPING_NAME = {v: k for k, v in GROUPING.items()}


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


def incident(row: models.Incident, public_url: str) -> incident_pb2.Incident:
    return incident_pb2.Incident(
        id=row.id,
        service_id=row.service_id,
        title=row.title,
        severity=row.severity,  # type: ignore[arg-type]
        status=INCIDENT_STATUS[row.status],
        source=row.source,
        source_ref=row.source_ref,
        dedup_key=row.dedup_key or "",
        description=row.description,
        details=row.details,
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
        id=row.id,
        incident_id=row.incident_id or "",
        service_id=row.service_id,
        integration_id=row.integration_id,
        title=row.title,
        severity=row.severity,  # type: ignore[arg-type]
        state=ALERT_STATE[row.state],
        dedup_key=row.dedup_key or "",
        source=row.source,
        source_ref=row.source_ref,
        description=row.description,
        details=row.details,
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
    )


SERVICE_FIELDS = (
    "name",
    "description",
    "criticality",
    "escalation_policy_id",
    "alert_grouping",
    "alert_grouping_timeout_minutes",
    "auto_resolve_timeout",
    "acknowledgement_timeout",
)


def service_changes(message: service_pb2.Service, paths: list[str] | None) -> dict[str, object]:
    """The writable fields of a Service message as ServiceFields values, limited to ``paths``."""
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


# --- request checks the servicers rely on -------------------------------------------------------
#
# The interceptor runs :func:`check_request` on every request message before its servicer sees
# it, so what protobuf lets through but no servicer can use is refused as INVALID_ARGUMENT naming
# the field: enum numbers outside the enum (proto3 enums are open), timestamps and durations out
# of their documented range (converting them raised), JSON text nested deeper than the JSON
# limit (``raw_payload``: the standard parser recursed until RecursionError), and messages nested
# deeper than that limit. Each message type's checks are worked out once from its descriptor.

JSON_TEXT_FIELDS = frozenset({"raw_payload"})
_MIN_TIMESTAMP_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
_MAX_TIMESTAMP_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
_MAX_DURATION_SECONDS = 315_576_000_000  # 10,000 years
_NANOS = 1_000_000_000
_Check = tuple[str, str, bool, Any]  # field name, kind, repeated, kind's detail


@functools.cache
def _checks(message_type: descriptor.Descriptor) -> tuple[_Check, ...]:
    _checks_pending.add(message_type.full_name)
    try:
        out: list[_Check] = []
        for field in message_type.fields:
            repeated = field.is_repeated
            enum, sub = field.enum_type, field.message_type
            if enum is not None:
                out.append((field.name, "enum", repeated, (enum.name, frozenset(enum.values_by_number))))
            elif field.type == descriptor.FieldDescriptor.TYPE_STRING and field.name in JSON_TEXT_FIELDS:
                out.append((field.name, "json", repeated, None))
            elif sub is None:
                continue
            elif sub.GetOptions().map_entry:
                value = sub.fields_by_name["value"].message_type
                if value is not None and _needs_checks(value):
                    out.append((field.name, "map", False, None))
            elif sub.full_name == "google.protobuf.Timestamp":
                out.append((field.name, "timestamp", repeated, None))
            elif sub.full_name == "google.protobuf.Duration":
                out.append((field.name, "duration", repeated, None))
            elif _needs_checks(sub):
                out.append((field.name, "message", repeated, None))
        return tuple(out)
    finally:
        _checks_pending.discard(message_type.full_name)


_checks_pending: set[str] = set()


def _needs_checks(message_type: descriptor.Descriptor) -> bool:
    # A type that (indirectly) contains itself is checked: its instances are finite.
    return message_type.full_name in _checks_pending or bool(_checks(message_type))


def check_request(message: Message, path: str = "") -> None:
    """INVALID_ARGUMENT naming the first field no servicer could use (see above); ``path`` prefixes
    the field names (``requests[2]`` for the third message of a stream)."""
    _check(message, path, 1)


def _check(message: Message, path: str, depth: int) -> None:
    checks = _checks(message.DESCRIPTOR)
    if not checks:
        return
    if depth > json_codec.MAX_REQUEST_DEPTH:
        raise InvalidArgument.field(path, f"is nested more than {json_codec.MAX_REQUEST_DEPTH} levels deep")
    for name, kind, repeated, detail in checks:
        where = f"{path}.{name}" if path else name
        if kind == "map":
            for key, item in getattr(message, name).items():
                _check(item, f"{where}[{key!r}]", depth + 1)
            continue
        if repeated:
            for index, item in enumerate(getattr(message, name)):
                _check_value(kind, detail, item, f"{where}[{index}]", depth)
        elif kind in ("enum", "json") or message.HasField(name):
            _check_value(kind, detail, getattr(message, name), where, depth)


def _check_value(kind: str, detail: Any, value: Any, where: str, depth: int) -> None:
    if kind == "enum":
        enum_name, known = detail
        if value not in known:
            raise InvalidArgument.field(where, f"is not a known {enum_name} value ({value})")
    elif kind == "json":
        if value:
            json_codec.check_json_depth(value, where)
    elif kind == "message":
        _check(value, where, depth + 1)
    elif kind == "timestamp":
        if not (
            _MIN_TIMESTAMP_SECONDS <= value.seconds <= _MAX_TIMESTAMP_SECONDS and 0 <= value.nanos < _NANOS
        ):
            raise InvalidArgument.field(where, "must be a time between years 1 and 9999")
    elif kind == "duration":
        seconds, nanos = value.seconds, value.nanos
        if not (
            abs(seconds) <= _MAX_DURATION_SECONDS
            and abs(nanos) < _NANOS
            and (seconds == 0 or nanos == 0 or (seconds > 0) == (nanos > 0))
        ):
            raise InvalidArgument.field(where, "must be a duration within 10,000 years")
