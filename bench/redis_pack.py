"""Packing the ingest writer's decision-script call: redis-py's asyncio packer against ours (hiredis).

Builds the command ``Coordinator.decide`` sends for a batch of N alerts of one service (five
arguments per alert) and times packing it both ways in this process; checks the bytes are equal.

    .venv/bin/python bench/redis_pack.py [--batches 1,64,500]
"""

from __future__ import annotations

import argparse
import functools
import timeit

from redis.asyncio.connection import Connection

from oncall_server import redis_client
from oncall_server.ids import uuid7


def decision_command(alerts: int) -> list[str | int]:
    args: list[str | int] = [
        "EVALSHA",
        "0" * 40,
        6,
        *(f"oncall:{{svc}}:k{i}" for i in range(6)),
        "token",
        uuid7(),
    ]
    for i in range(alerts):
        args += [3, f"disk-full-web-{i}", uuid7(), 300_000, 1_764_400_000_000 + i]
    return args


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", default="1,64,500")
    args = parser.parse_args()
    python_packer = Connection()
    hiredis_packer = redis_client._hiredis_packing(Connection)()
    print("alerts/call  redis-py µs  hiredis µs  ratio")
    for alerts in (int(x) for x in args.batches.split(",")):
        command = decision_command(alerts)
        slow_pack = functools.partial(python_packer.pack_command, *command)
        fast_pack = functools.partial(hiredis_packer.pack_command, *command)
        assert b"".join(slow_pack()) == b"".join(fast_pack())
        number = max(20, 20_000 // (alerts + 10))
        slow = min(timeit.repeat(slow_pack, number=number, repeat=5)) / number
        fast = min(timeit.repeat(fast_pack, number=number, repeat=5)) / number
        print(f"{alerts:11d}  {slow * 1e6:11.1f}  {fast * 1e6:10.1f}  {slow / fast:5.1f}x")


if __name__ == "__main__":
    main()
