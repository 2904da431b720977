"""The results as Markdown: a table per scenario with its ratios or figures, the targets, the notes
(printed, written with ``--markdown``, pasted into docs/performance.md)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from scenarios import ORDER, TITLES

from reporting.formats import mib, num, per_commit, spread_cell


def table(headers: list[str], rows: Iterable[list[str]]) -> list[str]:
    """A Markdown table, its first column left-aligned and the others right-aligned."""
    return [
        "| " + " | ".join(headers) + " |",
        "|---|" + "---:|" * (len(headers) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _figures(title: str, figures: dict[str, Any], fmt: str) -> list[str]:
    """The per-run ratios or figures of a scenario, median (min-max) over runs."""
    return table(
        [title, "median (min-max)"],
        ([name, spread_cell(s, fmt)] for name, s in figures.items() if s.get("n")),
    )


def render(results: dict[str, Any]) -> str:
    lines: list[str] = []
    cfg = results["config"]
    mach = results["machine"]
    lines.append(
        f"Machine: {mach['nproc']} x {mach['cpu_model']}, Python {mach['python']}, SQLite {mach['sqlite']}, "
        f"PostgreSQL {mach.get('postgresql', '-')}, Redis {mach.get('redis', '-')}, {mach['wrk']}, "
        f"{mach['alertmanager']}; load average at start {' '.join(mach['loadavg_at_start'])}."
    )
    lines.append(
        f"Runs: {cfg['runs']} x {cfg['duration']} s measured after {cfg['warmup']} s warm-up; "
        f"gRPC: {cfg['grpc_clients']} client processes x {cfg['grpc_concurrency']} calls in flight; "
        f"wrk: {cfg['wrk_threads']} thread(s), {cfg['wrk_connections']} connections. "
        "Cells: median (min-max) over runs; ratios are per run, then the median."
    )
    lines.append("")
    for sid in ORDER:
        entry = results["scenarios"].get(sid)
        if entry is None:
            continue
        lines.append(f"### Scenario {sid}: {TITLES[sid]}")
        lines.append("")
        if entry.get("status") in ("pending", "skipped", "failed"):
            lines.append(f"{entry['status']}: {entry.get('reason', '')}")
            lines.append("")
            if entry.get("status") != "failed" or "summary" not in entry:
                continue
        if sid == "7":
            lines += _growth(entry.get("result", {}))
            continue
        summary = entry.get("summary")
        if not summary:
            continue
        if sid in ("5", "6"):
            lines += _paging(sid, summary, entry.get("note", ""))
            continue
        if sid == "8":
            lines += _fair(summary, entry.get("note", ""))
            continue
        lines += _ingest(summary)
    lines += _goals(results.get("goals", []))
    if results.get("notes"):
        lines.append("Notes: " + " ".join(f"({i + 1}) {n}" for i, n in enumerate(results["notes"])))
    return "\n".join(lines)


def _ingest(summary: dict[str, Any]) -> list[str]:
    """Scenarios 1-4b: throughput, latency and CPU per target, then the ratios."""
    headers = [
        "target", "alerts/s", "p50 ms", "p99 ms", "server µs/alert", "+Redis+DB µs/alert",
        "alerts/commit", "server % core", "Redis %", "DB %", "generator %", "errors",
    ]  # fmt: skip
    rows = []
    for label, t in summary["targets"].items():
        c = t["core_pct"]
        rows.append(
            [
                label,
                spread_cell(t["alerts_per_s"]),
                num(t["p50_ms"]["median"], ".2f"),
                num(t["p99_ms"]["median"], ".2f"),
                spread_cell(t["server_us_per_alert"], ",.1f"),
                num(t["all_us_per_alert"]["median"], ",.1f"),
                per_commit(t),
                f"{c['server']:.0f}",
                f"{c['redis']:.0f}",
                f"{c['db']:.0f}",
                f"{c['generator']:.0f}",
                f"{t['errors']}",
            ]
        )
    lines = table(headers, rows)
    if summary["ratios"]:
        lines += ["", *_figures("ratio (same run)", summary["ratios"], ".2f")]
    lines.append("")
    return lines


def _paging(sid: str, summary: dict[str, Any], note: str) -> list[str]:
    """Scenarios 5 and 6: latency to the receiver, pages against what was due, CPU."""
    rows = []
    if sid == "5":
        headers = [
            "target", "offered alerts/s", "pages / alerts", "page p50 ms", "p99 ms", "max ms",
            "ingest call p50 / p99 ms", "server µs/alert", "+Redis+DB µs/alert", "alerts/commit",
            "server % core", "Redis %", "DB %", "receiver %", "generator %", "errors",
        ]  # fmt: skip
        for label, t in summary["targets"].items():
            c = t["core_pct"]
            rows.append(
                [
                    label,
                    spread_cell(t["alerts_per_s"]),
                    f"{num(t['pages']['median'])} / {num(t['sent']['median'])}",
                    spread_cell(t["p50_ms"], ",.1f"),
                    spread_cell(t["p99_ms"], ",.1f"),
                    spread_cell(t["max_ms"], ",.1f"),
                    f"{num(t['call_p50_ms']['median'], ',.1f')} / {num(t['call_p99_ms']['median'], ',.1f')}",
                    spread_cell(t["server_us_per_alert"], ",.0f"),
                    num(t["all_us_per_alert"]["median"], ",.0f"),
                    per_commit(t),
                    *(f"{c[role]:.0f}" for role in ("server", "redis", "db", "receiver", "generator")),
                    f"{t['errors']}",
                ]
            )
    else:
        headers = [
            "target", "pending steps", "pages / steps due", "lag p50 ms", "p99 ms", "max ms",
            "server ready s", "rebuild s (members)", "seeding s", "server µs/page", "server % core",
            "Redis %", "DB %", "receiver %", "errors",
        ]  # fmt: skip
        for label, t in summary["targets"].items():
            c = t["core_pct"]
            rows.append(
                [
                    label,
                    num(t["pending"]["median"]),
                    f"{num(t['pages']['median'])} / {num(t['due']['median'])}",
                    spread_cell(t["p50_ms"], ",.1f"),
                    spread_cell(t["p99_ms"], ",.1f"),
                    spread_cell(t["max_ms"], ",.1f"),
                    spread_cell(t["ready_s"], ".1f"),
                    f"{spread_cell(t['rebuild_s'], '.2f')} ({num(t['restored']['median'])})",
                    spread_cell(t["seed_seconds"], ".1f"),
                    spread_cell(t["server_us_per_alert"], ",.0f"),
                    *(f"{c[role]:.0f}" for role in ("server", "redis", "db", "receiver")),
                    f"{t['errors']}",
                ]
            )
    lines = table(headers, rows)
    if note:
        lines += ["", note]
    if summary["ratios"]:
        lines += ["", *_figures("figure (per run)", summary["ratios"], ",.2f")]
    lines.append("")
    return lines


def _fair(summary: dict[str, Any], note: str) -> list[str]:
    """Scenario 8: tenant B's latency and refusals, tenant A's accepted alerts, per phase; the ratios
    of each phase (same run) in its row; the stored-alert counts below."""
    headers = [
        "target, phase", "B sent", "B ingest p50 ms", "B ingest p99 ms", "B ingest->page p99 ms",
        "B refused (non-2xx / no answer)", "B p99 ÷ B alone", "B page p99 ÷ B alone", "B acks (errors)",
        "B ack p50 / p99 ms", "B ack p99 ÷ B alone", "A accepted alerts/s",
        "A refused 429 / 503 / other (+socket)", "A with B ÷ A alone", "server % core", "Redis %", "DB %",
        "generator %",
    ]  # fmt: skip
    ratios = summary["ratios"]
    shown: set[str] = set()

    def ratio(label: str, what: str) -> str:
        name = f"{label}: {what}"
        shown.add(name)
        return spread_cell(ratios.get(name, {}), ",.2f")

    def median(t: dict[str, Any], key: str, fmt: str = ",.0f") -> str:
        return num(t.get(key, {}).get("median"), fmt)

    rows = []
    for label, t in summary["targets"].items():
        c = t["core_pct"]
        b = "b_sent" in t
        a = "a_alerts_per_s" in t
        shown.add(f"{label}: B refused")  # the figure the target judges: this cell's sum
        refused_a = (
            f"{median(t, 'a_429')} / {median(t, 'a_503')} / {median(t, 'a_other')} "
            f"(+{median(t, 'a_socket_errors')})"
        )
        rows.append(
            [
                label,
                median(t, "b_sent") if b else "-",
                spread_cell(t["p50_ms"], ",.1f") if b else "-",
                spread_cell(t["p99_ms"], ",.1f") if b else "-",
                spread_cell(t["b_page_p99_ms"], ",.1f") if b else "-",
                f"{median(t, 'b_refused')} / {median(t, 'b_no_answer')}" if b else "-",
                ratio(label, "B ingest p99 / B alone") if b and a else "-",
                ratio(label, "B ingest->page p99 / B alone") if b and a else "-",
                f"{median(t, 'b_ack_sent')} ({median(t, 'b_ack_errors')})"
                if b and "b_ack_sent" in t
                else "-",
                f"{median(t, 'b_ack_p50_ms', ',.1f')} / {median(t, 'b_ack_p99_ms', ',.1f')}"
                if b and "b_ack_sent" in t
                else "-",
                ratio(label, "B ack p99 / B alone") if b and a else "-",
                spread_cell(t["a_alerts_per_s"]) if a else "-",
                refused_a if a else "-",
                ratio(label, "A accepted with B / A alone") if b and a else "-",
                *(f"{c[role]:.0f}" for role in ("server", "redis", "db", "generator")),
            ]
        )
    lines = table(headers, rows)
    if note:
        lines += ["", note]
    rest = {name: s for name, s in ratios.items() if name not in shown}
    if rest:
        lines += ["", *_figures("figure (per run)", rest, ",.0f")]
    lines.append("")
    return lines


def _growth(growth: dict[str, Any]) -> list[str]:
    headers = [
        "target", "open alerts (during new-key window)", "server RSS MiB", "Redis used_memory B/open alert",
        "our Redis keys B/open alert", "dedup hash B/entry", "new: alerts/s", "new: server µs/alert",
        "dedup: alerts/s", "dedup: server µs/alert", "seeding alerts/s",
    ]  # fmt: skip
    rows = []
    for backend, g in growth.items():
        for row in g.get("levels", []):
            new, dedup = row["new"], row["dedup"]
            rows.append(
                [
                    f"oncall/{backend} @{row['level']:,}",
                    f"{row['open_alerts']:,}→{row['open_alerts_after']:,}",
                    f"{mib(row['rss_bytes'])}→{mib(row['rss_bytes_after'])}",
                    num(row["redis_bytes_per_open_alert"]),
                    num(row["redis_key_bytes_per_open_alert"]),
                    num(row["dedup_hash_bytes_per_entry"]),
                    spread_cell(new["alerts_per_s"]),
                    spread_cell(new["server_us_per_alert"], ",.1f"),
                    spread_cell(dedup["alerts_per_s"]),
                    spread_cell(dedup["server_us_per_alert"], ",.1f"),
                    num(row["seed_alerts_per_s"]),
                ]
            )
    lines = [*table(headers, rows), ""]
    for backend, g in growth.items():
        if g.get("redis_marginal_per_alert") is not None:
            lines.append(
                f"oncall/{backend}: marginal Redis bytes per open alert from the first to the last level: "
                f"{num(g['redis_marginal_used_memory_per_alert'])} (used_memory), "
                f"{num(g['redis_marginal_key_bytes_per_alert'])} (MEMORY USAGE of our keys)."
            )
    roles = {g.get("roles", "all") for g in growth.values()}
    lines.append(f"Growth server roles: {', '.join(sorted(roles))}.")
    lines.append("")
    return lines


def _goals(goals: list[dict[str, Any]]) -> list[str]:
    if not goals:
        return []
    lines = ["### Targets", "", "| scenario | what | measured | target | |", "|---|---|---:|---|---|"]
    for g in goals:
        value = num(g["value"], ".0f" if g["value"] > 10 else ".2f")
        verdict = "met" if g["met"] else "MISSED"
        lines.append(f"| {g['scenario']} | {g['what']} | {value} | {g['goal']} | {verdict} |")
    lines.append("")
    return lines
