"""The HTTP webhook gateway (aiohttp): thin handlers over the same core as gRPC.

Around the handlers:

* :func:`errors_middleware` maps domain errors to statuses with a JSON body naming the problem,
  an outage of the database or Redis to 503 + ``Retry-After`` (:mod:`oncall_server.failures`),
  a declared ``Content-Length`` above ``ONCALL_MAX_BODY_BYTES`` to 413 before any of the body is
  read, and closes the connection after a refusal the client might still be sending a body for.
* Bodies are read within ``ONCALL_HTTP_BODY_TIMEOUT_SECONDS`` (:func:`read_body`) and parsed by
  :func:`oncall_server.json_codec.loads_request`, like every face.
* Connections come through :mod:`.connections` (header timeout, per-client limit).
* The access log and the error log name a request by its route template (never its path or query,
  which may carry an integration key), see :func:`route_of`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest
from sqlalchemy import text

from oncall_server import failures, json_codec, security
from oncall_server.errors import (
    InvalidArgument,
    OncallError,
    PayloadTooLarge,
    ResourceExhausted,
    Unavailable,
)
from oncall_server.faces import auth
from oncall_server.faces.http import connect, pagerduty
from oncall_server.faces.http.connections import CONNECTIONS_CLOSED, CONNECTIONS_KEY, Connections
from oncall_server.ingest import defend
from oncall_server.ingest.model import IngestResult
from oncall_server.ingest.routing_rules import parse_rules, rules_to_json
from oncall_server.paging.outbox import incident_url
from oncall_server.runtime.app import App
from oncall_server.runtime.metrics import ScrapedMetrics
from oncall_server.runtime.readiness import Readiness
from oncall_server.runtime.settings import Settings

log = logging.getLogger(__name__)
APP_KEY = web.AppKey("oncall_app", App)
SCRAPED_KEY = web.AppKey("oncall_scraped_metrics", ScrapedMetrics)
READINESS_KEY = web.AppKey("oncall_readiness", Readiness)
UNAVAILABLE_RETRY_AFTER_SECONDS = 5
"""``Retry-After`` of a 503: the database or Redis is unreachable, so a quick retry would fail too."""
_LOGGED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
HTTP_SECONDS = Histogram(
    "oncall_http_request_duration_seconds",
    "HTTP requests the gateway routed, from the handler chain's start to its answer, by method, "
    "route template (never the path) and status.",
    ["method", "route", "status"],
)


def error_body(error: OncallError) -> dict[str, Any]:
    body: dict[str, Any] = {"status": "error", "error": type(error).__name__, "message": error.message}
    if isinstance(error, InvalidArgument) and error.violations:
        body["fields"] = [{"field": v.field, "description": v.description} for v in error.violations]
    return body


def error_response(error: OncallError) -> web.Response:
    """The JSON answer for a domain error, with ``Retry-After`` where a retry is the remedy."""
    headers = {}
    if isinstance(error, ResourceExhausted):
        headers["Retry-After"] = str(max(1, round(error.retry_after_seconds)))
    elif isinstance(error, Unavailable):
        headers["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER_SECONDS)
    return web.json_response(error_body(error), status=error.http_status, headers=headers)


def as_sender_expects(error: ResourceExhausted, adapter: object) -> ResourceExhausted:
    """The overload answer in the status this sender retries: 429 unless its adapter says
    ``overload_http_status = 503`` (senders such as Alertmanager retry 5xx only)."""
    status = getattr(adapter, "overload_http_status", ResourceExhausted.http_status)
    if status != error.http_status:
        error.http_status = status
    return error


def route_of(request: web.BaseRequest) -> str:
    """What the logs may say about a request's target: the matched route's template
    (``/api/integrations/{integration_id}``), or ``-`` for a path no route matched. Never the path
    or the query as sent: either may carry a key, encoded in ways no pattern can list."""
    match_info = getattr(request, "match_info", None)  # absent when aiohttp could not parse the request
    route = getattr(match_info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "-"


def method_of(request: web.BaseRequest) -> str:
    """The method for the logs: a standard one, else ``-`` (a made-up method is free text)."""
    return request.method if request.method in _LOGGED_METHODS else "-"


class _BodyTimeout(Exception):
    """The client did not send the body it announced in time."""


async def _closing(request: web.Request, response: web.StreamResponse, reason: str) -> web.StreamResponse:
    """Send ``response``, then close the connection: no more of the body is read (aiohttp would
    otherwise read and discard it for up to ``lingering_time`` to keep the connection)."""
    CONNECTIONS_CLOSED.labels(reason).inc()
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response


def _too_large(request: web.Request, settings: Settings) -> web.Response:
    limit = settings.max_body_bytes
    own_answer = getattr(request.match_info.handler, "too_large", None)  # a face with its own protocol
    if own_answer is not None:
        return own_answer(limit)  # type: ignore[no-any-return]
    too_large = PayloadTooLarge.field(
        "body", f"is larger than the {limit}-byte limit (ONCALL_MAX_BODY_BYTES)"
    )
    return error_response(too_large)


@web.middleware
async def metrics_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Each request's latency in ``oncall_http_request_duration_seconds`` (outermost middleware)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        HTTP_SECONDS.labels(method_of(request), route_of(request), str(status)).observe(
            time.perf_counter() - started
        )


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    connection = request.app[CONNECTIONS_KEY].of(request)
    if connection is not None:
        connection.request_started()
    settings = request.app[APP_KEY].settings
    try:
        if request.content_length is not None and request.content_length > settings.max_body_bytes:
            too_large = _too_large(request, settings)
            return await _closing(request, too_large, "body_too_large")  # before reading any
        return await handler(request)
    except OncallError as error:
        return error_response(error)
    except web.HTTPRequestEntityTooLarge:  # a body without Content-Length grew past the limit
        return await _closing(request, _too_large(request, settings), "body_too_large")
    except _BodyTimeout:
        timeout = InvalidArgument.field(
            "body",
            f"was not received within {settings.http_body_timeout_seconds:g} s "
            "(ONCALL_HTTP_BODY_TIMEOUT_SECONDS)",
        )
        return await _closing(request, web.json_response(error_body(timeout), status=408), "body_timeout")
    except web.HTTPException:
        raise
    except Exception as exc:
        if request.transport is None or request.transport.is_closing():
            raise  # the client went away mid-request: nobody to answer, and no outage to report
        unavailable = failures.as_unavailable(exc)
        if unavailable is not None:
            log.warning(
                "%s %s: the database or Redis is unavailable (%s)",
                method_of(request),
                route_of(request),
                type(exc).__name__,
            )
            return error_response(unavailable)
        log.exception("unexpected error handling %s %s", method_of(request), route_of(request))
        return web.json_response(
            {"status": "error", "error": "Internal", "message": "internal error"}, status=500
        )
    finally:
        if connection is not None:
            connection.request_finished()


class ScrubbingAccessLogger(AbstractAccessLogger):
    """One line per request naming its route template, never the path or query as sent."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %.1fms',
            request.remote,
            method_of(request),
            route_of(request),
            response.status,
            time * 1000,
        )


