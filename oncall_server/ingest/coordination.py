"""Redis side of ingest: atomic dedup and grouping decisions.

Every key of one decision lives under the service's ``{hash tag}`` so the
scripts run on Redis Cluster. The decisions are fast hints that SQL checks:
the writer's upserts are the last word, and :func:`Coordinator.repair`
points Redis back at what SQL committed. A service whose ``ready`` marker is
missing (a FLUSHALL, a Redis restart without persistence) is reloaded from
SQL before any decision is made for it.

Each service also has a maintenance-windows token, replaced after every change
to its windows. The writer suppresses alerts from windows it caches with the
token they were read under, and the decision script refuses a batch whose
token is no longer current, so a cached window never outlives a change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from oncall_server.ids import uuid7

log = logging.getLogger(__name__)

# A grouping window is stored as "<incident id>|<expires at, ms>". The decision
# compares that expiry with the alert's own time (from the injected clock), so
# tests can move time; the key's TTL only collects garbage.
_LIB = """
local function window_of(value)
  if not value then return nil, 0 end
  local sep = string.find(value, '|', 1, true)
  if not sep then return value, 0 end
  return string.sub(value, 1, sep - 1), tonumber(string.sub(value, sep + 1))
end
"""

_DECIDE = (
    _LIB
    + """
-- One service's alerts of a batch, in order, so later alerts see earlier ones.
-- KEYS: dedup hash, ready marker, group keys for severities 1..5, maintenance-windows token
-- ARGV: the windows token the caller suppressed with ('' = windows read from SQL just now),
--       a new token to store if there is none, then per alert five values: severity (1-5),
--       dedup key ('' = none), fallback incident id, grouping window ms (0 = none), alert time ms
-- Returns a status, the current windows token, then outcome and incident id for each alert.
-- Status 'reload' (the service's state is gone) and 'windows' (the caller's windows are stale)
-- decide nothing.
if redis.call('EXISTS', KEYS[2]) == 0 then return {'reload', ''} end
local token = redis.call('GET', KEYS[8])
if not token then
  -- A token the caller holds may predate a change whose token Redis lost: only a fresh read stands.
  if ARGV[1] ~= '' then return {'windows', ''} end
  token = ARGV[2]
  redis.call('SET', KEYS[8], token)
elseif token ~= ARGV[1] then
  return {'windows', token}
