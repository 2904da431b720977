"""Scenario 9's three senders in process: CPU per alert of reading a 100-alert body (JSON) and
normalizing it (the adapter, then the field mapping if any), the part of the ingest hot path that
differs between them; storage, routing and paging are the same for all three and left out.

    .venv/bin/python bench/sender_cost_inprocess.py               # this checkout
    .venv/bin/python bench/sender_cost_inprocess.py --src /tmp/base  # another tree (A/B)

The bodies are those of ``wrk_ingest.lua`` (formats ``oncall``, ``amwebhook``, ``mapped``); the
mapping is scenario 9's. Best of ``--repeats`` timings of ``--loops`` bodies each (process CPU).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
BATCH = 100

SUMMARY = "CPU usage critical on client-server-01"
DESCRIPTION = "CPU sustained at 98% for 5 minutes on client-server-01 (job node)."
GENERATOR = (
    "http://prometheus:9090/graph?g0.expr=100+-+avg+by(instance)(rate(node_cpu_seconds_total"
    "%7Bmode%3D%22idle%22%7D%5B5m%5D))+*+100+%3E+95&g0.tab=1"
)


def plain(key: str, n: int) -> dict[str, Any]:
    return {
        "title": "CPU usage critical on client-server-01",
        "severity": "critical",
        "dedup_key": key,
        "body": "CPU sustained at 98% for 5 minutes. Host: client-server-01.",
        "source_ref": f"alert-{n}",
        "host": "client-server-01",
    }


def am_alert(key: str) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {
            "alertname": "HostHighCpuLoad",
            "severity": "critical",
            "instance": f"{key}:9100",
            "job": "node",
        },
        "annotations": {"summary": SUMMARY, "description": DESCRIPTION},
        "startsAt": "2026-01-05T10:00:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": GENERATOR,
        "fingerprint": key,
    }


def mapped(key: str) -> dict[str, Any]:
    return {
        "id": key,
        "status": "firing",
        "labels": {
            "alertname": "HostHighCpuLoad",
            "severity": "crit",
            "instance": f"{key}:9100",
            "job": "node",
        },
        "annotations": {"summary": SUMMARY, "description": DESCRIPTION},
        "generatorURL": GENERATOR,
        "host": {"name": "client-server-01"},
    }


def bodies(prefix: str) -> dict[str, Any]:
    keys = [f"{prefix}-{n}" for n in range(1, BATCH + 1)]
    group = {
        "receiver": "oncall",
        "status": "firing",
        "alerts": [am_alert(k) for k in keys],
        "groupLabels": {"alertname": "HostHighCpuLoad"},
        "commonLabels": {"alertname": "HostHighCpuLoad", "job": "node", "severity": "critical"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": '{}:{alertname="HostHighCpuLoad"}',
        "truncatedAlerts": 0,
    }
    return {
        "plain webhook": [plain(k, n) for n, k in enumerate(keys, 1)],
        "alertmanager": group,
        "mapped webhook": [mapped(k) for k in keys],
    }


def best(fn: Callable[[], Any], loops: int, repeats: int) -> float:
    """Least process CPU per alert (µs) over ``repeats`` timings of ``loops`` calls."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(loops):
            fn()
        times.append(time.process_time() - started)
    return min(times) / loops / BATCH * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--src", default="", help="import the server from this source tree")
    parser.add_argument("--loops", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    src = Path(args.src).resolve() if args.src else BENCH.parent
    sys.path[:0] = [str(src), str(src / "adapters")]

    from oncall_adapters.alertmanager import AlertmanagerAdapter
    from oncall_adapters.webhook import WebhookAdapter
    from scenarios.sender_cost import MAPPING

    import oncall_server
    from oncall_server import json_codec
    from oncall_server.hookspecs import AdapterContext
    from oncall_server.ingest.field_mapping import compile_mapping

    mapping = compile_mapping(MAPPING)
    assert mapping is not None
    webhook, am = WebhookAdapter(), AlertmanagerAdapter()
    senders: dict[str, tuple[Any, Callable[[Any, Any], Any]]] = {
        "plain webhook": (AdapterContext("Generic Webhook", "webhook", {}), webhook.parse),
        "alertmanager": (AdapterContext("Alertmanager", "alertmanager", {}), am.parse),
        "mapped webhook": (
            AdapterContext("Mapped", "webhook", {}),
            lambda payload, ctx: mapping.normalize(webhook, payload, ctx),
        ),
    }
    texts = {name: json_codec.dumps(body) for name, body in bodies("k").items()}
    print(f"server code: {Path(oncall_server.__file__).parent.parent}")
    print("| sender | body B/alert | JSON µs/alert | normalize µs/alert | both µs/alert | ÷ plain |")
    print("|---|---:|---:|---:|---:|---:|")
    base = 0.0
    for name, (ctx, normalize) in senders.items():
        text = texts[name]
        payload = json_codec.loads(text)
        events = normalize(payload, ctx)
        assert len(events) == BATCH and len({e.dedup_key for e in events}) == BATCH, name
        parse = best(functools.partial(json_codec.loads, text), args.loops, args.repeats)
        norm = best(functools.partial(normalize, payload, ctx), args.loops, args.repeats)
        base = base or parse + norm
        print(
            f"| {name} | {len(text.encode()) / BATCH:,.0f} | {parse:.1f} | {norm:.1f} | {parse + norm:.1f} "
            f"| {(parse + norm) / base:.2f} |"
        )


if __name__ == "__main__":
    main()
