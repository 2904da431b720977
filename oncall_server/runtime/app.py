"""Builds every core piece from settings, once per process.

The gRPC servicers, the HTTP gateway and the CLI all work through an
:class:`App`; none of them builds storage or Redis clients of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from oncall_server import redis_client
from oncall_server.clock import Clock, SystemClock
from oncall_server.incidents.actions import Incidents
from oncall_server.incidents.changes import ChangeFeed
from oncall_server.incidents.source_events import SourceEvents
from oncall_server.ingest.carried_writes import NextIngestCommit
from oncall_server.ingest.coordination import Coordinator
from oncall_server.ingest.drops import DropLog
from oncall_server.ingest.fair_queue import QueueLimits
from oncall_server.ingest.integrations import Integrations
from oncall_server.ingest.pipeline import IngestPipeline
from oncall_server.ingest.writer import GroupCommitWriter
from oncall_server.paging.dispatcher import Dispatcher
from oncall_server.paging.due_set import DueSet
from oncall_server.paging.escalator import EscalationTimers, Escalator
from oncall_server.paging.outcomes import OutcomeRecorder
from oncall_server.plugins import Plugins
from oncall_server.redis_embedded import EmbeddedRedis
from oncall_server.runtime.settings import Settings
from oncall_server.storage import migrate
from oncall_server.storage.engine import create_engine, session_factory

log = logging.getLogger(__name__)


@dataclass
class App:
    settings: Settings
    clock: Clock
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis
    plugins: Plugins
    coordinator: Coordinator
    changes: ChangeFeed
    writer: GroupCommitWriter
    integrations: Integrations
    incidents: Incidents
    pipeline: IngestPipeline
    escalator: Escalator
    dispatcher: Dispatcher
    embedded_redis: EmbeddedRedis | None = None
    _closed: bool = field(default=False, repr=False)

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        clock: Clock | None = None,
        plugins: Plugins | None = None,
        run_migrations: bool = True,
    ) -> App:
        clock = clock or SystemClock()
        embedded: EmbeddedRedis | None = None
        redis_url = settings.redis_url
        if not redis_url:
            embedded = EmbeddedRedis(settings.data_dir)
            redis_url = await embedded.start()
        engine = create_engine(settings.resolved_database_url, sqlite_driver=settings.sqlite_driver)
        try:
            if run_migrations:
                await migrate.upgrade(engine)
            redis = redis_client.connect(redis_url, timeout_seconds=settings.redis_timeout_seconds)
            await redis.ping()
        except BaseException:
            await engine.dispose()
            if embedded:
                await embedded.stop()
            raise
        sessions = session_factory(engine)
        plugins = plugins or Plugins(settings=settings).load()
        coordinator = Coordinator(redis)
        changes = ChangeFeed(redis)

        # Page outcomes are written by the next ingest commit when one is coming (carried writes).
        next_ingest_commit = NextIngestCommit()
        outcomes = OutcomeRecorder(sessions, changes, ingest_commit=next_ingest_commit)
        dispatcher = Dispatcher(
            sessions,
            clock,
            plugins,
            outcomes,
            public_url=settings.public_url,
            max_attempts=settings.notify_max_attempts,
            lease_seconds=settings.notify_lease_seconds,
            send_timeout_seconds=settings.notify_send_timeout_seconds,
            retry_base_seconds=settings.notify_retry_base_seconds,
            retry_max_seconds=settings.notify_retry_max_seconds,
            poll_seconds=settings.notify_poll_seconds,
        )
        timers = EscalationTimers(DueSet(redis))
        incidents = Incidents(sessions, clock, coordinator, changes, timers, dispatcher)
        escalator = Escalator(
            sessions,
            timers,
            clock,
            changes,
            incidents,
            dispatcher,
            lease_seconds=settings.scheduler_lease_seconds,
            poll_seconds=settings.scheduler_poll_seconds,
        )
        writer = GroupCommitWriter(
            engine,
            coordinator,
            clock,
            batch_size=settings.write_batch_size,
            linger_seconds=settings.write_linger_ms / 1000,
            changes=changes,
            escalations=escalator,
            next_commit=next_ingest_commit,
            carried_writes=outcomes,
            limits=QueueLimits(
                integration_alerts=settings.ingest_integration_queue_alerts,
                tenant_alerts=settings.ingest_tenant_queue_alerts,
                total_alerts=settings.ingest_queue_alerts,
                contended_share_alerts=settings.ingest_fair_share_alerts,
            ),
        )
        integrations = Integrations(sessions, clock, plugins)
        pipeline = IngestPipeline(
            integrations,
            plugins,
            writer,
            SourceEvents(sessions, clock, coordinator, incidents),
            DropLog(redis),
            clock,
            max_batch_alerts=settings.max_batch_alerts,
            room_wait_seconds=settings.ingest_queue_wait_seconds,
        )
        app = cls(
            settings=settings,
            clock=clock,
            engine=engine,
            sessions=sessions,
            redis=redis,
            plugins=plugins,
            coordinator=coordinator,
            changes=changes,
            writer=writer,
            integrations=integrations,
            incidents=incidents,
            pipeline=pipeline,
            escalator=escalator,
            dispatcher=dispatcher,
            embedded_redis=embedded,
        )
        await writer.start()
        return app

    async def close(self) -> None:
        """Flush the writer, then close Redis and the database, then the embedded Redis."""
        if self._closed:
            return
        self._closed = True
        await self.writer.stop()
        await self.changes.flush()
        await self.plugins.close()
        await self.redis.aclose()
        await self.engine.dispose()
        if self.embedded_redis:
            await self.embedded_redis.stop()
