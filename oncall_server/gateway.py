"""The HTTP webhook gateway (aiohttp): thin handlers over the same core as gRPC."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from oncall_server import escalations, tenancy
from oncall_server.app import App
from oncall_server.errors import InvalidArgument, OncallError, PayloadTooLarge, ResourceExhausted
from oncall_server.ingest.model import IngestResult
from oncall_server.outbox import incident_url
from oncall_server.routing_rules import parse_rules, rules_to_json
from oncall_server.security import scrub

log = logging.getLogger(__name__)
APP_KEY = web.AppKey("oncall_app", App)


def error_body(error: OncallError) -> dict[str, Any]:
    body: dict[str, Any] = {"status": "error", "error": type(error).__name__, "message": error.message}
    if isinstance(error, InvalidArgument) and error.violations:
        body["fields"] = [{"field": v.field, "description": v.description} for v in error.violations]
    return body


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except OncallError as error:
        headers = {}
        if isinstance(error, ResourceExhausted):
            headers["Retry-After"] = str(max(1, round(error.retry_after_seconds)))
        return web.json_response(error_body(error), status=error.http_status, headers=headers)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[APP_KEY].settings.max_body_bytes
        too_large = PayloadTooLarge.field(
            "body", f"is larger than the {limit}-byte limit (ONCALL_MAX_BODY_BYTES)"
        )
        return web.json_response(error_body(too_large), status=413)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unexpected error handling %s %s", request.method, scrub(request.path_qs))
        return web.json_response(
            {"status": "error", "error": "Internal", "message": "internal error"}, status=500
        )


class ScrubbingAccessLogger(AbstractAccessLogger):
    """One line per request with ``key=`` and ``token=`` values removed."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %.1fms',
            request.remote,
            request.method,
            scrub(request.path_qs),
            response.status,
            time * 1000,
        )


def _result(result: IngestResult) -> dict[str, str]:
    return {
        "outcome": result.outcome.name.lower(),
        "alert_id": result.alert_id,
        "incident_id": result.incident_id,
        "dedup_key": result.dedup_key,
    }


async def ingest_webhook(request: web.Request) -> web.Response:
    app = request.app[APP_KEY]
    key = request.query.get("key") or request.headers.get("X-Integration-Key")
    await app.integrations.resolve_key(key)  # 401 before reading a body we would discard (cached after)
    body = await request.read()
    results = await app.pipeline.ingest_body(
        key,
        body,
        headers=dict(request.headers),
        idempotency_key=request.headers.get("Idempotency-Key"),
    )
    if len(results) == 1:
        return web.json_response({"status": "ok", **_result(results[0])}, status=202)
    return web.json_response({"status": "ok", "results": [_result(r) for r in results]}, status=202)


async def create_escalation(request: web.Request) -> web.Response:
    """``POST /api/internal/escalations/create``: Defend pages the on-call technician."""
    app = request.app[APP_KEY]
    escalations.check_service_key(app, request.headers.get("X-Integration-Key"))
    try:
        payload = json.loads(await request.read())
    except ValueError as exc:
        raise InvalidArgument.field("body", f"is not valid JSON: {exc}") from None
    result = await escalations.create_escalation(app, request.headers.get("X-Integration-Key"), payload)
    body = {"status": "ok", **_result(result)}
    if result.incident_id:
        body["incident_url"] = incident_url(app.settings.public_url, result.incident_id)
    return web.json_response(body, status=202)


async def update_integration(request: web.Request) -> web.Response:
    """``PUT /api/integrations/:id`` with any of name, service_id, routing_rules."""
    app = request.app[APP_KEY]
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    who = await tenancy.authenticate_token(
        app.sessions, token.strip() if scheme.lower() == "bearer" else None
    )
    try:
        changes = json.loads(await request.read())
    except ValueError as exc:
        raise InvalidArgument.field("body", f"is not valid JSON: {exc}") from None
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
            "key_prefix": row.key_prefix,
        }
    )


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


async def metrics(_request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


def build_gateway(app: App) -> web.Application:
    gateway = web.Application(client_max_size=app.settings.max_body_bytes, middlewares=[errors_middleware])
    gateway[APP_KEY] = app
    gateway.router.add_post("/api/webhooks/ingest", ingest_webhook)
    gateway.router.add_post("/api/internal/escalations/create", create_escalation)
    gateway.router.add_put("/api/integrations/{integration_id}", update_integration)
    gateway.router.add_get("/healthz", healthz)
    gateway.router.add_get("/metrics", metrics)
    return gateway
