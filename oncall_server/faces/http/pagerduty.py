"""The PagerDuty Events API v2 face: ``POST /v2/enqueue`` and ``POST /v2/change/enqueue``.

Any tool or client library that pages PagerDuty pages On-Call by changing only its base URL: the
``routing_key`` in the body is an On-Call integration key, and the answers are PagerDuty's
(``/work/shared/spec/compatibility.md``, docs/integrations.md "PagerDuty Events API v2"):

* 202 ``{"status":"success","message":"Event processed","dedup_key":"…"}`` once the event is
  committed (a keyless trigger gets a generated key, returned here); an acknowledge or resolve
  that finds no open alert is accepted too and recorded as a no-op in the integration's drop log;
* 400 ``{"status":"invalid event","message":"Event object is invalid","errors":["…"]}`` naming
  every bad field, also for an unknown routing key and an event over 512 KB;
  ``{"status":"Unrecognized object",…}`` for a body that is not a JSON object; nothing stored;
* 429 + ``Retry-After`` over the ingest queue limits (clients retry); 5xx on an outage (clients
  retry).

The event becomes a :class:`~oncall_server.ingest.model.NormalizedEvent` and goes through the same
pipeline as every face (routing rules, maintenance, dedup, grouping, escalation).
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any

from aiohttp import web

from oncall_server import json_codec
from oncall_server.errors import InvalidArgument, OncallError, ResourceExhausted, Unauthenticated, Unavailable
from oncall_server.faces.http import gateway
from oncall_server.ingest.extraction import normalize_dedup_key
from oncall_server.ingest.integrations import IntegrationContext
from oncall_server.ingest.model import EventAction, IngestResult, NormalizedEvent
from oncall_server.severity import Severity

MAX_EVENT_BYTES = 512 * 1024
"""PagerDuty's limit on a whole event (512 KB); ``ONCALL_MAX_BODY_BYTES`` applies too, if lower."""
MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255
SOURCE = "pagerduty"
"""The On-Call ``source`` of what arrives through this face (PagerDuty's own ``payload.source``,
the affected host, is kept in the details as ``source``)."""

SEVERITIES: dict[str, Severity] = {
    "critical": Severity.CRITICAL,
    "error": Severity.HIGH,
    "warning": Severity.MEDIUM,
    "info": Severity.INFO,
}
ACTIONS: dict[str, EventAction] = {
    "trigger": EventAction.TRIGGER,
    "acknowledge": EventAction.ACKNOWLEDGE,
    "resolve": EventAction.RESOLVE,
}
_PAYLOAD_TEXT_FIELDS = ("source", "component", "group", "class", "timestamp")


class _Refused(Exception):
    """The event is answered in PagerDuty's words: ``status`` and ``body``."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(body.get("message", ""))
        self.status, self.body, self.headers = status, body, headers or {}


def invalid(errors: list[str]) -> _Refused:
    return _Refused(400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors})


def _unrecognized(reason: str) -> _Refused:
    message = "Event object format is unrecognized"
    return _Refused(400, {"status": "Unrecognized object", "message": message, "errors": [reason]})


def _too_large(limit: int) -> web.Response:
    """PagerDuty's answer to a body over the limit (the gateway calls it for a ``Content-Length``
    over ``ONCALL_MAX_BODY_BYTES``, before reading any of it)."""
    refused = invalid([f"Event object is too large: at most {limit} bytes"])
    return web.json_response(refused.body, status=refused.status)


def _text(value: Any) -> str:
    """A detail value as text: strings as they are, anything else as compact JSON."""
    return value if isinstance(value, str) else json_codec.dumps(value)


def _blank(value: Any) -> bool:
    return not isinstance(value, str) or not value.strip()


def _check_timestamp(value: Any, field: str, errors: list[str]) -> None:
    if value is None:
        return
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value.strip())
            return
        except ValueError:
            pass
    errors.append(f"'{field}' is not an ISO 8601 timestamp")


def _check_links(event: dict[str, Any], errors: list[str], *, images: bool = True) -> None:
    for name, required in (("links", "href"), ("images", "src")) if images else (("links", "href"),):
        value = event.get(name)
        if value is None:
            continue
        if not isinstance(value, list):
            errors.append(f"'{name}' must be an array of objects")
            continue
        for index, item in enumerate(value):
            if not isinstance(item, dict) or _blank(item.get(required)):
                errors.append(f"'{name}[{index}].{required}' is missing or blank")


def _summary_errors(payload: dict[str, Any], errors: list[str]) -> None:
    summary = payload.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        errors.append("'payload.summary' is missing or blank")
    elif len(summary) > MAX_SUMMARY:
        errors.append(f"'payload.summary' is longer than {MAX_SUMMARY} characters")


def _details(event: dict[str, Any], payload: dict[str, Any]) -> dict[str, str]:
    """PagerDuty's context fields as On-Call details: strings, nested values as JSON."""
    details = {name: _text(payload[name]) for name in _PAYLOAD_TEXT_FIELDS if payload.get(name) is not None}
    custom = payload.get("custom_details")
    if isinstance(custom, dict):
        details.update({f"custom_details.{k}": _text(v) for k, v in custom.items() if v is not None})
    elif custom is not None:
        details["custom_details"] = _text(custom)
    for name in ("client", "client_url"):
        if event.get(name) is not None:
            details[name] = _text(event[name])
    for name in ("links", "images"):
        if event.get(name):
            details[name] = json_codec.dumps(event[name])
    return details


