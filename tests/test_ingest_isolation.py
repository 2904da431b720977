"""A bad alert is refused on its own and never fails the alerts committed beside it.

The writer commits many requests' alerts in one transaction. What can be checked is checked before
the batch, in the pipeline every face goes through: free text is repaired, identifiers the database
cannot hold are refused naming the field. What only the database can refuse fails the batch, which
is then written again in halves, so only the offending request fails and its neighbours keep the
outcomes they would have had on their own.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis
from sqlalchemy import select

from oncall_server.errors import InvalidArgument
from oncall_server.ids import uuid7
from oncall_server.ingest.model import IngestResult, NormalizedEvent, Outcome, PreparedAlert
from oncall_server.runtime.app import App
from oncall_server.severity import Severity
from oncall_server.storage.models import Incident
from oncall_server.testing import RunningServer, Tenant, bootstrap, running_server, server_settings
from tests.helpers import alerts_of, count_rows, post_body, webhook_url

ROUNDS = 20
NEIGHBOURS = 5


async def incidents_of(app: App, service_id: str) -> list[Incident]:
    async with app.sessions() as session:
        return list((await session.scalars(select(Incident).where(Incident.service_id == service_id))).all())


async def neighbours_round(
    http: aiohttp.ClientSession, server: RunningServer, tenant: Tenant, r: int
) -> None:
    """The well-behaved tenant's alerts of round ``r``: every one must be accepted."""
    answers = await asyncio.gather(
        *(
            post_body(
                http,
                webhook_url(server, tenant),
                json.dumps({"title": f"cpu {r}.{i}", "dedup_key": f"b-{r}-{i}"}).encode(),
            )
            for i in range(NEIGHBOURS)
        )
    )
    assert [s for s, _ in answers] == [202] * NEIGHBOURS, answers
    assert [b["outcome"] for _, b in answers] == ["created"] * NEIGHBOURS


async def assert_neighbours_stored_once(app: App, tenant: Tenant) -> None:
    stored = await alerts_of(app, tenant.service_id)
    assert sorted(a.dedup_key or "" for a in stored) == sorted(
        f"b-{r}-{i}" for r in range(ROUNDS) for i in range(NEIGHBOURS)
    )
    assert {a.occurrence_count for a in stored} == {1}
    assert len(await incidents_of(app, tenant.service_id)) == ROUNDS * NEIGHBOURS


# A webhook body of round r (raw JSON: escapes carry the NUL and lone surrogates) and the field the
# 400 names. Identifiers are compared and looked up, so they are refused rather than rewritten.
def prepared(
    tenant: Tenant, app: App, dedup_key: str | None, *, service_id: str = "", window_ms: int = 0
) -> PreparedAlert:
    return PreparedAlert(
        tenant.tenant_id,
        service_id or tenant.service_id,
        tenant.integration_id,
        window_ms,
        NormalizedEvent(title=f"disk full {dedup_key}", severity=Severity.HIGH, dedup_key=dedup_key),
        app.clock.now(),
    )


async def submit_together(app: App, requests: list[list[PreparedAlert]]) -> list[Any]:
    """Every request queued before the writer runs again: they share one batch."""
    calls = [asyncio.create_task(app.writer.submit(alerts)) for alerts in requests]
    return list(await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30))


@pytest.mark.parametrize("kind", ["distinct-keys", "one-key", "keyless-grouped"])
async def test_an_alert_the_database_refuses_fails_alone_and_its_neighbours_keep_their_outcomes(
    tmp_path: Path, database_url: str, redis_url: str, redis: Redis, kind: str
) -> None:
    """The database itself refuses one request's alert (its service is gone: a foreign key). The
    batch fails; written again in parts, the neighbours commit with the outcomes they would have had
    on their own although Redis decided them once for the failed attempt."""
    settings = server_settings(tmp_path, database_url, redis_url)
    async with running_server(settings) as server:
        app = server.app
        offender = await bootstrap(app)
        neighbour = await bootstrap(app, alert_grouping="time", alert_grouping_timeout_minutes=5)
        keyed: dict[str, list[str | None]] = {
            "distinct-keys": [f"b-{i}" for i in range(NEIGHBOURS)],
            "one-key": ["b"] * NEIGHBOURS,
            "keyless-grouped": [None] * NEIGHBOURS,
        }
        keys = keyed[kind]
        window_ms = 5 * 60_000 if kind == "keyless-grouped" else 0
        orphan = prepared(offender, app, "orphan", service_id=uuid7())  # no such service
        before = app.writer.batches_committed
        mine = [[prepared(neighbour, app, k, window_ms=window_ms)] for k in keys]
        answers = await submit_together(app, [mine[0], [orphan], *mine[1:]])
        refused = answers.pop(1)
        assert isinstance(refused, InvalidArgument), refused
        assert "the database refused" in refused.message
        assert not any(isinstance(a, BaseException) for a in answers), answers
        results: list[IngestResult] = [a[0] for a in answers]
        expected = {
            "distinct-keys": [Outcome.CREATED] * NEIGHBOURS,
            "one-key": [Outcome.CREATED] + [Outcome.DEDUPLICATED] * (NEIGHBOURS - 1),
            "keyless-grouped": [Outcome.CREATED] + [Outcome.GROUPED] * (NEIGHBOURS - 1),
        }[kind]
        assert [r.outcome for r in results] == expected
        assert app.writer.batches_committed > before

        incidents = await incidents_of(app, neighbour.service_id)
        assert len(incidents) == (NEIGHBOURS if kind == "distinct-keys" else 1)
        assert {r.incident_id for r in results} == {i.id for i in incidents}
        for incident in incidents:  # every incident counts exactly the alerts that joined it
            assert incident.alert_count == sum(
                1 for r in results if r.incident_id == incident.id and r.outcome is not Outcome.DEDUPLICATED
            )
        stored = await alerts_of(app, neighbour.service_id)
        assert sum(a.occurrence_count for a in stored) == NEIGHBOURS
        assert await alerts_of(app, orphan.service_id) == []

        # Redis may still hold what the failed attempt decided; SQL keeps one open alert per key
        # and the next alert of each key joins the incident that was committed.
        again = await app.writer.submit(
            [prepared(neighbour, app, k, window_ms=window_ms) for k in dict.fromkeys(keys)]
        )
        if kind != "keyless-grouped":
            assert {r.outcome for r in again} == {Outcome.DEDUPLICATED}
            assert {r.incident_id for r in again} <= {r.incident_id for r in results}
        else:
            assert [(r.outcome, r.incident_id) for r in again] == [(Outcome.GROUPED, results[0].incident_id)]