async def read_body(request: web.Request) -> bytes:
    """The whole body, within ``ONCALL_HTTP_BODY_TIMEOUT_SECONDS`` (408 and close after it)."""
    try:
        async with asyncio.timeout(request.app[APP_KEY].settings.http_body_timeout_seconds):
            return await request.read()
    except TimeoutError:
        raise _BodyTimeout from None


def _header_credential(request: web.Request, name: str) -> str | None:
    return security.credential(request.headers.get(name))


def _result(result: IngestResult) -> dict[str, str]:
    return {
        "outcome": result.outcome.name.lower(),
        "alert_id": result.alert_id,
        "incident_id": result.incident_id,
        "dedup_key": result.dedup_key,
    }


async def ingest_webhook(request: web.Request) -> web.Response:
    app = request.app[APP_KEY]
    key = security.credential(request.query.get("key")) or _header_credential(request, "X-Integration-Key")
    # 401, or a full queue, before reading a body we would discard (the key is cached after).
    context = await app.integrations.resolve_key(key)
    try:
        await app.pipeline.wait_for_room(context)
        body = await read_body(request)
        results = await app.pipeline.ingest_body(
            key,
            body,
            headers=dict(request.headers),
            idempotency_key=request.headers.get("Idempotency-Key"),
        )
    except ResourceExhausted as exc:
        raise as_sender_expects(exc, app.plugins.adapter(context.type)) from None
    if len(results) == 1:
        return web.json_response({"status": "ok", **_result(results[0])}, status=202)
    return web.json_response({"status": "ok", "results": [_result(r) for r in results]}, status=202)


async def create_escalation(request: web.Request) -> web.Response:
    """``POST /api/internal/escalations/create``: Defend pages the on-call technician."""
    app = request.app[APP_KEY]
    key = _header_credential(request, "X-Integration-Key")
    defend.check_service_key(app, key)
    payload = json_codec.loads_request(await read_body(request), field="body")
    result = await defend.create_escalation(app, key, payload)
    body = {"status": "ok", **_result(result)}
    if result.incident_id:
        body["incident_url"] = incident_url(app.settings.public_url, result.incident_id)
    return web.json_response(body, status=202)


