"""``oncall-server incidents ...``: the night shift's commands, through the gRPC API with an API token,
as any client would. Tables for people, proto3 JSON with ``--json``; docs/cli.md.

The actor recorded for an acknowledgement, resolution, reassignment or note is the token's name:
the CLI never sends the requests' free-text ``actor``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import unicodedata
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from oncall_server.api.v1 import alert_pb2, incident_pb2, incident_service_pb2, incident_service_pb2_grpc
from oncall_server.runtime.commands.api import EXIT_OK, EXIT_UNAVAILABLE, CliError, Connection, connection

INCIDENT_STATUSES = ("triggered", "acknowledged", "resolved")
SEVERITIES = ("critical", "high", "medium", "low", "info")
MAX_PAGE = 500  # ListIncidents' largest page


# --- printing -----------------------------------------------------------------------------------


def to_dict(message: Message) -> dict[str, Any]:
    """Proto3 JSON with the .proto field names (as ``incidents list --json`` always printed)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def print_json(data: Any, *, compact: bool = False) -> None:
    print(json.dumps(data, ensure_ascii=False) if compact else json.dumps(data, indent=2, ensure_ascii=False))


def clean(text: str) -> str:
    """One line of printable text: senders' titles must not move the cursor or recolour a terminal."""
    return "".join(" " if unicodedata.category(c).startswith("C") else c for c in text).strip()


