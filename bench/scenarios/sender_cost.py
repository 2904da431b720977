"""Scenario 9 (issue 20): what a sender preset and a field mapping cost per alert on the ingest hot
path, against the plain webhook in the same run.

One fresh server per backend and run, one service, three integrations of it, each fed by wrk with
100 alerts per request (every alert a new incident, as in scenario 4's HTTP row):

* ``plain webhook x100`` - bootstrap's ``webhook`` integration, our JSON array (``wrk_ingest.lua``
  format ``oncall``);
* ``alertmanager x100`` - an ``alertmanager`` integration (``CreateIntegration``), an Alertmanager v4
  webhook notification of one group of 100 alerts with a fresh fingerprint each (format
  ``amwebhook``);
* ``mapped webhook x100`` - a ``webhook`` integration with the field mapping :data:`MAPPING` (set
  with ``PUT /api/integrations/:id``), on a body only the mapping reads (format ``mapped``).

wrk runs with at most :data:`CONNECTIONS` connections (no refusals). The three are measured back
to back on the same server process, in the order plain, Alertmanager,
mapped on even runs and the reverse on odd ones. The figures: alerts/s and server CPU µs per alert
of each, and per run the ratio of each sender's CPU per alert (and alerts/s) to the plain webhook's;
the target (issue 20) is a CPU ratio of at most 1.2. ``--sender-cost-ab SRC`` measures a server
running the source tree SRC as well (``oncall/<backend> @<dir>``), in the same runs: an A/B of a
change to the hot path on one machine state.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

from context import Context, log, new_server, start
from measure import RunResult, ratio, wrk_on
from oncall_target import OncallServer

from scenarios.comparison import need_wrk

PLAIN, AM, MAPPED = "plain webhook x100", "alertmanager x100", "mapped webhook x100"
FORMATS = {PLAIN: "oncall", AM: "amwebhook", MAPPED: "mapped"}
BATCH = 100
QUICK_WINDOW = 2.0  # --quick: a 1 s wrk window holds too few 100-alert requests to mean anything
CONNECTIONS = 16
"""wrk connections at most: 1,600 alerts in flight keep the group commits full (500) and stay under the
per-integration queue (``ONCALL_INGEST_INTEGRATION_QUEUE_ALERTS``, 5,000), so nothing is refused and
the CPU per alert is that of stored alerts only (64 x 100 overflows it: 429s after a 5 s wait)."""

# The mapped sender (wrk_ingest.lua format "mapped"): one real expression, six plain paths, two maps.
MAPPING: dict[str, Any] = {
    "title": "join(' ', [labels.alertname, labels.instance])",
    "severity": "labels.severity",
    "severity_map": {"crit": "critical", "warn": "medium", "info": "info"},
    "dedup_key": "id",
    "status": "status",
    "status_map": {"firing": "trigger", "resolved": "resolve"},
    "description": "annotations.description",
    "links": "generatorURL",
    "device": "host.name",
}

# Per-run figures, named "<server> <sender> / plain webhook x100" (reporting/goals.py judges the CPU ones).
CPU_RATIO = "server µs/alert ÷ plain"
RATE_RATIO = "alerts/s ÷ plain"


class _Keyed:
    """Our server seen through another of its integration keys (``measure`` reads ``target.key``)."""

    def __init__(self, server: OncallServer, key: str) -> None:
        self._server = server
        self.key = key

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


def create_integration(server: OncallServer, name: str, kind: str) -> tuple[str, str]:
    """``CreateIntegration`` on the bootstrap service through the gRPC API: (id, key)."""
    import grpc

    from oncall_server.api.v1 import integration_pb2, integration_service_pb2, integration_service_pb2_grpc

    auth = (("authorization", f"Bearer {server.creds['api_token']}"),)
    with grpc.insecure_channel(server.grpc_target) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        made = integration_service_pb2_grpc.IntegrationServiceStub(channel).CreateIntegration(
            integration_service_pb2.CreateIntegrationRequest(
                integration=integration_pb2.Integration(
                    service_id=server.creds["service_id"], name=name, type=kind
                )
            ),
            metadata=auth,
            timeout=30,
        )
    return made.integration.id, made.integration_key


def set_mapping(server: OncallServer, integration_id: str, mapping: dict[str, Any]) -> None:
    """``PUT /api/integrations/:id`` with ``field_mapping``; checks the server stored it."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}/api/integrations/{integration_id}",
        data=json.dumps({"field_mapping": mapping}).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {server.creds['api_token']}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        stored = json.loads(response.read())
    if not stored.get("field_mapping"):
        raise RuntimeError(f"PUT /api/integrations/{integration_id} did not store the field mapping")


