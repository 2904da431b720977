"""A scenario's runs summarised per target and per figure: median with min and max over runs."""

from __future__ import annotations

from typing import Any

from measure import RunResult
from sysinfo import spread

# Per-measurement figures of the paging and fair-ingest scenarios, summarised (median, min-max) when present.
EXTRA_KEYS = (
    "max_ms",
    "alerts_per_commit",
    "sent",
    "pages",
    "missing",
    "target_rate",
    "call_p50_ms",
    "call_p99_ms",
    "pacer_late_ms_max",
    "pending",
    "due",
    "early_pages",
    "seed_seconds",
    "ready_s",
    "rebuild_s",
    "rebuilt_after_launch_s",
    "restored",
    "startup_cpu_s",
    "due_set_at_window",
    # scenario 8 (fair ingest): tenant B's steady load and tenant A's flood
    "b_sent",
    "b_ok",
    "b_refused",
    "b_no_answer",
    "b_pages",
    "b_page_p50_ms",
    "b_page_p99_ms",
    "b_page_max_ms",
    "b_ack_sent",
    "b_ack_errors",
    "b_ack_p50_ms",
    "b_ack_p99_ms",
    "a_alerts_per_s",
    "a_429",
    "a_503",
    "a_other",
    "a_socket_errors",
    "a_retry_after",
    "a_p99_ms",
)


def summarize(runs: list[RunResult]) -> dict[str, Any]:
    labels: list[str] = []
    names: list[str] = []
    for m, run_ratios in runs:
        labels += [x for x in m if x not in labels]
        names += [x for x in run_ratios if x not in names]
    targets = {}
    for label in labels:
        ms = [m[label] for m, _ in runs if label in m]
        targets[label] = {
            key: spread([x[key] for x in ms])
            for key in ("alerts_per_s", "p50_ms", "p99_ms", "server_us_per_alert", "all_us_per_alert")
        }
        for key in EXTRA_KEYS:
            if any(key in x for x in ms):
                targets[label][key] = spread([x.get(key) for x in ms])
        targets[label]["core_pct"] = {
            role: spread([x["core_pct"].get(role, 0.0) for x in ms])["median"]
            for role in ("server", "redis", "db", "generator", "receiver")
        }
        targets[label]["errors"] = sum(x["errors"] for x in ms)
    ratios = {name: spread([r.get(name) for _, r in runs]) for name in names}
    return {"targets": targets, "ratios": ratios}