def enum_name(value: int, enum: Any, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def status_of(incident: incident_pb2.Incident) -> str:
    return enum_name(incident.status, incident_pb2.IncidentStatus, "INCIDENT_STATUS_")


def severity_of(value: int) -> str:
    return enum_name(value, alert_pb2.Severity, "SEVERITY_")


def when(ts: Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return datetime.fromtimestamp(ts.seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def age(ts: Timestamp) -> str:
    if not ts.seconds:
        return "-"
    seconds = max(0, int(datetime.now(UTC).timestamp()) - ts.seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    rows = [[clean(cell) or "-" for cell in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in [list(headers), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=False)) + "  " + row[-1])


def incident_line(verb: str, incident: incident_pb2.Incident, extra: str = "") -> str:
    return clean(f"{verb} {incident.id} ({status_of(incident)}){extra}: {incident.title}")


# --- calls --------------------------------------------------------------------------------------


def _stub(channel: grpc.aio.Channel) -> incident_service_pb2_grpc.IncidentServiceAsyncStub:
    return incident_service_pb2_grpc.IncidentServiceStub(channel)


async def list_incidents(args: argparse.Namespace) -> int:
    """Newest first, filtered, up to ``--limit`` (paging through the API's pages)."""
    conn = connection(args)
    status = INCIDENT_STATUSES.index(args.status) + 1 if args.status else 0
    severity = SEVERITIES.index(args.severity) + 1 if args.severity else 0
    if args.limit < 1:
        raise CliError("--limit must be at least 1", 2)
    found: list[incident_pb2.Incident] = []
    token, more = "", False
    async with conn.channel() as channel:
        stub = _stub(channel)
        while len(found) < args.limit:
            response = await stub.ListIncidents(
                incident_service_pb2.ListIncidentsRequest(
                    status=status,  # type: ignore[arg-type]
                    severity=severity,  # type: ignore[arg-type]
                    service_id=args.service or "",
                    source=args.source or "",
                    page_size=min(MAX_PAGE, args.limit - len(found)),
                    page_token=token,
                ),
                metadata=conn.metadata,
                timeout=conn.timeout,
            )
            found.extend(response.incidents)
            token = response.next_page_token
            if not token:
                break
        more = bool(token)
    if args.json:
        print_json({"incidents": [to_dict(i) for i in found], "next_page_token": token})
        return EXIT_OK
    table(
        ["ID", "STATUS", "SEVERITY", "ALERTS", "AGE", "TITLE"],
        [[i.id, status_of(i), severity_of(i.severity), str(i.alert_count), age(i.create_time), i.title]
         for i in found],
    )  # fmt: skip
    if more:
        print(f"(more than {args.limit}: raise --limit or add filters)", file=sys.stderr)
    return EXIT_OK


async def _all_pages(call: Any, request: Any, field: str, conn: Connection) -> list[Any]:
    items: list[Any] = []
    while True:
        response = await call(request, metadata=conn.metadata, timeout=conn.timeout)
        items.extend(getattr(response, field))
        if not response.next_page_token:
            return items
        request.page_token = response.next_page_token


async def show(args: argparse.Namespace) -> int:
    """The incident; with ``--alerts`` its alerts (``--raw``: with their raw payloads); with
    ``--timeline`` its timeline."""
    conn = connection(args)
    want_alerts = args.alerts or args.raw
    async with conn.channel() as channel:
        stub = _stub(channel)
        incident = (
            await stub.GetIncident(
                incident_service_pb2.GetIncidentRequest(incident_id=args.id),
                metadata=conn.metadata,
                timeout=conn.timeout,
            )
        ).incident
        alerts: list[alert_pb2.Alert] = []
        if want_alerts:
            request = incident_service_pb2.ListIncidentAlertsRequest(incident_id=args.id, page_size=1000)
            alerts = await _all_pages(stub.ListIncidentAlerts, request, "alerts", conn)
            if not args.raw:
                for alert in alerts:
                    alert.ClearField("raw_payload")
        entries: list[incident_pb2.TimelineEntry] = []
        if args.timeline:
            request_t = incident_service_pb2.ListIncidentTimelineRequest(incident_id=args.id, page_size=1000)
            entries = await _all_pages(stub.ListIncidentTimeline, request_t, "entries", conn)
    if args.json:
        data: dict[str, Any] = {"incident": to_dict(incident)}
        if want_alerts:
            data["alerts"] = [to_dict(a) for a in alerts]
        if args.timeline:
            data["timeline"] = [to_dict(e) for e in entries]
        print_json(data)
        return EXIT_OK
    print_incident(incident)
    if want_alerts:
        print(f"\nAlerts ({len(alerts)})")
        if args.raw:
            for alert in alerts:
                print_alert_raw(alert)
        else:
            table(
                ["ID", "STATE", "SEVERITY", "COUNT", "LAST SEEN", "TITLE"],
                [[a.id, enum_name(a.state, alert_pb2.AlertState, "ALERT_STATE_"), severity_of(a.severity),
                  str(a.occurrence_count), when(a.last_seen_time), a.title] for a in alerts],
            )  # fmt: skip
    if args.timeline:
        print(f"\nTimeline ({len(entries)})")
        table(
            ["TIME", "KIND", "ACTOR", "MESSAGE"],
            [[when(e.create_time), enum_name(e.kind, incident_pb2.TimelineEntryKind, "TIMELINE_ENTRY_KIND_"),
              e.actor, e.message] for e in entries],
        )  # fmt: skip
    return EXIT_OK


def print_incident(i: incident_pb2.Incident) -> None:
    rows = [
        ("Incident", i.id),
        ("Title", i.title),
        ("Status", status_of(i)),
        ("Severity", severity_of(i.severity)),
        ("Alerts", str(i.alert_count)),
        ("Service", i.service_id),
        ("Source", " ".join(filter(None, [i.source, i.source_ref and f"ref {i.source_ref}"]))),
        ("Dedup key", i.dedup_key),
        ("Assigned to", i.assigned_to),
        ("Created", f"{when(i.create_time)} ({age(i.create_time)} ago)"),
        ("Updated", when(i.update_time)),
    ]
    if i.HasField("acknowledge_time"):
        rows.append(("Acknowledged", f"{when(i.acknowledge_time)} by {i.acknowledged_by}"))
    if i.HasField("resolve_time"):
        rows.append(("Resolved", f"{when(i.resolve_time)} by {i.resolved_by}"))
    rows += [
        ("Summary", i.resolution_summary),
        ("Link", i.incident_url),
        ("Description", i.description),
    ]
    for key, value in rows:
        if value.strip():
            print(f"{key:14} {clean(value)}")
    for key, value in sorted(i.details.items()):
        print(f"  {clean(key):12} {clean(value)}")


def print_alert_raw(a: alert_pb2.Alert) -> None:
    state = enum_name(a.state, alert_pb2.AlertState, "ALERT_STATE_")
    print(clean(f"- {a.id}  {state}  {severity_of(a.severity)}  x{a.occurrence_count}  "
                f"last {when(a.last_seen_time)}  {a.title}"))  # fmt: skip
    try:
        # json.dumps escapes control characters, so the payload cannot drive the terminal.
        pretty = json.dumps(json.loads(a.raw_payload), indent=2, ensure_ascii=False)
    except ValueError:
        pretty = json.dumps(a.raw_payload, ensure_ascii=False)  # not JSON: shown as a JSON string
    for line in pretty.splitlines():
        print("    " + line)


async def _act(args: argparse.Namespace, method: str, request: Message) -> Message:
    conn = connection(args)
    async with conn.channel() as channel:
        result: Message = await getattr(_stub(channel), method)(
            request, metadata=conn.metadata, timeout=conn.timeout
        )
        return result


async def _change(
    args: argparse.Namespace,
    method: str,
    request: Message,
    verb: str,
    extra: Callable[[incident_pb2.Incident], str],
) -> int:
    """Call an RPC whose answer is the changed incident; print it as JSON or as one line."""
    response = await _act(args, method, request)
    if args.json:
        print_json(to_dict(response))
    else:
        incident = getattr(response, "incident")  # noqa: B009 - every changing RPC answers with it
        print(incident_line(verb, incident, extra(incident)))
    return EXIT_OK


async def acknowledge(args: argparse.Namespace) -> int:
    request = incident_service_pb2.AcknowledgeIncidentRequest(incident_id=args.id)
    return await _change(
        args, "AcknowledgeIncident", request, "acknowledged", lambda i: f" by {i.acknowledged_by}"
    )


async def unacknowledge(args: argparse.Namespace) -> int:
    request = incident_service_pb2.UnacknowledgeIncidentRequest(incident_id=args.id)
    return await _change(
        args, "UnacknowledgeIncident", request, "unacknowledged", lambda _: ", escalation restarted"
    )


async def resolve(args: argparse.Namespace) -> int:
    request = incident_service_pb2.ResolveIncidentRequest(
        incident_id=args.id, resolution_summary=args.summary or ""
    )
    return await _change(args, "ResolveIncident", request, "resolved", lambda i: f" by {i.resolved_by}")


async def reassign(args: argparse.Namespace) -> int:
    request = incident_service_pb2.ReassignIncidentRequest(incident_id=args.id, assigned_to=args.to)
    return await _change(
        args, "ReassignIncident", request, "reassigned", lambda i: f" to user {i.assigned_to}"
    )


async def note(args: argparse.Namespace) -> int:
    request = incident_service_pb2.AddIncidentNoteRequest(incident_id=args.id, note=args.text)
    response = await _act(args, "AddIncidentNote", request)
    assert isinstance(response, incident_service_pb2.AddIncidentNoteResponse)
    if args.json:
        print_json(to_dict(response))
    else:
        entry = response.entry
        print(clean(f"note added to {entry.incident_id} by {entry.actor} at {when(entry.create_time)}"))
    return EXIT_OK


def change_line(change: incident_service_pb2.WatchIncidentsResponse) -> str:
    i, e = change.incident, change.entry
    kind = (
        enum_name(e.kind, incident_pb2.TimelineEntryKind, "TIMELINE_ENTRY_KIND_")
        if change.HasField("entry")
        else "changed"
    )
    stamp = when(e.create_time) if change.HasField("entry") else when(i.update_time)
    said = f" {e.message}" if e.message else ""
    return clean(
        f"{stamp}  {i.id}  {status_of(i)}  {severity_of(i.severity)}  {kind} by {e.actor or '-'}:{said}"
        f"  | {i.title}"
    )


async def watch(args: argparse.Namespace) -> int:
    """One line (``--json``: one JSON object) per change until Ctrl-C or SIGTERM (exit 0); a lost
    stream exits 5. No deadline: the stream is meant to stay open."""
    conn = connection(args)
    loop = asyncio.get_running_loop()
    stopping = False
    async with conn.channel() as channel:
        call = _stub(channel).WatchIncidents(
            incident_service_pb2.WatchIncidentsRequest(service_id=args.service or ""), metadata=conn.metadata
        )

        def stop() -> None:
            nonlocal stopping
            stopping = True
            call.cancel()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop)
        try:
            async for change in call:
                if args.json:
                    print_json(to_dict(change), compact=True)
                else:
                    print(change_line(change))
                sys.stdout.flush()
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            if not stopping:
                raise
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
    if stopping:
        return EXIT_OK
    raise CliError("UNAVAILABLE: the server ended the stream", EXIT_UNAVAILABLE)