def senders(server: OncallServer) -> dict[str, _Keyed]:
    """The three integrations of the bootstrap service, as targets keyed by their label."""
    _am_id, am_key = create_integration(server, "Alertmanager (bench)", "alertmanager")
    mapped_id, mapped_key = create_integration(server, "Mapped sender (bench)", "webhook")
    set_mapping(server, mapped_id, MAPPING)
    return {
        PLAIN: _Keyed(server, server.key),
        AM: _Keyed(server, am_key),
        MAPPED: _Keyed(server, mapped_key),
    }


def run(ctx: Context) -> RunResult:
    m: dict[str, dict[str, Any]] = {}
    ratios: dict[str, float | None] = {}
    if not need_wrk(ctx):
        return m, ratios
    order = [PLAIN, AM, MAPPED] if ctx.run % 2 == 0 else [MAPPED, AM, PLAIN]
    saved = ctx.load
    ctx.load = replace(ctx.load, wrk_connections=min(ctx.load.wrk_connections, CONNECTIONS))
    if ctx.args.quick:
        ctx.load = replace(ctx.load, duration=max(ctx.load.duration, QUICK_WINDOW))
    # --sender-cost-ab SRC: the same on a server running SRC (e.g. the commit before a change), in
    # the same run, first on odd runs.
    sources: list[str | None] = [None]
    if ctx.args.sender_cost_ab:
        sources = [None, ctx.args.sender_cost_ab] if ctx.run % 2 == 0 else [ctx.args.sender_cost_ab, None]
    try:
        for backend, source in ((b, src) for b in ctx.backends for src in sources):
            # A fresh server, even with --reuse-servers (--quick): none of other scenarios' open alerts;
            # a reused one is stopped first (on PostgreSQL two live servers would share the Redis db).
            ctx.release(backend)
            server = new_server(ctx, backend)
            if source is not None:
                server.source = source
                server.name += f" @{Path(source).name}"
            log(f"  starting {server.name} ...")
            start(server)
            try:
                targets = senders(server)
                log(f"    order: {', '.join(order)}")
                for label in order:
                    name = f"{server.name} {label}"
                    m[name] = wrk_on(ctx, name, targets[label], fmt=FORMATS[label], batch=BATCH)
                plain = m[f"{server.name} {PLAIN}"]
                for label in (AM, MAPPED):
                    name = f"{server.name} {label}"
                    base = plain["server_us_per_alert"]
                    cpu = m[name]["server_us_per_alert"] / base if base else None
                    ratios[f"{name}: {CPU_RATIO}"] = cpu
                    ratios[f"{name}: {RATE_RATIO}"] = ratio(m, name, f"{server.name} {PLAIN}")
            finally:
                server.stop()
    finally:
        ctx.load = saved
    return m, ratios


def note(ctx: Context, runs: int) -> str:
    return (
        f"One fresh server per backend and run; the three integrations of one service measured back to "
        f"back on it ({runs} run(s), order alternating: plain, Alertmanager, mapped, then reversed). "
        f"{BATCH} alerts per request x {min(ctx.load.wrk_connections, CONNECTIONS)} wrk connections, every "
        "alert a new incident. Mapped: "
        + ", ".join(f"{k} = {v}" for k, v in MAPPING.items() if isinstance(v, str))
        + "; severity_map and status_map. Target: server µs/alert ÷ plain ≤ 1.2 (issue 20)."
    )