end
local out = {'ok', token}
for i = 3, #ARGV, 5 do
  local key = ARGV[i + 1]
  local existing = false
  if key ~= '' then existing = redis.call('HGET', KEYS[1], key) end
  if existing then
    out[#out + 1] = 'dedup'; out[#out + 1] = existing
  else
    local incident = ARGV[i + 2]
    local outcome = 'new'
    local window = tonumber(ARGV[i + 3])
    if window > 0 then
      local group = KEYS[2 + tonumber(ARGV[i])]
      local now = tonumber(ARGV[i + 4])
      local current, expires = window_of(redis.call('GET', group))
      if current and expires > now then incident = current; outcome = 'grouped' end
      redis.call('SET', group, incident .. '|' .. (now + window), 'PX', window + 3600000)
    end
    if key ~= '' then redis.call('HSET', KEYS[1], key, incident) end
    out[#out + 1] = outcome; out[#out + 1] = incident
  end
end
return out
"""
)

_REPAIR = (
    _LIB
    + """
-- KEYS: dedup hash, group key
-- ARGV: dedup key ('' = none), incident Redis believes, incident SQL committed, '1' to fix the window too
if ARGV[1] ~= '' then
  local current = redis.call('HGET', KEYS[1], ARGV[1])
  if (not current) or current == ARGV[2] then redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
end
if ARGV[4] == '1' then
  local current, expires = window_of(redis.call('GET', KEYS[2]))
  if current == ARGV[2] then redis.call('SET', KEYS[2], ARGV[3] .. '|' .. expires, 'KEEPTTL') end
end
return 1
"""
)

_RELEASE = (
    _LIB
    + """
-- KEYS: dedup hash, group keys...
-- ARGV: incident id, dedup keys...
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[1] then redis.call('HDEL', KEYS[1], ARGV[i]) end
end
for i = 2, #KEYS do
  local current = window_of(redis.call('GET', KEYS[i]))
  if current == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 1
"""
)

_LOAD = """
-- KEYS: ready marker, group keys...
-- ARGV: for each group key, incident id then expiry ms then ttl ms
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #KEYS do
  local base = (i - 2) * 3
  redis.call('SET', KEYS[i], ARGV[base + 1] .. '|' .. ARGV[base + 2], 'PX', ARGV[base + 3], 'NX')
end
redis.call('SET', KEYS[1], '1')
return 1
"""

SEVERITY_LEVELS = range(1, 6)
_GARBAGE_TTL_MS = 24 * 3600 * 1000


def dedup_hash(service_id: str) -> str:
    return f"oncall:{{{service_id}}}:dedup"


def group_key(service_id: str, severity: int) -> str:
    return f"oncall:{{{service_id}}}:group:{severity}"


def ready_key(service_id: str) -> str:
    return f"oncall:{{{service_id}}}:ready"


def windows_key(service_id: str) -> str:
    return f"oncall:{{{service_id}}}:windows"


def _service_keys(service_id: str) -> list[str]:
    """Every key of a service, in the decision script's KEYS order."""
    return [
        dedup_hash(service_id),
        ready_key(service_id),
        *(group_key(service_id, s) for s in SEVERITY_LEVELS),
        windows_key(service_id),
    ]


@dataclass(frozen=True, slots=True)
class Decision:
    """``new``, ``grouped`` or ``dedup``, and the incident it names."""

    outcome: str
    incident_id: str


@dataclass(frozen=True, slots=True)
class ServiceVerdict:
    """How a service's part of a batch went: ``ok``, ``reload`` (its Redis state is gone: nothing
    decided) or ``windows`` (the maintenance windows suppressed with are stale: nothing decided),
    and the service's current windows token ('' if Redis has none)."""

    status: str
    windows_token: str


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    service_id: str
    severity: int
    dedup_key: str | None
    fallback_incident_id: str
    grouping_window_ms: int
    at_ms: int


@dataclass(frozen=True, slots=True)
class Repair:
    """Where SQL committed another incident than Redis decided.

    ``window`` says whether the grouping window should follow. It should when
    the window named a resolved incident; it should not when a "new" alert
    turned out to be a duplicate, since the window then names the incident
    its group opened, not the older one the duplicate joined.
    """

    service_id: str
    severity: int
    dedup_key: str | None
    believed_incident_id: str
    committed_incident_id: str
    window: bool = False


@dataclass(frozen=True, slots=True)
class GroupWindow:
    """An open grouping window found in SQL, for reloading Redis."""

    severity: int
    incident_id: str
    expires_ms: int


class Coordinator:
    """Runs the scripts, pipelined: one round trip per batch."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._decide = redis.register_script(_DECIDE)
        self._repair = redis.register_script(_REPAIR)
        self._release = redis.register_script(_RELEASE)
        self._load = redis.register_script(_LOAD)

    async def decide(
        self, requests: Sequence[DecisionRequest], windows_tokens: Mapping[str, str]
    ) -> tuple[list[Decision | None], dict[str, ServiceVerdict]]:
        """Decide every alert of a batch: one script call per service, its alerts in order.

        ``windows_tokens`` names every service of the batch (also those whose alerts were all
        suppressed, so that suppression is checked too) with the token of the windows it was
        suppressed with. An alert whose service's verdict is not ``ok`` gets no decision.
        """
        by_service: dict[str, list[int]] = {service_id: [] for service_id in windows_tokens}
        for index, req in enumerate(requests):
            by_service[req.service_id].append(index)
        if not by_service:
            return [], {}
        calls = []
        for service_id, indexes in by_service.items():
            args: list[str | int] = [windows_tokens[service_id], uuid7()]
            for index in indexes:
                req = requests[index]
                if req.severity not in SEVERITY_LEVELS:  # it picks a KEYS slot: never let it stray
                    raise ValueError(f"severity {req.severity} is not 1-5")
                args += [
                    req.severity,
                    req.dedup_key or "",
                    req.fallback_incident_id,
                    req.grouping_window_ms,
                    req.at_ms,
                ]
            calls.append((_service_keys(service_id), args))
        if len(calls) == 1:
            replies = [await self._decide(keys=calls[0][0], args=calls[0][1])]
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    await self._decide(keys=keys, args=args, client=pipe)
                replies = await pipe.execute()
        decisions: list[Decision | None] = [None] * len(requests)
        verdicts: dict[str, ServiceVerdict] = {}
        for (service_id, indexes), reply in zip(by_service.items(), replies, strict=True):
            verdicts[service_id] = verdict = ServiceVerdict(_text(reply[0]), _text(reply[1]))
            if verdict.status != "ok":
                continue
            for position, index in enumerate(indexes):
                decisions[index] = Decision(_text(reply[2 + 2 * position]), _text(reply[3 + 2 * position]))
        return decisions, verdicts

    async def repair(self, repairs: Iterable[Repair]) -> None:
        """Point Redis at the incidents SQL committed where they differ from its decision."""
        repairs = list(repairs)
        if not repairs:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for fix in repairs:
                await self._repair(
                    keys=[dedup_hash(fix.service_id), group_key(fix.service_id, fix.severity)],
                    args=[
                        fix.dedup_key or "",
                        fix.believed_incident_id,
                        fix.committed_incident_id,
                        "1" if fix.window else "0",
                    ],
                    client=pipe,
                )
            await pipe.execute()

    async def release(self, service_id: str, incident_id: str, dedup_keys: Iterable[str]) -> None:
        """Forget a resolved incident's dedup keys and grouping windows (only entries still naming it)."""
        keys = [dedup_hash(service_id), *(group_key(service_id, s) for s in SEVERITY_LEVELS)]
        await self._release(keys=keys, args=[incident_id, *dedup_keys])

    async def release_keys(self, service_id: str, incident_id: str, dedup_keys: Iterable[str]) -> None:
        """Forget dedup keys whose alerts were resolved while their incident stays open (its grouping
        window stays: later alerts still join it)."""
        await self._release(keys=[dedup_hash(service_id)], args=[incident_id, *dedup_keys])

    async def load(self, service_id: str, windows: Sequence[GroupWindow]) -> None:
        """Restore a service's grouping windows from SQL and mark it ready (first loader wins)."""
        keys = [ready_key(service_id), *(group_key(service_id, w.severity) for w in windows)]
        args: list[str | int] = []
        for window in windows:
            args += [window.incident_id, window.expires_ms, _GARBAGE_TTL_MS]
        await self._load(keys=keys, args=args)

    async def windows_changed(self, service_id: str) -> None:
        """Call after a change to a service's maintenance windows commits: every writer's cached
        copy of them is refused from its next decision on.

        Never raises: the change is committed, and a writer reads its copy again within a minute
        (:class:`~oncall_server.ingest.windows.MaintenanceWindows`) even if Redis missed this.
        """
        try:
            await self.redis.set(windows_key(service_id), uuid7())
        except Exception:
            log.warning(
                "could not tell ingest that service %s's maintenance windows changed",
                service_id,
                exc_info=True,
            )

    async def forget_service(self, service_id: str) -> None:
        """Drop every key of a service (tests and service deletion)."""
        await self.redis.delete(*_service_keys(service_id))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