async def update_integration(request: web.Request) -> web.Response:
    """``PUT /api/integrations/:id`` with any of name, service_id, routing_rules, field_mapping
    (null removes the mapping)."""
    app = request.app[APP_KEY]
    who = await auth.authenticate(app.sessions, _header_credential(request, "Authorization"))
    changes = json_codec.loads_request(await read_body(request), field="body")
    if not isinstance(changes, dict):
        raise InvalidArgument.field("body", "must be a JSON object")
    row = await app.integrations.update(who.tenant_id, request.match_info["integration_id"], changes)
    return web.json_response(
        {
            "id": row.id,
            "service_id": row.service_id,
            "name": row.name,
            "type": row.type,
            "routing_rules": rules_to_json(parse_rules(row.routing_rules)),
            "field_mapping": row.field_mapping,
            "key_prefix": row.key_prefix,
        }
    )


async def try_field_mapping(request: web.Request) -> web.Response:
    """``POST /api/integrations/:id/test-mapping`` with ``{"payload": <sample>}`` (and optionally a
    ``field_mapping`` to try instead of the stored one): the normalized events; stores nothing."""
    app = request.app[APP_KEY]
    who = await auth.authenticate(app.sessions, _header_credential(request, "Authorization"))
    body = json_codec.loads_request(await read_body(request), field="body")
    if not isinstance(body, dict) or "payload" not in body:
        raise InvalidArgument.field("body", 'must be a JSON object with the sample in "payload"')
    unknown = sorted(set(body) - {"payload", "field_mapping"})
    if unknown:
        raise InvalidArgument.field(f"body.{unknown[0]}", "is not a field (payload, field_mapping)")
    events, notes = await app.integrations.test_field_mapping(
        who.tenant_id,
        request.match_info["integration_id"],
        "",
        body.get("field_mapping"),
        body["payload"],
        use_stored="field_mapping" not in body,
    )
    shown = [{**event.fields(), "action": event.action.name.lower()} for event in events]
    return web.json_response({"status": "ok", "events": shown, "notes": notes})


async def healthz(request: web.Request) -> web.Response:
    """200 only when both the database and Redis answer: what a load balancer should route on."""
    app = request.app[APP_KEY]
    try:
        async with app.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        await app.redis.ping()
    except Exception as exc:
        log.warning("health check failed: %s", exc)
        return web.json_response({"status": "unavailable"}, status=503)
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 ``{"status": "ready", "checks": {...}}`` when the database and Redis answer and the schema
    is at this code's head revision, else 503 naming the failing checks; checked now, and the gRPC
    health status follows the answer (:mod:`oncall_server.runtime.readiness`)."""
    report = await request.app[READINESS_KEY].check()
    return web.json_response(report.body(), status=200 if report.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    scraped = request.app[SCRAPED_KEY]
    await scraped.refresh()  # SQL and Redis gauges, cached for a few seconds
    response = web.Response(body=generate_latest() + generate_latest(scraped.registry))
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


def build_gateway(app: App, *, readiness: Readiness | None = None) -> web.Application:
    # aiohttp refuses a body of client_max_size bytes or more; ONCALL_MAX_BODY_BYTES is the largest accepted.
    gateway = web.Application(
        client_max_size=app.settings.max_body_bytes + 1, middlewares=[metrics_middleware, errors_middleware]
    )
    gateway[SCRAPED_KEY] = ScrapedMetrics(app)
    gateway[APP_KEY] = app
    gateway[CONNECTIONS_KEY] = Connections(app.settings)
    gateway[READINESS_KEY] = readiness if readiness is not None else Readiness(app)
    gateway.router.add_post("/api/webhooks/ingest", ingest_webhook)
    gateway.router.add_post("/api/internal/escalations/create", create_escalation)
    gateway.router.add_put("/api/integrations/{integration_id}", update_integration)
    gateway.router.add_post("/api/integrations/{integration_id}/test-mapping", try_field_mapping)
    gateway.router.add_post("/v2/enqueue", pagerduty.enqueue)  # PagerDuty Events API v2
    gateway.router.add_post("/v2/change/enqueue", pagerduty.change_enqueue)
    gateway.router.add_get("/healthz", healthz)
    gateway.router.add_get("/readyz", readyz)
    gateway.router.add_get("/metrics", metrics)
    connect.add_routes(gateway, app)  # every unary RPC as JSON over HTTP (Connect protocol)
    return gateway
