"""What waits for the group-commit writer: one queue per tenant, drained fairly, with limits.

One tenant's flood must not delay another tenant's page. Each tenant has its own first-in
first-out queue (so each integration's order holds); a batch takes from every waiting tenant in
turn by deficit round-robin counted in alerts, so a tenant with a backlog gets at most its share
of a batch while others wait, and the whole writer when it is alone. Queued work (from submit
until answered) is bounded per integration, per tenant and in all: over a limit the sender is
refused with a retry hint, or, for a caller that holds its own backlog (the bus), waits for room.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge

from oncall_server.errors import ResourceExhausted
from oncall_server.ingest.model import IngestResult, PreparedAlert

log = logging.getLogger(__name__)

REFUSED = MetricCounter(
    "oncall_ingest_refused_alerts_total",
    "Alerts refused because their integration, tenant or the server had too many waiting to be stored.",
    ["tenant_id", "integration_id", "limit"],
)
QUEUED = Gauge("oncall_ingest_queued_alerts", "Alerts submitted to the ingest writer and not yet answered.")

# A refusal is logged at most this often per integration and limit; the counter has every one.
_LOG_EVERY_SECONDS = 60.0
_MAX_RETRY_AFTER_SECONDS = 60.0
# A tenant that submitted this recently counts as active: while another is, a lone tenant's batches
# stay at its fair share, so the other's next alert never waits behind a whole large batch.
_ACTIVE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Most alerts waiting to be stored, and a waiting tenant's share of a batch when others wait."""

    integration_alerts: int = 5000
    tenant_alerts: int = 10000
    total_alerts: int = 50000
    contended_share_alerts: int = 100


@dataclass(slots=True)
class QueuedRequest:
    """One caller's alerts: stored in one transaction, answered together."""

    alerts: Sequence[PreparedAlert]
    future: asyncio.Future[list[IngestResult]]
    tenant_id: str
    by_integration: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, alerts: Sequence[PreparedAlert], future: asyncio.Future[list[IngestResult]]) -> QueuedRequest:
        return cls(alerts, future, alerts[0].tenant_id, Counter(a.integration_id for a in alerts))


