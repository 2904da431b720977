"""The server's Redis client packs commands with hiredis: the same bytes, the same answers."""

from __future__ import annotations

import enum

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from oncall_server import redis_client

ARGUMENTS = [
    ("SET", "plain", "value"),
    ("CONFIG GET", "maxmemory"),  # a two-word command name is split, as redis-py does
    (b"CLIENT SETNAME", b"oncall"),
    ("SET", "ünïcode ☃", "✓"),
    ("SET", b"\x00\xffbinary", memoryview(b"view")),
    ("SET", "buffer", bytearray(b"array")),
    ("SET", "an int subclass", enum.IntEnum("Level", "LOW HIGH").HIGH),
    ("EVAL", "return 1", 0, -3, 1.5, 1e20, 10**20, 1 / 3),
]


@pytest.mark.parametrize("args", ARGUMENTS, ids=lambda a: str(a[0]))
def test_commands_are_the_bytes_redis_py_sends(args: tuple[object, ...]) -> None:
    ours = redis_client._hiredis_packing(Connection)()
    assert b"".join(ours.pack_command(*args)) == b"".join(Connection().pack_command(*args))


def test_an_argument_redis_cannot_take_is_refused_as_redis_py_refuses_it() -> None:
    ours = redis_client._hiredis_packing(Connection)()
    for bad in (None, True, object()):
        with pytest.raises(DataError):
            Connection().pack_command("SET", "k", bad)
        with pytest.raises(DataError):
            ours.pack_command("SET", "k", bad)


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("redis://127.0.0.1:6379/3", Connection),
        ("rediss://127.0.0.1:6380/3", SSLConnection),
        ("unix:///tmp/none.sock?db=0", UnixDomainSocketConnection),
    ],
)
def test_every_kind_of_url_gets_the_packing_connection(url: str, base: type) -> None:
    client = redis_client.connect(url)
    cls = client.connection_pool.connection_class
    assert issubclass(cls, base) and cls.pack_command is redis_client._HiredisPacking.pack_command


def test_a_client_with_another_text_encoding_keeps_redis_py_packing() -> None:
    """hiredis would send UTF-8 where the client was told latin-1: the server's client never does."""
    client = redis_client.connect("redis://127.0.0.1:6379/3", encoding="latin-1")
    pool = client.connection_pool
    assert pool.connection_class is Connection
    connection = pool.connection_class(**pool.connection_kwargs)
    assert b"".join(connection.pack_command("SET", "k", "é")).endswith(b"$1\r\n\xe9\r\n")


async def test_a_decision_sized_script_call_and_a_pipeline_round_trip(redis: Redis) -> None:
    """2,500 arguments (a batch of 500 alerts' decisions) reach the script intact, non-ASCII too."""
    assert redis.connection_pool.connection_class.__name__.startswith("HiredisPacking")
    args = [f"key-{i}-ü" if i % 2 else i for i in range(2500)]
    echoed = await redis.eval("return ARGV", 0, *args)
    assert [x.decode() for x in echoed] == [str(a) for a in args]
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set("a", b"\x00\xff")
        pipe.get("a")
        pipe.incrby("n", 41)
        pipe.incr("n")
        assert await pipe.execute() == [True, b"\x00\xff", 41, 42]
