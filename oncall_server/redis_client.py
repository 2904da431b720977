"""The server's Redis client: redis-py's asyncio client, its commands packed by hiredis.

redis-py's asyncio connections pack a command in Python, joining a growing buffer once per
argument; its sync connections use hiredis's packer when hiredis is installed (a dependency here).
The ingest writer's decision script takes five arguments per alert, so a batch of 500 alerts is a
command of 2,500 arguments, which hiredis packs 6.5 times faster than redis-py's asyncio code,
byte for byte the same command (``bench/redis_pack.py``: 2.7 ms against 0.42 ms).
"""

from __future__ import annotations

from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection


class _HiredisPacking:
    """Mixed into the pool's connection class: redis-py's sync packing, minus its per-argument copy."""

    def pack_command(self, *args: Any) -> list[bytes]:
        head = args[0]
        if isinstance(head, str):  # 'CONFIG GET': the words go as separate arguments
            packed = (*head.encode().split(), *args[1:])
        elif isinstance(head, bytes) and b" " in head:
            packed = (*head.split(), *args[1:])
        else:
            packed = args
        try:
            return [hiredis.pack_command(packed)]
        except TypeError:  # bytearray, an int subclass, or what Redis cannot take: redis-py decides
            return AbstractConnection.pack_command(cast(AbstractConnection, self), *args)


_PACKING_CLASSES: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _hiredis_packing(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """One subclass per connection class (redis-py compares classes, e.g. on pool reuse)."""
    if base not in _PACKING_CLASSES:
        _PACKING_CLASSES[base] = type(f"HiredisPacking{base.__name__}", (_HiredisPacking, base), {})
    return _PACKING_CLASSES[base]


def connect(url: str, *, timeout_seconds: float | None = None, **options: Any) -> Redis:
    """``Redis.from_url`` whose connections (TCP, TLS or unix socket, as the URL says) pack with hiredis.

    ``timeout_seconds`` bounds connecting and each command's answer: a Redis that stops answering
    without closing the connection (paused, partitioned away) then fails the call, and ingest
    answers "unavailable, retry", instead of every caller waiting until TCP gives up, or forever.
    Pub/sub reads (the change feed's watchers) block without it, as redis-py does for them.
    """
    if timeout_seconds is not None:
        options = {"socket_timeout": timeout_seconds, "socket_connect_timeout": timeout_seconds, **options}
    client = Redis.from_url(url, **options)
    pool = client.connection_pool
    # hiredis writes text as strict UTF-8, redis-py as the client's encoding says: same bytes only then.
    encoding = pool.connection_kwargs.get("encoding", "utf-8").lower().replace("_", "-")
    if encoding in ("utf-8", "utf8") and pool.connection_kwargs.get("encoding_errors", "strict") == "strict":
        pool.connection_class = _hiredis_packing(pool.connection_class)
    return client