async def test_a_request_the_database_refuses_alone_answers_400_and_stores_nothing(
    server: RunningServer,
) -> None:
    app = server.app
    tenant = await bootstrap(app)
    with pytest.raises(InvalidArgument, match="the database refused"):
        await app.writer.submit([prepared(tenant, app, "ok"), prepared(tenant, app, "x", service_id=uuid7())])
    assert await count_rows(app) == (0, 0)
    assert (await app.writer.submit([prepared(tenant, app, "ok")]))[0].outcome is Outcome.CREATED


# A webhook body of round r (raw JSON: escapes carry the NUL and lone surrogates) and the field the
# 400 names. Identifiers are compared and looked up, so they are refused rather than rewritten.
BAD_IDENTIFIERS = [
    pytest.param('{"title": "x", "dedup_key": "a-%d\\u0000"}', "body.dedup_key", id="nul-dedup-key"),
    pytest.param('{"title": "x %d", "source": "\\ud800"}', "body.source", id="surrogate-source"),
    pytest.param('{"title": "x %d", "source": "' + "s" * 65 + '"}', "body.source", id="long-source"),
    pytest.param(
        '[{"title": "ok", "dedup_key": "a-%d"}, {"title": "x", "source": "' + "s" * 65 + '"}]',
        "body[1].source",
        id="batch-long-source",
    ),
]


@pytest.mark.parametrize(("bad", "field"), BAD_IDENTIFIERS)
async def test_an_identifier_the_database_cannot_hold_is_refused_alone_naming_the_field(
    server: RunningServer, bad: str, field: str
) -> None:
    app = server.app
    offender, neighbour = await bootstrap(app), await bootstrap(app)
    async with aiohttp.ClientSession() as http:
        for r in range(ROUNDS):
            refused, _ = await asyncio.gather(
                post_body(http, webhook_url(server, offender), (bad % r).encode()),
                neighbours_round(http, server, neighbour, r),
            )
            assert refused[0] == 400, refused
            assert refused[1]["fields"][0]["field"] == field
    await assert_neighbours_stored_once(app, neighbour)
    assert await alerts_of(app, offender.service_id) == []  # nothing of a refused request is stored


# Free text the database cannot hold, as an adapter may hand it to the pipeline (every face goes
# through ``IngestPipeline.ingest_events``), and what is stored instead: the alert is kept.
BAD_TEXT = [
    pytest.param({"title": "disk\x00full"}, "title", "disk\ufffdfull", id="nul-title"),
    pytest.param(
        {"description": "half a pair \ud83d here"},
        "description",
        "half a pair \ufffd here",
        id="surrogate-description",
    ),
    pytest.param(
        {"details": {"host\x00": "web\udfff"}}, "details", {"host\ufffd": "web\ufffd"}, id="details"
    ),
    pytest.param(
        {"raw_payload": '{"x": "\x00\udc80"}'}, "raw_payload", '{"x": "\ufffd\ufffd"}', id="raw-payload"
    ),
]


@pytest.mark.parametrize(("fields", "column", "stored"), BAD_TEXT)
async def test_free_text_the_database_cannot_hold_is_repaired_and_never_fails_the_batch(
    server: RunningServer, fields: dict[str, Any], column: str, stored: Any
) -> None:
    app = server.app
    offender, neighbour = await bootstrap(app), await bootstrap(app)
    context = await app.integrations.resolve_key(offender.integration_key)
    async with aiohttp.ClientSession() as http:
        for r in range(ROUNDS):
            event = NormalizedEvent(
                **{"title": "t", "severity": Severity.HIGH, "dedup_key": f"a-{r}", **fields}
            )
            repaired, _ = await asyncio.gather(
                app.pipeline.ingest_events(context, [event]), neighbours_round(http, server, neighbour, r)
            )
            assert repaired[0].outcome is Outcome.CREATED
    await assert_neighbours_stored_once(app, neighbour)
    kept = await alerts_of(app, offender.service_id)
    assert len(kept) == ROUNDS
    assert [getattr(a, column) for a in kept] == [stored] * ROUNDS


async def test_an_over_long_idempotency_key_is_refused_naming_the_header(server: RunningServer) -> None:
    tenant = await bootstrap(server.app)
    async with aiohttp.ClientSession() as http:
        status, body = await post_body(
            http, webhook_url(server, tenant), b'{"title": "x"}', {"Idempotency-Key": "k" * 256}
        )
        assert status == 400 and body["fields"][0]["field"] == "Idempotency-Key", body
        # A batch stores "<key>#<index>": the key must leave room for the longest index.
        status, body = await post_body(
            http,
            webhook_url(server, tenant),
            json.dumps([{"title": f"t{i}"} for i in range(12)]).encode(),
            {"Idempotency-Key": "k" * 253},
        )
        assert status == 400 and body["fields"][0]["field"] == "Idempotency-Key", body
    assert await count_rows(server.app) == (0, 0)