class FairQueue:
    """The writer's waiting room; one per process (limits are per process, see docs/ingest.md)."""

    def __init__(self, limits: QueueLimits | None = None) -> None:
        self.limits = limits or QueueLimits()
        self._queues: OrderedDict[str, deque[QueuedRequest]] = OrderedDict()
        self._deficit: dict[str, int] = {}
        self._tenant_alerts: Counter[str] = Counter()
        self._integration_alerts: Counter[str] = Counter()
        self._total_alerts = 0
        self._work = asyncio.Event()
        self._room = asyncio.Event()
        self.waiting_for_room = 0  # callers that will queue work once there is room
        self._logged: dict[tuple[str, str], float] = {}
        self._last_submitted: dict[str, float] = {}  # tenant → monotonic time
        # Alerts answered per second, smoothed: what a retry hint is computed from.
        self._drain_rate = 0.0

    # -- admission ------------------------------------------------------------------------------

    async def wait_for_room(
        self, tenant_id: str, integration_id: str, alerts: int = 1, *, wait_seconds: float | None = 0.0
    ) -> None:
        """Return once ``alerts`` more fit the limits; refuse (ResourceExhausted, with a retry hint)
        if they still do not after ``wait_seconds`` (None: wait as long as it takes).

        Work is admitted when its scope has nothing queued, whatever its size, so a request larger
        than a limit is slow, never refused forever. Waiting instead of refusing at once turns a
        flooding sender's retry storm into back-pressure: its connections wait for room, and the
        CPU goes to storing alerts, not to refusing them.
        """
        await self._room_for(tenant_id, Counter({integration_id: alerts}), alerts, wait_seconds)

    async def put(self, request: QueuedRequest, *, wait_seconds: float | None = 0.0) -> None:
        """Queue ``request`` once it fits the limits, or refuse it whole (nothing of it is stored)."""
        await self._room_for(request.tenant_id, request.by_integration, len(request.alerts), wait_seconds)
        self._enqueue(request)

    async def _room_for(
        self, tenant_id: str, by_integration: Counter[str], size: int, wait_seconds: float | None
    ) -> None:
        over = self._over_limit(tenant_id, by_integration, size)
        if over is None:
            return
        if wait_seconds != 0:
            self.waiting_for_room += 1
            try:
                async with asyncio.timeout(wait_seconds):
                    while over is not None:
                        self._room.clear()
                        await self._room.wait()
                        over = self._over_limit(tenant_id, by_integration, size)
                return
            except TimeoutError:
                over = self._over_limit(tenant_id, by_integration, size)
                if over is None:
                    return
            finally:
                self.waiting_for_room -= 1
        self._refuse(tenant_id, next(iter(by_integration)), size, *over)

    def _over_limit(
        self, tenant_id: str, by_integration: Counter[str], size: int
    ) -> tuple[str, str, int, int] | None:
        """The first limit ``size`` more alerts would pass: (limit, setting, queued, limit value)."""
        limits = self.limits
        for integration_id, count in by_integration.items():
            queued = self._integration_alerts[integration_id]
            if queued and queued + count > limits.integration_alerts:
                return (
                    "integration",
                    "ONCALL_INGEST_INTEGRATION_QUEUE_ALERTS",
                    queued,
                    limits.integration_alerts,
                )
        queued = self._tenant_alerts[tenant_id]
        if queued and queued + size > limits.tenant_alerts:
            return "tenant", "ONCALL_INGEST_TENANT_QUEUE_ALERTS", queued, limits.tenant_alerts
        if self._total_alerts and self._total_alerts + size > limits.total_alerts:
            return "server", "ONCALL_INGEST_QUEUE_ALERTS", self._total_alerts, limits.total_alerts
        return None

    def _refuse(
        self,
        tenant_id: str,
        integration_id: str,
        alerts: int,
        limit: str,
        setting: str,
        queued: int,
        most: int,
    ) -> NoReturn:
        REFUSED.labels(tenant_id, integration_id, limit).inc(alerts)
        now = time.monotonic()
        if now - self._logged.get((integration_id, limit), -math.inf) >= _LOG_EVERY_SECONDS:
            self._logged[(integration_id, limit)] = now
            log.warning(
                "refusing alerts of tenant %s integration %s: %d alerts of this %s wait to be stored "
                "(%s=%d); the sender is told to retry (counted in oncall_ingest_refused_alerts_total)",
                tenant_id,
                integration_id,
                queued,
                limit,
                setting,
                most,
            )
        retry_after = self._retry_after(queued)
        owner = "the server" if limit == "server" else f"this {limit}"
        raise ResourceExhausted(
            f"{queued} alerts of {owner} are waiting to be stored (at most {most}, {setting}); "
            f"nothing of this request was stored: retry in {math.ceil(retry_after)} s",
            retry_after_seconds=retry_after,
        )

    def _retry_after(self, queued: int) -> float:
        """About when the backlog ahead will have drained, from the recent drain rate."""
        if self._drain_rate <= 0:
            return 1.0
        return min(_MAX_RETRY_AFTER_SECONDS, max(1.0, queued / self._drain_rate))

    def _enqueue(self, request: QueuedRequest) -> None:
        size = len(request.alerts)
        self._tenant_alerts[request.tenant_id] += size
        self._integration_alerts.update(request.by_integration)
        self._total_alerts += size
        QUEUED.inc(size)
        self._last_submitted[request.tenant_id] = time.monotonic()
        queue = self._queues.get(request.tenant_id)
        if queue is None:
            queue = self._queues[request.tenant_id] = deque()
            self._deficit[request.tenant_id] = 0
        queue.append(request)
        self._work.set()

    # -- draining -------------------------------------------------------------------------------

    @property
    def queued_alerts(self) -> int:
        """Alerts submitted and not yet answered."""
        return self._total_alerts

    def has_work(self) -> bool:
        return bool(self._queues)

    def has_callers(self) -> bool:
        """Work is queued, or will be as soon as there is room."""
        return bool(self._queues) or self.waiting_for_room > 0

    async def wait_for_work(self) -> None:
        """Until something is queued, or :meth:`wake` is called."""
        if not self._queues:
            self._work.clear()
            await self._work.wait()

    def wake(self) -> None:
        """Let the drainer look again (to see that it is stopping)."""
        self._work.set()

    def take_batch(self, batch_size: int) -> list[QueuedRequest]:
        """The next batch: a lone tenant's requests up to ``batch_size`` alerts (whole requests, at
        least one); with several waiting, one deficit round-robin pass, each tenant's quantum being
        its share of the batch, at most ``contended_share_alerts``. A lone tenant's batch is held to
        that share too while another tenant has submitted in the last second."""
        taken: list[QueuedRequest] = []
        if len(self._queues) == 1:
            tenant_id, queue = next(iter(self._queues.items()))
            if self._others_active(tenant_id):
                batch_size = min(batch_size, self.limits.contended_share_alerts)
            count = 0
            while queue and count < batch_size:
                request = queue.popleft()
                taken.append(request)
                count += len(request.alerts)
            self._drop_if_empty(tenant_id)
            return taken
        quantum = max(1, min(self.limits.contended_share_alerts, batch_size // len(self._queues)))
        while not taken and self._queues:
            for tenant_id in list(self._queues):
                queue = self._queues[tenant_id]
                self._deficit[tenant_id] += quantum
                while queue and len(queue[0].alerts) <= self._deficit[tenant_id]:
                    request = queue.popleft()
                    self._deficit[tenant_id] -= len(request.alerts)
                    taken.append(request)
                if not self._drop_if_empty(tenant_id):
                    self._queues.move_to_end(tenant_id)
        return taken

    def _others_active(self, tenant_id: str) -> bool:
        """Another tenant submitted within ``_ACTIVE_SECONDS`` (older entries are forgotten)."""
        since = time.monotonic() - _ACTIVE_SECONDS
        for other, at in list(self._last_submitted.items()):
            if at < since:
                del self._last_submitted[other]
        return any(other != tenant_id for other in self._last_submitted)

    def _drop_if_empty(self, tenant_id: str) -> bool:
        """Forget an emptied tenant (its unused deficit too: credit is not saved up while idle)."""
        if self._queues[tenant_id]:
            return False
        del self._queues[tenant_id]
        del self._deficit[tenant_id]
        return True

    def answered(self, requests: Sequence[QueuedRequest], seconds: float) -> None:
        """``requests`` were answered after ``seconds`` of writing: their room is free again."""
        size = 0
        for request in requests:
            size += len(request.alerts)
            self._tenant_alerts[request.tenant_id] -= len(request.alerts)
            if not self._tenant_alerts[request.tenant_id]:
                del self._tenant_alerts[request.tenant_id]
            self._integration_alerts.subtract(request.by_integration)
            for integration_id in request.by_integration:
                if not self._integration_alerts[integration_id]:
                    del self._integration_alerts[integration_id]
        self._total_alerts -= size
        QUEUED.dec(size)
        if seconds > 0 and size:
            rate = size / seconds
            self._drain_rate = rate if not self._drain_rate else 0.8 * self._drain_rate + 0.2 * rate
        self._room.set()
