"""Every unary RPC as JSON over HTTP (the Connect protocol's unary form) on the gateway's port.

The methods come from the registry's descriptors, not from a list here, and every answer is
compared with what gRPC answers for the same call: the same code (as Connect names it, with the
HTTP status of Connect's table), the same message, the same status details, the same response
message once both are converted to proto3 JSON.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from redis.asyncio import Redis

from oncall_server.faces.auth import Credential, credential_for
from oncall_server.faces.grpc.registry import SERVICES
from oncall_server.faces.http.connect import CODES
from oncall_server.ids import uuid7
from oncall_server.testing import (
    RunningServer,
    Tenant,
    add_policy,
    add_user,
    bootstrap,
    running_server,
    server_settings,
)
from tests.helpers import post_json, webhook_url

PROTOS = Path(__file__).resolve().parents[1] / "protos"
METHODS: list[MethodDescriptor] = [method for entry in SERVICES for method in entry.descriptor.methods]
UNARY = [m for m in METHODS if not (m.client_streaming or m.server_streaming)]
STREAMING = [m for m in METHODS if m.client_streaming or m.server_streaming]
TOKEN_UNARY = [m for m in UNARY if credential_for(m) is Credential.API_TOKEN]
TOKEN_REFUSED = "a valid API token is required (authorization: Bearer <token>)"
UNKNOWN_TOKEN = "oct_" + "A" * 43


def _path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def _message(method: MethodDescriptor, body: dict[str, Any]) -> Message:
    request: Message = message_factory.GetMessageClass(method.input_type)()
    json_format.ParseDict(body, request)
    return request


Answer = tuple[str, int, str, list[tuple[str, bytes]], dict[str, Any] | None]
"""Connect code, HTTP status (gRPC: the status Connect's table gives its code), message, status
details as (type, bytes), response message as proto3 JSON (None for an error)."""


async def grpc_answer(
    channel: grpc.aio.Channel, method: MethodDescriptor, body: dict[str, Any], metadata: list[tuple[str, str]]
) -> Answer:
    """``method`` called over gRPC, as the Connect face would report it."""
    response_type = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        _path(method),
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=response_type.FromString,
    )
    try:
        response = await call(_message(method, body), metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as error:
        details: list[tuple[str, bytes]] = []
        for key, value in error.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                details = [(d.TypeName(), d.value) for d in status_pb2.Status.FromString(value).details]
        code, status = CODES[error.code()]
        return code, status, error.details() or "", details, None
    return "ok", 200, "", [], json_format.MessageToDict(response)


async def connect_answer(
    http: aiohttp.ClientSession,
    server: RunningServer,
    method: MethodDescriptor | str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> Answer:
    """``method`` (or a path) called in the Connect protocol's unary JSON form."""
    path = method if isinstance(method, str) else _path(method)
    sent = data if data is not None else json.dumps(body if body is not None else {}).encode()
    async with http.post(
        server.http_url + path,
        data=sent,
        headers={"Content-Type": "application/json", "Connect-Protocol-Version": "1", **(headers or {})},
    ) as response:
        assert response.content_type == "application/json", await response.text()
        answer = await response.json()
    if response.status == 200:
        return "ok", 200, "", [], answer
    assert set(answer) <= {"code", "message", "details"}, answer
    details = [
        (d["type"], base64.b64decode(d["value"] + "=" * (-len(d["value"]) % 4)))
        for d in answer.get("details", [])
    ]
    return answer["code"], response.status, answer["message"], details, None


def bearer(tenant: Tenant) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.api_token}"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.grpc_target) as opened:
        yield opened


def test_the_status_table_is_connects() -> None:
    """Connect's specification, code by code (failed_precondition is 400 there, not the gateway's 409)."""
    assert {code.name: CODES[code] for code in CODES} == {
        "CANCELLED": ("canceled", 499),
        "UNKNOWN": ("unknown", 500),
        "INVALID_ARGUMENT": ("invalid_argument", 400),
        "DEADLINE_EXCEEDED": ("deadline_exceeded", 504),
        "NOT_FOUND": ("not_found", 404),
        "ALREADY_EXISTS": ("already_exists", 409),
        "PERMISSION_DENIED": ("permission_denied", 403),
        "RESOURCE_EXHAUSTED": ("resource_exhausted", 429),
        "FAILED_PRECONDITION": ("failed_precondition", 400),
        "ABORTED": ("aborted", 409),
        "OUT_OF_RANGE": ("out_of_range", 400),
        "UNIMPLEMENTED": ("unimplemented", 501),
        "INTERNAL": ("internal", 500),
        "UNAVAILABLE": ("unavailable", 503),
        "DATA_LOSS": ("data_loss", 500),
        "UNAUTHENTICATED": ("unauthenticated", 401),
    }
    assert set(CODES) == set(grpc.StatusCode) - {grpc.StatusCode.OK}


