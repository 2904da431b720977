"""The scheduler's Redis side: due work in a sorted set, claimed with a lease.

Members are deterministic ids (``e|<incident>|<run>|<step>``), scored by due
time in epoch milliseconds (as arq and GoAlert keep theirs). ``claim`` moves
due members into an in-flight set scored by lease expiry, in one Lua call,
so two replicas never claim the same member while its lease lasts; a crashed
replica's members become due again when the lease runs out. Nothing here is
authoritative: SQL holds each incident's next step, the fencing check runs
against SQL, and :meth:`DueSet.loaded` tells when Redis lost the set so it
can be rebuilt from SQL. Every key shares one hash tag for Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

DUE_KEY = "oncall:{sched}:due"
INFLIGHT_KEY = "oncall:{sched}:inflight"
LOADED_KEY = "oncall:{sched}:loaded"

# KEYS: due, inflight, loaded. ARGV: now_ms, lease_ms, limit.
# Returns false when the loaded marker is gone (Redis lost the set: rebuild first).
_CLAIM = """
if redis.call('EXISTS', KEYS[3]) == 0 then return false end
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[3])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
for _, member in ipairs(expired) do
  redis.call('ZREM', KEYS[2], member)
  redis.call('ZADD', KEYS[1], now, member)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
local lease_until = now + tonumber(ARGV[2])
for i = 1, #due, 2 do
  redis.call('ZREM', KEYS[1], due[i])
  redis.call('ZADD', KEYS[2], lease_until, due[i])
end
return due
"""

# KEYS: due, inflight. ARGV: member, score pairs. Adds each member not already due or in flight.
_ADD_MISSING = """
local added = 0
for i = 1, #ARGV, 2 do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i]) and not redis.call('ZSCORE', KEYS[2], ARGV[i]) then
    redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
    added = added + 1
  end
end
return added
"""


class DueSet:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._add_missing = redis.register_script(_ADD_MISSING)

    async def add(self, items: Sequence[tuple[str, int]]) -> None:
        """Schedule members at their due times (ms)."""
        if items:
            await self.redis.zadd(DUE_KEY, {member: due_ms for member, due_ms in items})

    async def add_missing(self, items: Sequence[tuple[str, int]]) -> int:
        """Schedule members that are neither due nor in flight; the SQL sweep's repair."""
        added = 0
        for start in range(0, len(items), 500):
            args: list[str | int] = []
            for member, due_ms in items[start : start + 500]:
                args += [member, due_ms]
            added += int(await self._add_missing(keys=[DUE_KEY, INFLIGHT_KEY], args=args))
        return added

    async def claim(self, now_ms: int, lease_ms: int, limit: int) -> list[tuple[str, int]] | None:
        """Due members with their due times, now leased to the caller; None when the set must be rebuilt."""
        raw = await self._claim(keys=[DUE_KEY, INFLIGHT_KEY, LOADED_KEY], args=[now_ms, lease_ms, limit])
        if raw is None:
            return None
        return [(raw[i].decode(), int(float(raw[i + 1]))) for i in range(0, len(raw), 2)]

    async def finish(self, members: Sequence[str], following: Sequence[tuple[str, int]] = ()) -> None:
        """Drop processed members from the in-flight set and schedule what follows them, atomically."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(INFLIGHT_KEY, *members)
            if following:
                pipe.zadd(DUE_KEY, dict(following))
            await pipe.execute()

    async def remove(self, members: Sequence[str]) -> None:
        if members:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(DUE_KEY, *members)
                pipe.zrem(INFLIGHT_KEY, *members)
                await pipe.execute()

    async def next_due_ms(self) -> int | None:
        first = await self.redis.zrange(DUE_KEY, 0, 0, withscores=True)
        return int(first[0][1]) if first else None

    async def mark_loaded(self) -> None:
        await self.redis.set(LOADED_KEY, "1")

    async def loaded(self) -> bool:
        return bool(await self.redis.exists(LOADED_KEY))

    async def size(self) -> tuple[int, int]:
        """(due, in flight) member counts, for metrics and tests."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(DUE_KEY)
            pipe.zcard(INFLIGHT_KEY)
            due, inflight = await pipe.execute()
        return int(due), int(inflight)