def _raw_payload(event: dict[str, Any]) -> str:
    """The event as stored and shown with the alert: without its routing key, a credential that is
    only ever stored as a digest."""
    return json_codec.dumps({k: v for k, v in event.items() if k != "routing_key"})


def alert_event(event: dict[str, Any]) -> NormalizedEvent:
    """A ``/v2/enqueue`` event as On-Call's; every PagerDuty validation error at once, else."""
    errors: list[str] = []
    if _blank(event.get("routing_key")):
        errors.append("'routing_key' is missing or blank")
    action_word = event.get("event_action")
    action = ACTIONS.get(action_word) if isinstance(action_word, str) else None
    if action is None:
        errors.append(
            "'event_action' is missing or blank"
            if _blank(action_word)
            else "'event_action' must be one of trigger, acknowledge, resolve"
        )
    dedup_key = event.get("dedup_key")
    if dedup_key is not None and not isinstance(dedup_key, str):
        errors.append("'dedup_key' must be a string")
        dedup_key = None
    elif isinstance(dedup_key, str) and len(dedup_key) > MAX_DEDUP_KEY:
        errors.append(f"'dedup_key' is longer than {MAX_DEDUP_KEY} characters")
    if action in (EventAction.ACKNOWLEDGE, EventAction.RESOLVE) and not dedup_key:
        errors.append(f"'dedup_key' is required for {action_word} events")
    payload = event.get("payload")
    severity = Severity.INFO
    if action is EventAction.TRIGGER:
        if not isinstance(payload, dict):
            errors.append("'payload' is missing or not an object")
        else:
            _summary_errors(payload, errors)
            if _blank(payload.get("source")):
                errors.append("'payload.source' is missing or blank")
            word = payload.get("severity")
            found = SEVERITIES.get(word) if isinstance(word, str) else None
            if found is None:
                errors.append(
                    "'payload.severity' is missing or blank"
                    if _blank(word)
                    else "'payload.severity' must be one of critical, error, warning, info"
                )
            else:
                severity = found
            _check_timestamp(payload.get("timestamp"), "payload.timestamp", errors)
        _check_links(event, errors)
    if errors:
        raise invalid(errors)
    assert action is not None
    payload = payload if isinstance(payload, dict) else {}
    summary = payload.get("summary")
    # An acknowledge's or resolve's payload is optional (PagerDuty ignores it): the title names it in logs.
    title = summary.strip()[:MAX_SUMMARY] if isinstance(summary, str) else ""
    title = title or f"{action_word} of {dedup_key}"
    return NormalizedEvent(
        title=title,
        severity=severity,
        dedup_key=dedup_key or uuid.uuid4().hex,  # a keyless trigger never deduplicates
        source=SOURCE,
        details=_details(event, payload) if action is EventAction.TRIGGER else {},
        raw_payload=_raw_payload(event),
        action=action,
    )