async def test_every_unary_method_without_credentials_answers_as_grpc(
    server: RunningServer, http: aiohttp.ClientSession, channel: grpc.aio.Channel
) -> None:
    assert len(UNARY) == len(METHODS) - 2 and len(TOKEN_UNARY) == len(UNARY) - 2
    wrong: list[str] = []
    for method in UNARY:
        for case, headers in {
            "none": {},
            "unknown token": {"Authorization": f"Bearer {UNKNOWN_TOKEN}"},
        }.items():
            metadata = [(k.lower(), v) for k, v in headers.items()]
            over_grpc = await grpc_answer(channel, method, {}, metadata)
            over_connect = await connect_answer(http, server, method, {}, headers=headers)
            if over_connect != over_grpc:
                wrong.append(f"{method.full_name} ({case}): Connect {over_connect} != gRPC {over_grpc}")
            if over_connect[:3] != ("unauthenticated", 401, TOKEN_REFUSED) and method in TOKEN_UNARY:
                wrong.append(f"{method.full_name} ({case}): {over_connect}")
            if over_connect[:2] != ("unauthenticated", 401):  # ingest: no integration key either
                wrong.append(f"{method.full_name} ({case}): {over_connect}")
    assert not wrong, "\n".join(wrong)


async def _first_tenants_objects(server: RunningServer, tenant: Tenant) -> dict[str, str]:
    """An id of each kind of the tenant's objects (unknown ids for kinds not made here)."""
    status, body = await post_json(webhook_url(server, tenant), {"title": "Disk full", "dedup_key": "disk-1"})
    assert status == 202, body
    user_id = await add_user(server.app, tenant.tenant_id, "Ana")
    policy_id = await add_policy(server.app, tenant.tenant_id, [(60, [("user", user_id)])])
    return {
        "incident_id": body["incident_id"],
        "alert_id": body["alert_id"],
        "service_id": tenant.service_id,
        "integration_id": tenant.integration_id,
        "user_id": user_id,
        "escalation_policy_id": policy_id,
        "schedule_id": str(uuid7()),
        "maintenance_window_id": str(uuid7()),
        "contact_method_id": str(uuid7()),
        "notification_rule_id": str(uuid7()),
    }


def _naming(method: MethodDescriptor, ids: dict[str, str]) -> dict[str, Any]:
    """A request naming the first tenant's objects: each ``*_id`` field, and the ``id`` of a message
    field named after a kind (``integration``, ``service``, ...)."""
    body: dict[str, Any] = {}
    for field in method.input_type.fields:
        if field.name in ids:
            body[field.name] = ids[field.name]
        elif (
            field.message_type is not None
            and f"{field.name}_id" in ids
            and "id" in field.message_type.fields_by_name
        ):
            body[field.name] = {"id": ids[f"{field.name}_id"]}
    return body


async def test_another_tenants_token_on_every_unary_method_answers_as_grpc(
    server: RunningServer, http: aiohttp.ClientSession, channel: grpc.aio.Channel
) -> None:
    first = await bootstrap(server.app)
    ids = await _first_tenants_objects(server, first)
    other = await bootstrap(server.app)
    wrong: list[str] = []
    not_found = []
    for method in TOKEN_UNARY:
        body = _naming(method, ids)
        over_grpc = await grpc_answer(channel, method, body, other.auth)
        over_connect = await connect_answer(http, server, method, body, headers=bearer(other))
        if over_connect != over_grpc:
            wrong.append(f"{method.full_name} {body}: Connect {over_connect} != gRPC {over_grpc}")
        if over_connect[:2] == ("not_found", 404):
            not_found.append(method.name)
    assert not wrong, "\n".join(wrong)
    # The first tenant's objects are invisible to the other, by id, on both faces.
    assert {
        "GetIncident",
        "AcknowledgeIncident",
        "ResolveIncident",
        "ListIncidentTimeline",
        "GetAlert",
        "GetIntegration",
        "RotateIntegrationKey",
        "GetService",
        "DeleteService",
        "GetUser",
        "GetEscalationPolicy",
    } <= set(not_found), not_found
    # ... and nothing of theirs changed.
    over_connect = await connect_answer(
        http,
        server,
        "/oncall.v1.IncidentService/GetIncident",
        {"incidentId": ids["incident_id"]},
        headers=bearer(first),
    )
    assert over_connect[0] == "ok" and over_connect[4] is not None
    assert over_connect[4]["incident"]["status"] == "INCIDENT_STATUS_TRIGGERED"


