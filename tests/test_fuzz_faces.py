"""Fuzz every face of one running server: nothing a client sends earns a 5xx, INTERNAL or UNKNOWN.

Random bodies (alert-shaped JSON, arbitrary JSON with huge integers, deep nesting, escapes of NUL
and lone surrogates, bytes that are not UTF-8), headers (credentials with any bytes) and query
strings on every HTTP route, over raw sockets so nothing is cleaned up on the way; random
``IngestAlert`` / ``IngestAlerts`` messages built from the generated classes (any surrogate-free
text including NUL, enum numbers outside the enum, timestamps out of range, raw payloads of every
shape). Bad input must be refused with a 4xx / INVALID_ARGUMENT / UNAUTHENTICATED / NOT_FOUND...;
the database and Redis are up throughout, so 503 / UNAVAILABLE is a failure too (a bad alert that
fails its batch shows up as one).

Derandomized (the same examples on every run) and bounded: ``EXAMPLES`` per route.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from google.protobuf import timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oncall_server import redis_client
from oncall_server.api.v1 import alert_pb2, ingest_service_pb2, ingest_service_pb2_grpc
from oncall_server.testing import (
    RunningServer,
    Tenant,
    bootstrap,
    empty_all_tables,
    running_server,
    server_settings,
)
from tests.raw_http import RawResponse, exchange, request_bytes

EXAMPLES = 150
DEFEND_KEY = "defend-fuzz-key"
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@dataclass
class Target:
    runner: asyncio.Runner
    server: RunningServer
    tenant: Tenant
    channel: grpc.aio.Channel

    def run(self, coroutine: Any) -> Any:
        return self.runner.run(coroutine)


@pytest.fixture(scope="module")
def target(
    tmp_path_factory: pytest.TempPathFactory, backend_urls: dict[str, str], redis_url: str
) -> Iterator[Target]:
    """One server for the whole module, on PostgreSQL when available (it refuses more: NUL in text)."""
    database_url = backend_urls.get("postgresql") or backend_urls["sqlite"]
    with asyncio.Runner() as runner:

        async def start() -> tuple[Any, RunningServer, Tenant, grpc.aio.Channel]:
            await empty_all_tables(database_url)
            redis = redis_client.connect(redis_url)
            await redis.flushdb()
            await redis.aclose()
            settings_ = server_settings(
                tmp_path_factory.mktemp("fuzz"), database_url, redis_url, defend_service_key=DEFEND_KEY
            )
            context = running_server(settings_)
            server = await context.__aenter__()
            tenant = await bootstrap(server.app)
            await server.app.integrations.create(
                tenant.tenant_id, tenant.service_id, "Defend", "defend", None
            )
            return context, server, tenant, grpc.aio.insecure_channel(server.grpc_target)

        context, server, tenant, channel = runner.run(start())
        try:
            yield Target(runner, server, tenant, channel)
        finally:
            runner.run(channel.close())
            runner.run(context.__aexit__(None, None, None))


# --- strategies ---------------------------------------------------------------------------------

text = st.text(st.characters(codec="utf-8"), max_size=40)  # surrogate-free, NUL and controls included
any_text = st.text(max_size=40)  # lone surrogates too: JSON escapes them as \udXXX
huge_int = st.integers(0, 6000).map(lambda n: int("9" * n) if 0 < n <= 4300 else n)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    any_text,
    st.sampled_from(["critical", "HIGH", "warning", "p1", "sev2", "info", "", " "]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=12,
)
FIELDS = ["title", "severity", "dedup_key", "source", "source_ref", "description", "body", "host", "status"]
alert_objects = st.dictionaries(st.sampled_from(FIELDS) | any_text, json_values, max_size=8)


def dumps(value: Any, ascii_only: bool) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    except ValueError:  # an integer past Python's own str conversion limit
        return b"0"


def literal_body(kind: str, n: int) -> bytes:
    if kind == "deep-array":
        return b'{"title": "deep", "x": ' + b"[" * n + b"]" * n + b"}"
    if kind == "deep-object":
        return b'{"title": "deep", "x": ' + b'{"a": ' * n + b"1" + b"}" * n + b"}"
    if kind == "long-int":
        return b'{"title": "int", "x": ' + b"7" * n + b"}"
    if kind == "constant":
        return (
            b'{"title": "c", "x": ' + [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400"][n % 5] + b"}"
        )
    return b'{"title": "esc\\u0000\\ud800", "dedup_key": "k\\udc00' + str(n).encode() + b'"}'


bodies = st.one_of(
    st.builds(dumps, alert_objects, st.booleans()),
    st.builds(dumps, st.lists(alert_objects, min_size=0, max_size=5), st.booleans()),
    st.builds(dumps, json_values, st.booleans()),
    st.builds(
        literal_body,
        st.sampled_from(["deep-array", "deep-object", "long-int", "constant", "escapes"]),
        st.integers(0, 2500),
    ),
    st.binary(max_size=200),
    st.just(b""),
)
header_values = st.one_of(
    st.binary(max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b),
    st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=60).map(
        lambda t: t.encode("latin-1")
    ),
)
query_parts = st.lists(st.tuples(any_text, any_text), max_size=4).map(
    lambda pairs: "&".join(
        f"{quote(k.encode('utf-8', 'surrogatepass'))}={quote(v.encode('utf-8', 'surrogatepass'))}"
        for k, v in pairs
    )
)


@st.composite
def http_requests(draw: st.DrawFn, route: str, tenant: Tenant) -> bytes:
    headers: list[tuple[bytes, bytes]] = []
    query = draw(query_parts)
    credential = draw(st.sampled_from(["valid", "valid", "valid", "random", "none"]))
    if route == "webhook":
        method, path = "POST", "/api/webhooks/ingest"
        if credential == "valid":
            if draw(st.booleans()):
                query = f"key={tenant.integration_key}&{query}"
            else:
                headers.append((b"X-Integration-Key", tenant.integration_key.encode()))
        elif credential == "random":
            headers.append((b"X-Integration-Key", draw(header_values)))
        if draw(st.booleans()):
            headers.append((b"Idempotency-Key", draw(header_values)))
        body = draw(bodies)
    elif route == "defend":
        method, path = "POST", "/api/internal/escalations/create"
        key = DEFEND_KEY.encode() if credential == "valid" else draw(header_values)
        if credential != "none":
            headers.append((b"X-Integration-Key", key))
        defend = st.fixed_dictionaries(
            {
                "title": json_values,
                "severity": st.sampled_from(["critical", "high", "medium", "low", "info", "CRIT", ""])
                | json_values,
                "source_ref": any_text | json_values,
                "tenant_id": st.sampled_from([tenant.tenant_id, "", "nope"]) | any_text,
            },
            optional={
                "source": st.sampled_from(["defend", "other"]) | json_values,
                "description": json_values,
                "device_name": json_values,
                "detection_type": json_values,
                "mitre_technique": json_values,
                "recommended_action": json_values,
            },
        )
        accepted = st.fixed_dictionaries(
            {
                "title": text.filter(str.strip),
                "severity": st.sampled_from(["critical", "high", "medium", "low", "info"]),
                "source_ref": text.filter(str.strip),
                "tenant_id": st.just(tenant.tenant_id),
            },
            optional={"description": text, "device_name": text, "mitre_technique": text},
        )
        body = draw(st.one_of(st.builds(dumps, accepted | defend, st.booleans()), bodies))
    elif route == "integration":
        method = "PUT"
        integration = draw(st.sampled_from([tenant.integration_id, "", "x"]) | any_text)
        path = "/api/integrations/" + quote(integration.encode("utf-8", "surrogatepass"), safe="")
        if credential == "valid":
            headers.append((b"Authorization", b"Bearer " + tenant.api_token.encode()))
        elif credential == "random":
            headers.append(
                (
                    b"Authorization",
                    draw(st.sampled_from([b"Bearer ", b"", b"bearer oct_"])) + draw(header_values),
                )
            )
        rule = st.fixed_dictionaries(
            {},
            optional={
                "name": json_values,
                "severity_filter": st.fixed_dictionaries({}, optional={"minimum_severity": json_values})
                | json_values,
                "title_match": st.fixed_dictionaries(
                    {}, optional={"contains": json_values, "ignore_case": json_values}
                ),
                "field_match": st.fixed_dictionaries(
                    {}, optional={"path": json_values, "operator": json_values, "value": json_values}
                ),
            },
        )
        change = st.fixed_dictionaries(
            {},
            optional={
                "name": any_text | json_values,
                "service_id": st.sampled_from([tenant.service_id, ""]) | json_values,
                "routing_rules": st.lists(rule, max_size=3) | json_values,
            },
        )
        body = draw(st.one_of(st.builds(dumps, change, st.booleans()), bodies))
    else:
        method, path = "GET", "/healthz" if route == "healthz" else "/metrics"
        body = draw(st.sampled_from([b"", b"{}"]) | st.binary(max_size=50))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from([b"Content-Type", b"X-Custom", b"Accept", b"X-Forwarded-For"]))
        headers.append((name, draw(header_values)))
    target = path + ("?" + query if query else "")
    return request_bytes(method, target, headers=headers, body=body)


def assert_no_server_error(raw: bytes, got: RawResponse) -> None:
    assert got.status < 500, f"{got.status} {got.body[:300]!r} for {raw[:600]!r}"


@pytest.mark.parametrize("route", ["webhook", "defend", "integration", "healthz", "metrics"])
def test_http_routes_never_answer_5xx(target: Target, route: str) -> None:
    answers: list[int] = []

    @FUZZ
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        raw = data.draw(http_requests(route, target.tenant))
        got = target.run(exchange(target.server.http_url, raw))
        answers.append(got.status)
        assert_no_server_error(raw, got)

    check()
    assert len(answers) >= EXAMPLES
    statuses = collections.Counter(answers)
    assert sum(n for status, n in statuses.items() if status < 300) >= 5, statuses  # reached the store too


# --- gRPC ---------------------------------------------------------------------------------------

grpc_text = st.text(
    st.characters(codec="utf-8"), max_size=60
)  # protobuf strings: any code point but surrogates
severities = st.sampled_from(list(alert_pb2.Severity.values())) | st.integers(-(2**31), 2**31 - 1)
raw_payloads = st.one_of(
    st.just(""),
    st.builds(dumps, alert_objects, st.booleans()).map(lambda b: b.decode("utf-8", "replace")),
    st.builds(dumps, json_values, st.booleans()).map(lambda b: b.decode("utf-8", "replace")),
    st.builds(
        literal_body,
        st.sampled_from(["deep-array", "deep-object", "long-int", "constant", "escapes"]),
        st.integers(0, 2500),
    ).map(bytes.decode),
    grpc_text,
)
timestamps = st.builds(
    timestamp_pb2.Timestamp,
    seconds=st.integers(-(2**40), 2**40) | st.integers(0, 2_000_000_000),
    nanos=st.integers(-(2**31), 2**31 - 1) | st.integers(0, 999_999_999),
)


@st.composite
def alert_events(draw: st.DrawFn) -> alert_pb2.AlertEvent:
    event = alert_pb2.AlertEvent(
        title=draw(grpc_text),
        severity=draw(severities),  # type: ignore[arg-type]
        dedup_key=draw(grpc_text),
        source=draw(grpc_text),
        source_ref=draw(grpc_text),
        description=draw(grpc_text),
        details=draw(st.dictionaries(grpc_text, grpc_text, max_size=4)),
        raw_payload=draw(raw_payloads),
    )
    if draw(st.booleans()):
        event.occurred_time.CopyFrom(draw(timestamps))
    return event


def integration_keys(tenant: Tenant) -> st.SearchStrategy[str]:
    return st.sampled_from([tenant.integration_key] * 4 + [""]) | grpc_text


async def grpc_outcome(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


SERVER_ERRORS = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}


def test_grpc_ingest_alert_never_fails_internally(target: Target) -> None:
    codes: list[str] = []
    stub = ingest_service_pb2_grpc.IngestServiceStub(target.channel)

    @FUZZ
    @given(key=integration_keys(target.tenant), alert=alert_events())
    def check(key: str, alert: alert_pb2.AlertEvent) -> None:
        request = ingest_service_pb2.IngestAlertRequest(integration_key=key, alert=alert)
        code = target.run(grpc_outcome(stub.IngestAlert(request, timeout=20)))
        codes.append(code.name)
        assert code not in SERVER_ERRORS, f"{code} for {request}"

    check()
    assert len(codes) >= EXAMPLES
    assert collections.Counter(codes)["OK"] >= 5, collections.Counter(codes)  # reached the store too


def test_grpc_ingest_alerts_never_fails_internally(target: Target) -> None:
    codes: list[str] = []
    stub = ingest_service_pb2_grpc.IngestServiceStub(target.channel)
    messages = st.lists(
        st.builds(
            ingest_service_pb2.IngestAlertsRequest,
            integration_key=integration_keys(target.tenant),
            alerts=st.lists(alert_events(), max_size=4),
        ),
        min_size=0,
        max_size=3,
    )

    @FUZZ
    @given(batch=messages)
    def check(batch: list[ingest_service_pb2.IngestAlertsRequest]) -> None:
        async def stream() -> AsyncIterator[ingest_service_pb2.IngestAlertsRequest]:
            for message in batch:
                yield message

        code = target.run(grpc_outcome(stub.IngestAlerts(stream(), timeout=20)))
        codes.append(code.name)
        assert code not in SERVER_ERRORS, f"{code} for {batch}"

    check()
    assert len(codes) >= EXAMPLES
    assert collections.Counter(codes)["OK"] >= 5, collections.Counter(codes)  # reached the store too
