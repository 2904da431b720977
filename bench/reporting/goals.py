"""The targets of issue 6, judged on the medians over runs: ratios to the baselines (1-4b), latency
bounds (5, 6) and growth bounds (7); and of issue 19 (8): tenant B's ingest, page and acknowledgement
latency under tenant A's flood against B alone, B never refused, A's accepted alerts with B present
against A alone."""

from __future__ import annotations

from typing import Any

# Per scenario (figure, bound[, "<=" for an upper bound]), on the median over runs of a per-run figure.
GOALS: dict[str, list[tuple[str, float] | tuple[str, float, str]]] = {
    "1": [("{b} / noop gRPC", 0.6)],
    "2": [("{b} / noop gRPC", 0.8)],
    "3": [("{b} / noop aiohttp", 0.6)],
    "4": [("{b} gRPC x100 / Alertmanager x100", 1.0), ("{b} HTTP x100 / Alertmanager x100", 1.0)],
    "4b": [("{b} / noop streaming", 0.6)],
    "5": [("{b} ingest -> page p99 ms", 50.0, "<=")],
    "6": [("{b} escalation lag p99 ms", 500.0, "<=")],
}
# Per scenario (suffix, bound, op): every figure of a backend named ``oncall/<backend> ...<suffix>``
# (scenario 8 has one per phase: ``oncall/sqlite A x100 c64 + B: B refused``).
SUFFIX_GOALS: dict[str, list[tuple[str, float, str]]] = {
    "8": [
        (": B ingest p99 / B alone", 2.0, "<="),
        (": B ingest->page p99 / B alone", 2.0, "<="),
        (": B refused", 0.0, "<="),
        (": B ack p99 / B alone", 2.0, "<="),
        (": A accepted with B / A alone", 0.9, ">="),
    ],
    # issue 20: a preset's or a mapped sender's server CPU per alert against the plain webhook's
    "9": [(": server µs/alert ÷ plain", 1.2, "<=")],
}


def _goal(
    scenario: str, what: str, value: float, bound: float, op: str = "<=", note: str = ""
) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "what": what,
        "value": value,
        "goal": f"{op} {bound:g}{note}",
        "met": value <= bound if op == "<=" else value >= bound,
    }


def evaluate_goals(results: dict[str, Any], backends: list[str]) -> list[dict[str, Any]]:
    goals = []
    for sid, specs in GOALS.items():
        summary = results["scenarios"].get(sid, {}).get("summary")
        if not summary:
            continue
        for spec in specs:
            pattern, bound = spec[0], spec[1]
            op = spec[2] if len(spec) > 2 else ">="
            for backend in backends:
                name = pattern.format(b=f"oncall/{backend}")
                value = summary["ratios"].get(name, {}).get("median")
                if value is None or value != value:
                    continue
                goals.append(_goal(sid, name, value, bound, op))
    growth = results["scenarios"].get("7", {}).get("result", {})
    for backend, g in growth.items():
        if not isinstance(g, dict) or not g.get("levels"):
            continue
        first, last = g["levels"][0]["level"], g["levels"][-1]["level"]
        span = f"{last:,} vs {first:,} open"
        target = f"oncall/{backend}"
        goals.append(_goal("7", f"{target} CPU/alert (new alerts), {span}", g["cpu_ratio_new"], 1.2))
        goals.append(
            _goal("7", f"{target} CPU/alert (dedup into open alerts), {span}", g["cpu_ratio_dedup"], 1.2)
        )
        # RSS after each level's windows: the first level's "after seeding" figure is a cold server.
        rss_ratio = (g["levels"][-1]["rss_bytes_after"] or 0) / (g["levels"][0]["rss_bytes_after"] or 1)
        goals.append(
            _goal("7", f"{target} server RSS after the windows, {span}", rss_ratio, 1.2, note=" (no growth)")
        )
        per_alert = g.get("redis_marginal_per_alert")
        if per_alert is not None:
            what = (
                f"{target} Redis bytes per open alert ({first:,} to {last:,}; "
                f"{g['redis_per_alert_goal_basis']})"
            )
            goals.append(_goal("7", what, per_alert, 300))
    for sid, suffixes in SUFFIX_GOALS.items():
        ratios = results["scenarios"].get(sid, {}).get("summary", {}).get("ratios", {})
        for backend in backends:
            for name, s in ratios.items():
                value = s.get("median")
                if not name.startswith(f"oncall/{backend} ") or value is None or value != value:
                    continue
                for suffix, bound, op in suffixes:
                    if name.endswith(suffix):
                        goals.append(_goal(sid, name, value, bound, op))
    return goals
