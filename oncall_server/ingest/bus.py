"""The event bus: One-suite services publish alerts on Redis Streams.

One stream per source (``oncall:bus:rmm``, ``oncall:bus:security``,
``oncall:bus:backups``, ``oncall:bus:psa``), one consumer group per
deployment (``ONCALL_BUS_GROUP``), each server process a consumer.

Delivery is at least once and processing idempotent: a message is
acknowledged only after its alerts are committed, under the idempotency key
``bus:<source>:<message id>``, so a redelivery never opens a second incident.
A consumer that dies between read and ack leaves its messages pending; any
consumer reclaims them with XAUTOCLAIM once they have been idle longer than
``ONCALL_BUS_CLAIM_IDLE_MS`` (longer than the longest handler). A message
that fails ``ONCALL_BUS_MAX_DELIVERIES`` times for a reason retrying cannot
fix (a bad payload, an unknown tenant) moves to the dead-letter stream
``oncall:bus:dead`` with its error, where operators list and replay it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from oncall_server import failures, json_codec
from oncall_server.errors import InvalidArgument, NotFound, OncallError, ResourceExhausted, Unavailable
from oncall_server.hookspecs import AdapterContext
from oncall_server.runtime.app import App

log = logging.getLogger(__name__)

SOURCES = ("rmm", "security", "backups", "psa")
DEAD_LETTERS = "oncall:bus:dead"
FAILURES = "oncall:bus:failures"
STREAM_MAXLEN = 1_000_000


def stream_of(source: str) -> str:
    if source not in SOURCES:
        raise InvalidArgument.field("source", f"must be one of {', '.join(SOURCES)}")
    return f"oncall:bus:{source}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def publish(redis: Redis, source: str, payload: dict[str, Any]) -> str:
    """Publish one event; returns its stream id. The helper One-suite services call."""
    if not isinstance(payload, dict):
        raise InvalidArgument.field("payload", "must be a JSON object")
    message_id = await redis.xadd(
        stream_of(source), {"payload": json_codec.dumps(payload)}, maxlen=STREAM_MAXLEN, approximate=True
    )
    return _text(message_id)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    stream: str
    message_id: str
    payload: str
    error: str
    failed_at: str


async def dead_letters(redis: Redis, count: int = 100) -> list[DeadLetter]:
    """The newest dead letters first."""
    entries: Any = await redis.xrevrange(DEAD_LETTERS, count=count)
    out = []
    for entry_id, fields in entries:
        f = {_text(k): _text(v) for k, v in (fields or {}).items()}
        out.append(
            DeadLetter(
                _text(entry_id), f["stream"], f["message_id"], f["payload"], f["error"], f["failed_at"]
            )
        )
    return out


async def replay(redis: Redis, dead_letter_id: str) -> str:
    """Put a dead letter back on its stream (after fixing its cause); returns the new message id."""
    entries = await redis.xrange(DEAD_LETTERS, min=dead_letter_id, max=dead_letter_id)
    if not entries:
        raise NotFound(f"no dead letter {dead_letter_id!r}")
    fields = {_text(k): _text(v) for k, v in (entries[0][1] or {}).items()}
    new_id = await redis.xadd(
        fields["stream"], {"payload": fields["payload"]}, maxlen=STREAM_MAXLEN, approximate=True
    )
    await redis.xdel(DEAD_LETTERS, dead_letter_id)
    return _text(new_id)


class BusConsumer:
    """One consumer of the deployment's group, reading every source stream."""

    name = "bus"

    def __init__(self, app: App, consumer: str | None = None) -> None:
        self.app = app
        self.redis = app.redis
        self.group = app.settings.bus_group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = app.settings.bus_claim_idle_ms
        self.max_deliveries = app.settings.bus_max_deliveries
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def ensure_groups(self) -> None:
        for source in SOURCES:
            try:
                await self.redis.xgroup_create(stream_of(source), self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def start(self) -> None:
        await self.ensure_groups()
        self._task = asyncio.create_task(self._run(), name="bus-consumer")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task:
            await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_claim = 0.0
        while not self._stopping.is_set():
            try:
                if loop.time() >= next_claim:
                    await self.reclaim_once()
                    next_claim = loop.time() + max(self.claim_idle_ms / 2000, 0.05)
                await self.poll_once(block_ms=200)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # Redis lost the streams or the group (a FLUSHALL, a restart without persistence).
                log.warning("bus consumer group missing; recreating it")
                await self.ensure_groups()
            except Exception:
                log.exception("bus consumer iteration failed; retrying")
                await asyncio.sleep(0.5)

    async def poll_once(self, block_ms: int = 0) -> int:
        """Read and process new messages; returns how many were handled."""
        replies: Any = await self.redis.xreadgroup(
            self.group, self.consumer, {stream_of(s): ">" for s in SOURCES}, count=200, block=block_ms or None
        )
        handled = 0
        for stream, messages in replies or []:
            handled += await self.process(_text(stream), messages)
        return handled

    async def reclaim_once(self) -> int:
        """Take over messages another consumer left pending too long (it crashed or hung)."""
        handled = 0
        for source in SOURCES:
            reply = await self.redis.xautoclaim(
                stream_of(source),
                self.group,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id="0-0",
                count=200,
            )
            messages = [m for m in reply[1] if m[1] is not None]
            if messages:
                log.info("reclaimed %d pending message(s) from %s", len(messages), stream_of(source))
                handled += await self.process(stream_of(source), messages)
        return handled

    async def process(self, stream: str, messages: list[Any], *, ack: bool = True) -> int:
        """Handle messages concurrently (so the writer commits them together), then ack the done ones."""
        outcomes = await asyncio.gather(
            *(self._handle(stream, _text(mid), fields) for mid, fields in messages)
        )
        done = [_text(mid) for (mid, _), ok in zip(messages, outcomes, strict=True) if ok]
        if ack and done:
            await self.redis.xack(stream, self.group, *done)
            await self.redis.hdel(FAILURES, *(f"{stream}:{mid}" for mid in done))
        return len(done)

    async def _handle(self, stream: str, message_id: str, fields: dict[Any, Any]) -> bool:
        """True when the message is finished with (committed or dead-lettered)."""
        source = stream.rsplit(":", 1)[1]
        raw = _text(fields.get(b"payload", fields.get("payload", "")))
        try:
            payload = json_codec.loads_request(raw, "payload")
            tenant_id = payload.get("tenant_id", "") if isinstance(payload, dict) else ""
            context = await self.app.integrations.for_tenant(str(tenant_id), source)
            events = self.app.plugins.adapter(source).parse(payload, AdapterContext(context.name, source, {}))
            # The stream holds the backlog: over a queue limit, wait for room rather than refuse.
            await self.app.pipeline.ingest_events(
                context, events, idempotency_key=f"bus:{source}:{message_id}", source_holds_backlog=True
            )
            return True
        except OncallError as exc:
            if isinstance(exc, (Unavailable, ResourceExhausted)):
                log.warning("bus message %s %s: %s; it stays pending", stream, message_id, exc.message)
                return False
            return await self._failed(stream, message_id, raw, exc.message)
        except Exception as exc:
            if failures.is_outage(exc):  # the stream holds it until the database or Redis is back
                log.warning("bus message %s %s: %s; it stays pending", stream, message_id, type(exc).__name__)
                return False
            # A bug: counted like a refusal, so the message ends in the dead letters, not in a loop.
            log.exception("bus message %s %s: unexpected error", stream, message_id)
            return await self._failed(stream, message_id, raw, f"internal error ({type(exc).__name__})")

    async def _failed(self, stream: str, message_id: str, raw: str, error: str) -> bool:
        attempts = await self.redis.hincrby(FAILURES, f"{stream}:{message_id}", 1)
        log.warning(
            "bus message %s %s failed (%d/%d): %s", stream, message_id, attempts, self.max_deliveries, error
        )
        if attempts < self.max_deliveries:
            return False
        await self.redis.xadd(
            DEAD_LETTERS,
            {
                "stream": stream,
                "message_id": message_id,
                "payload": raw,
                "error": error,
                "failed_at": datetime.now(UTC).isoformat(),
            },
        )
        log.error(
            "bus message %s %s dead-lettered after %d failures: %s", stream, message_id, attempts, error
        )
        return True