async def test_an_incident_acknowledged_over_json_as_over_grpc(
    server: RunningServer, http: aiohttp.ClientSession, channel: grpc.aio.Channel
) -> None:
    tenant = await bootstrap(server.app)
    status, posted = await post_json(
        webhook_url(server, tenant), {"title": "CPU critical", "severity": "critical"}
    )
    assert status == 202, posted
    methods = {m.name: m for m in UNARY if m.containing_service.name == "IncidentService"}

    listed = await connect_answer(http, server, methods["ListIncidents"], {}, headers=bearer(tenant))
    assert listed == await grpc_answer(channel, methods["ListIncidents"], {}, tenant.auth)
    assert listed[4] is not None
    (incident,) = listed[4]["incidents"]
    assert incident["id"] == posted["incident_id"]
    assert (incident["status"], incident["severity"]) == ("INCIDENT_STATUS_TRIGGERED", "SEVERITY_CRITICAL")
    assert incident["alertCount"] == "1"  # int64: a string in proto3 JSON
    assert "createTime" in incident and "create_time" not in incident

    acked = await connect_answer(
        http,
        server,
        methods["AcknowledgeIncident"],
        {"incidentId": incident["id"], "actor": "ana@example.com"},
        headers=bearer(tenant),
    )
    assert acked[:2] == ("ok", 200), acked
    assert acked[4] is not None and acked[4]["incident"]["status"] == "INCIDENT_STATUS_ACKNOWLEDGED"

    got = await connect_answer(
        http, server, methods["GetIncident"], {"incidentId": incident["id"]}, headers=bearer(tenant)
    )
    assert got == await grpc_answer(
        channel, methods["GetIncident"], {"incident_id": incident["id"]}, tenant.auth
    )
    assert got[4] is not None
    shown = got[4]["incident"]
    assert (shown["status"], shown["acknowledgedBy"]) == ("INCIDENT_STATUS_ACKNOWLEDGED", "ana@example.com")
    assert "acknowledgeTime" in shown

    body = {"incidentId": incident["id"]}
    timeline = await connect_answer(
        http, server, methods["ListIncidentTimeline"], body, headers=bearer(tenant)
    )
    assert timeline == await grpc_answer(channel, methods["ListIncidentTimeline"], body, tenant.auth)
    assert timeline[4] is not None
    acks = [e for e in timeline[4]["entries"] if e["kind"] == "TIMELINE_ENTRY_KIND_ACKNOWLEDGED"]
    assert [e["actor"] for e in acks] == ["ana@example.com"]

    # Acknowledging again is refused the same way on both faces (failed_precondition is 400 in Connect).
    again = {"incidentId": incident["id"]}
    resolved = await connect_answer(http, server, methods["ResolveIncident"], again, headers=bearer(tenant))
    assert resolved[:2] == ("ok", 200), resolved
    refused = await connect_answer(
        http, server, methods["AcknowledgeIncident"], again, headers=bearer(tenant)
    )
    assert refused == await grpc_answer(channel, methods["AcknowledgeIncident"], again, tenant.auth)
    assert refused[:2] == ("failed_precondition", 400), refused