def change_event(event: dict[str, Any]) -> NormalizedEvent:
    """A ``/v2/change/enqueue`` event as On-Call's change event (the service's timeline)."""
    errors: list[str] = []
    if _blank(event.get("routing_key")):
        errors.append("'routing_key' is missing or blank")
    payload = event.get("payload")
    if not isinstance(payload, dict):
        errors.append("'payload' is missing or not an object")
    else:
        _summary_errors(payload, errors)
        _check_timestamp(payload.get("timestamp"), "payload.timestamp", errors)
    _check_links(event, errors, images=False)
    if errors:
        raise invalid(errors)
    assert isinstance(payload, dict)
    return NormalizedEvent(
        title=payload["summary"].strip(),
        severity=Severity.INFO,
        source=SOURCE,
        details=_details(event, payload),
        raw_payload=_raw_payload(event),
        action=EventAction.CHANGE,
    )


async def _read_event(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, refused in PagerDuty's words."""
    app = request.app[gateway.APP_KEY]
    limit = min(MAX_EVENT_BYTES, app.settings.max_body_bytes)
    body = await gateway.read_body(request)
    if len(body) > limit:
        raise invalid([f"Event object is too large: {len(body)} bytes, at most {limit}"])
    try:
        event = json_codec.loads_request(body, field="body")
    except InvalidArgument:
        raise _unrecognized("JSON parse error") from None
    if not isinstance(event, dict):
        raise _unrecognized("the event must be a JSON object")
    return event


def _pagerduty_error(error: OncallError) -> _Refused:
    """A domain error from the pipeline, in PagerDuty's shape with the status its clients expect."""
    if isinstance(error, Unauthenticated):
        return invalid(["Invalid routing key"])
    if isinstance(error, InvalidArgument):
        if error.violations:
            return invalid([f"'{v.field}' {v.description}" for v in error.violations])
        return invalid([error.message])
    if isinstance(error, ResourceExhausted):
        return _Refused(
            429,
            {"status": "throttle event", "message": "Too many events at a time", "errors": [error.message]},
            {"Retry-After": str(max(1, round(error.retry_after_seconds)))},
        )
    headers = {}
    if isinstance(error, Unavailable):
        headers["Retry-After"] = str(gateway.UNAVAILABLE_RETRY_AFTER_SECONDS)
    status = "error" if error.http_status >= 500 else "invalid event"
    return _Refused(error.http_status, {"status": status, "message": error.message, "errors": []}, headers)


async def _ingest(request: web.Request, event: NormalizedEvent, routing_key: str) -> IngestResult:
    app = request.app[gateway.APP_KEY]
    context = await app.integrations.resolve_key(routing_key)
    await app.pipeline.wait_for_room(context)
    [result] = await app.pipeline.ingest_events(context, [scoped_to_routing_key(event, context)])
    return result


def scoped_to_routing_key(event: NormalizedEvent, context: IntegrationContext) -> NormalizedEvent:
    """The event with its dedup key scoped to its routing key: in PagerDuty, events on another
    routing key never touch an alert, while On-Call deduplicates per service, so two integrations of
    one service would otherwise share keys. Stored as ``<integration id>:<key>``; the sender's own key
    is what the answer returns."""
    if not event.dedup_key:
        return event
    return replace(event, dedup_key=normalize_dedup_key(f"{context.integration_id}:{event.dedup_key}"))


async def _answer(request: web.Request, parse: Any, message: str) -> web.Response:
    try:
        try:
            raw = await _read_event(request)
            event = parse(raw)
            result = await _ingest(request, event, raw["routing_key"])
        except OncallError as error:
            raise _pagerduty_error(error) from None
    except _Refused as refused:
        return web.json_response(refused.body, status=refused.status, headers=refused.headers)
    body = {"status": "success", "message": message}
    if event.action is EventAction.CHANGE:
        body["id"] = result.alert_id  # the service event's id
    else:
        body["dedup_key"] = event.dedup_key or ""
    return web.json_response(body, status=202)


async def enqueue(request: web.Request) -> web.Response:
    """``POST /v2/enqueue``: trigger, acknowledge or resolve an alert."""
    return await _answer(request, alert_event, "Event processed")


async def change_enqueue(request: web.Request) -> web.Response:
    """``POST /v2/change/enqueue``: a change event on the service's timeline; never pages."""
    return await _answer(request, change_event, "Change event processed")


# The gateway answers a body over ONCALL_MAX_BODY_BYTES with this, in PagerDuty's words.
enqueue.too_large = _too_large  # type: ignore[attr-defined]
change_enqueue.too_large = _too_large  # type: ignore[attr-defined]