async def test_get_and_binary_protobuf_forms(server: RunningServer, http: aiohttp.ClientSession) -> None:
    """``NO_SIDE_EFFECTS`` methods answer Connect's GET form; ``application/proto`` is binary both ways."""
    tenant = await bootstrap(server.app)
    status, posted = await post_json(webhook_url(server, tenant), {"title": "Disk full"})
    assert status == 202, posted
    path = "/oncall.v1.IncidentService/GetIncident"
    message = json.dumps({"incidentId": posted["incident_id"]})
    query = urllib.parse.urlencode({"encoding": "json", "message": message, "connect": "v1"})
    async with http.get(f"{server.http_url}{path}?{query}", headers=bearer(tenant)) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["incident"]["id"] == posted["incident_id"]
    # A method with side effects has no GET form.
    async with http.get(
        f"{server.http_url}/oncall.v1.IncidentService/AcknowledgeIncident?{query}"
    ) as response:
        assert response.status == 405

    from oncall_server.api.v1 import incident_service_pb2 as inc_pb

    request = inc_pb.GetIncidentRequest(incident_id=posted["incident_id"])
    async with http.post(
        server.http_url + path,
        data=request.SerializeToString(),
        headers={"Content-Type": "application/proto", **bearer(tenant)},
    ) as response:
        assert (response.status, response.content_type) == (200, "application/proto")
        assert (
            inc_pb.GetIncidentResponse.FromString(await response.read()).incident.id == posted["incident_id"]
        )
    # Bytes that are not the message: as gRPC words it.
    async with http.post(
        server.http_url + path,
        data=b"\xff\xff",
        headers={"Content-Type": "application/proto", **bearer(tenant)},
    ) as response:
        assert response.status == 400
        assert (await response.json())["message"] == "request: is not a valid GetIncidentRequest message"


async def test_what_the_connect_face_refuses(server: RunningServer, http: aiohttp.ClientSession) -> None:
    tenant = await bootstrap(server.app)
    path = "/oncall.v1.IncidentService/ListIncidents"

    # Not JSON: invalid_argument with google.rpc.BadRequest naming the body, as gRPC's details.
    answer = await connect_answer(http, server, path, data=b'{"pageSize": ', headers=bearer(tenant))
    assert answer[:2] == ("invalid_argument", 400), answer
    assert answer[2].startswith("body: is not valid JSON")
    ((kind, value),) = answer[3]
    assert kind == "google.rpc.BadRequest"
    assert error_details_pb2.BadRequest.FromString(value).field_violations[0].field == "body"
    async with http.post(
        server.http_url + path, data=b"[1]", headers={"Content-Type": "application/json", **bearer(tenant)}
    ) as response:
        body = await response.json()
        assert (response.status, body["code"]) == (400, "invalid_argument")
        assert body["details"][0]["debug"] == {
            "fieldViolations": [{"field": "body", "description": "must be a JSON object"}]
        }

    # JSON that is not the request message: unknown fields, wrong types, unknown enum names.
    for bad in ({"pageSize": "many"}, {"nope": 1}, {"status": "INCIDENT_STATUS_SLEEPING"}):
        answer = await connect_answer(http, server, path, bad, headers=bearer(tenant))
        assert answer[:2] == ("invalid_argument", 400), (bad, answer)
        assert answer[2].startswith("body: "), answer
    # An enum number protobuf lets through: the gRPC face's request checks.
    answer = await connect_answer(http, server, path, {"status": 42}, headers=bearer(tenant))
    assert answer[:3] == ("invalid_argument", 400, "status: is not a known IncidentStatus value (42)"), answer

    # The request is checked before the token, as the gRPC face's chain does (the error mapping
    # and request checks are outside the auth check).
    answer = await connect_answer(http, server, path, data=b"{", headers={})
    assert answer[:2] == ("invalid_argument", 400), answer
    answer = await connect_answer(http, server, path, {"pageSize": 5}, headers={})
    assert answer[:3] == ("unauthenticated", 401, TOKEN_REFUSED), answer

    # Unknown methods and services of a package path; other paths stay the gateway's.
    for unknown in (
        "/oncall.v1.IncidentService/NoSuchMethod",
        "/oncall.v1.NoService/GetIncident",
        "/pkg.v9.S/M",
    ):
        answer = await connect_answer(http, server, unknown, {}, headers=bearer(tenant))
        assert answer[:2] == ("unimplemented", 404), (unknown, answer)
    # Streaming methods: unimplemented (501) until Connect streaming is served.
    for method in STREAMING:
        answer = await connect_answer(http, server, method, {}, headers=bearer(tenant))
        assert answer[:2] == ("unimplemented", 501), (method.full_name, answer)

    # Encodings other than JSON and binary protobuf: 415, with what is accepted.
    for content_type in ("text/plain", "application/connect+json", "application/json; charset=latin-1"):
        async with http.post(
            server.http_url + path, data=b"{}", headers={"Content-Type": content_type, **bearer(tenant)}
        ) as response:
            assert response.status == 415, content_type
            assert response.headers["Accept-Post"] == "application/json, application/proto"
    answer = await connect_answer(
        http, server, path, {}, headers={**bearer(tenant), "Connect-Protocol-Version": "2"}
    )
    assert answer[:2] == ("invalid_argument", 400), answer
    answer = await connect_answer(
        http, server, path, {}, headers={**bearer(tenant), "Connect-Timeout-Ms": "soon"}
    )
    assert answer[:2] == ("invalid_argument", 400), answer
    answer = await connect_answer(
        http, server, path, {}, headers={**bearer(tenant), "Connect-Timeout-Ms": "5000"}
    )
    assert answer[:2] == ("ok", 200), answer

    # A body over ONCALL_MAX_BODY_BYTES: Connect's error body, before any of it is read.
    limit = server.app.settings.max_body_bytes
    answer = await connect_answer(http, server, path, data=b" " * (limit + 1), headers=bearer(tenant))
    assert answer[:2] == ("invalid_argument", 400), answer
    assert "ONCALL_MAX_BODY_BYTES" in answer[2]


async def test_ingest_over_json_takes_the_integration_key_header(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    tenant = await bootstrap(server.app)
    path = "/oncall.v1.IngestService/IngestAlert"
    alert = {"alert": {"title": "Queue backlog", "severity": "SEVERITY_HIGH", "dedupKey": "q-1"}}
    answer = await connect_answer(
        http, server, path, alert, headers={"X-Integration-Key": tenant.integration_key}
    )
    assert answer[:2] == ("ok", 200), answer
    assert answer[4] is not None and answer[4]["result"]["outcome"] == "INGEST_OUTCOME_CREATED"
    answer = await connect_answer(http, server, path, {**alert, "integrationKey": tenant.integration_key})
    assert answer[4] is not None and answer[4]["result"]["outcome"] == "INGEST_OUTCOME_DEDUPLICATED"
    answer = await connect_answer(http, server, path, alert, headers=bearer(tenant))  # a token is no key
    assert answer[:2] == ("unauthenticated", 401), answer


async def test_the_access_log_names_the_method_never_a_credential(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    settings = server_settings(tmp_path, database_url, redis_url).model_copy(update={"access_log": True})
    async with running_server(settings) as server, aiohttp.ClientSession() as http:
        tenant = await bootstrap(server.app)
        caplog.set_level(logging.INFO, logger="oncall.access")
        caplog.clear()
        secret = tenant.api_token
        await connect_answer(
            http, server, f"/oncall.v1.IncidentService/ListIncidents?key={secret}", {}, headers=bearer(tenant)
        )
        await connect_answer(http, server, f"/oncall.v1.IncidentService/{secret}", {}, headers=bearer(tenant))
        await connect_answer(
            http, server, "/oncall.v1.IngestService/IngestAlert", {"integrationKey": tenant.integration_key}
        )
    access = [r.getMessage() for r in caplog.records if r.name == "oncall.access"]
    assert len(access) == 3, access
    assert '"POST /oncall.v1.IncidentService/ListIncidents" 200' in access[0], access
    assert '"POST /{service}/{method}" 404' in access[1], access
    assert '"POST /oncall.v1.IngestService/IngestAlert"' in access[2], access
    text = "\n".join(r.getMessage() for r in caplog.records)
    for form in (secret, secret[4:], tenant.integration_key, tenant.integration_key[4:]):
        assert form not in text


def _buf() -> str | None:
    return os.environ.get("ONCALL_TEST_BUF") or shutil.which("buf")


@pytest.mark.skipif(_buf() is None, reason="no buf CLI (set ONCALL_TEST_BUF, as .ci/run does)")
async def test_buf_curl_lists_incidents_in_the_connect_protocol(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    status, posted = await post_json(
        webhook_url(server, tenant), {"title": "Disk full", "severity": "warning"}
    )
    assert status == 202, posted
    buf = _buf()
    assert buf is not None

    async def buf_curl(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            buf,
            "curl",
            "--protocol",
            "connect",
            "--schema",
            str(PROTOS),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    url = f"{server.http_url}/oncall.v1.IncidentService/ListIncidents"
    code, out, err = await buf_curl(
        "--data", '{"pageSize": 10}', "-H", f"Authorization: Bearer {tenant.api_token}", url
    )
    assert code == 0, err
    (incident,) = json.loads(out)["incidents"]
    assert (incident["id"], incident["title"]) == (posted["incident_id"], "Disk full")

    code, out, err = await buf_curl("--data", "{}", url)
    assert code != 0
    assert "unauthenticated" in (out + err).lower(), (out, err)
