"""Scenario 7: growth. Seed open alerts level by level through ``IngestAlerts`` batches of 500 and
measure at each level: server CPU per alert for new alerts and for duplicates of open ones, server
RSS, and Redis memory per open alert. Its result is per backend, not per run."""

from __future__ import annotations

from typing import Any

from context import Context, log, new_server, start
from loadgen import LoadSettings, seed_grpc, wait_idle
from measure import grpc_on_load
from oncall_target import OncallServer, RedisMemory
from reporting.formats import mib, num
from sysinfo import spread


def run(ctx: Context) -> dict[str, Any]:
    levels = [int(x) for x in ctx.args.growth_levels.split(",")]
    return {backend: _growth_backend(ctx, backend, levels) for backend in ctx.backends}


def _growth_backend(ctx: Context, backend: str, levels: list[int]) -> dict[str, Any]:
    server = new_server(ctx, backend)
    if ctx.args.growth_roles != "all":
        server.extra_env["ONCALL_ROLES"] = ctx.args.growth_roles
    log(f"  starting {server.name} (fresh, for growth; roles: {ctx.args.growth_roles}) ...")
    start(server)
    load = LoadSettings(
        warmup=ctx.load.warmup,
        duration=ctx.args.growth_duration,
        grpc_clients=ctx.load.grpc_clients,
        grpc_concurrency=ctx.load.grpc_concurrency,
    )
    out: dict[str, Any] = {"levels": []}
    try:
        empty_memory = server.redis_memory()
        out["redis_used_memory_empty"] = empty_memory["used_memory"]
        out["rss_bytes_empty"] = server.rss()
        seeded = 0
        for level in levels:
            seed, seeded = _seed_to(ctx, server, level, seeded)
            row = _level(server, level, seed, empty_memory, settle_timeout=ctx.args.settle_timeout)
            _windows(ctx, server, load, row, seeded)
            out["levels"].append(row)
            log(
                f"    level {level:,}: open {row['open_alerts']:,}, RSS {mib(row['rss_bytes'])} MiB, "
                f"Redis {num(row['redis_bytes_per_open_alert'])} B/open alert, "
                f"new {row['new']['server_us_per_alert']['median']:.1f} µs/alert, "
                f"dedup {row['dedup']['server_us_per_alert']['median']:.1f} µs/alert"
            )
    finally:
        server.stop()
    out.update(_first_to_last(out["levels"], backend))
    out["roles"] = ctx.args.growth_roles
    return out


def _seed_to(ctx: Context, server: OncallServer, level: int, seeded: int) -> tuple[dict[str, Any], int]:
    """Open alerts up to ``level`` through IngestAlerts; returns the seeding and the seed keys so far."""
    need = level - server.open_alerts()
    seed: dict[str, Any] = {"alerts": 0, "seconds": 0.0, "errors": 0}
    if need > 0:
        log(f"    seeding {need:,} open alerts (to {level:,}) ...")
        seed = seed_grpc(
            server.grpc_target,
            key=server.key,
            count=need,
            offset=seeded,
            clients=ctx.load.grpc_clients,
        )
        seeded += seed["alerts"]
        if seed["errors"]:
            ctx.note(f"growth seeding on {server.backend}: {seed['errors']} errors: {seed['error_sample']}")
    return seed, seeded


def _level(
    server: OncallServer, level: int, seed: dict[str, Any], empty: RedisMemory, *, settle_timeout: float
) -> dict[str, Any]:
    """Once the server is idle after seeding: open alerts, RSS and Redis memory at this level."""
    settle = wait_idle(server.watched, timeout=settle_timeout)
    open_alerts = server.open_alerts()
    memory = server.redis_memory()
    return {
        "level": level,
        "open_alerts": open_alerts,
        "seed_alerts_per_s": seed["alerts"] / seed["seconds"] if seed["seconds"] else None,
        "settle_seconds": settle,
        "rss_bytes": server.rss(),
        "redis": memory,
        "redis_bytes_per_open_alert": (memory["used_memory"] - empty["used_memory"]) / open_alerts
        if open_alerts
        else None,
        "redis_key_bytes_per_open_alert": memory["keys_bytes"] / open_alerts if open_alerts else None,
        # MEMORY USAGE answers nil when the hash is gone: not measured, reported as "-".
        "dedup_hash_bytes_per_entry": memory["dedup_hash_bytes"] / memory["dedup_hash_len"]
        if memory["dedup_hash_len"] and memory["dedup_hash_bytes"] is not None
        else None,
    }


def _windows(
    ctx: Context, server: OncallServer, load: LoadSettings, row: dict[str, Any], seeded: int
) -> None:
    """The measured windows at this level, into ``row``: duplicates of open alerts, then new alerts."""
    ctx.scenario = "7"
    runs_new, runs_dedup = [], []
    for run in range(ctx.args.growth_runs):
        ctx.run = run
        label = f"{server.name} @{row['level']:,}"
        dedup = grpc_on_load(ctx, f"{label} dedup", server, load, keys=f"random:{seeded}")
        runs_dedup.append(dedup)
        runs_new.append(grpc_on_load(ctx, f"{label} new", server, load, keys="distinct"))
    row["open_alerts_after"] = server.open_alerts()
    row["rss_bytes_after"] = server.rss()
    for name, runs in (("new", runs_new), ("dedup", runs_dedup)):
        row[name] = {
            "runs": runs,
            "alerts_per_s": spread([r["alerts_per_s"] for r in runs]),
            "server_us_per_alert": spread([r["server_us_per_alert"] for r in runs]),
            "all_us_per_alert": spread([r["all_us_per_alert"] for r in runs]),
        }


def _first_to_last(levels: list[dict[str, Any]], backend: str) -> dict[str, Any]:
    """The last level against the first: CPU per alert and RSS ratios, marginal Redis bytes."""
    first, last = levels[0], levels[-1]
    out: dict[str, Any] = {
        "cpu_ratio_new": last["new"]["server_us_per_alert"]["median"]
        / first["new"]["server_us_per_alert"]["median"],
        "cpu_ratio_dedup": last["dedup"]["server_us_per_alert"]["median"]
        / first["dedup"]["server_us_per_alert"]["median"],
        "rss_ratio": (last["rss_bytes_after"] or 0) / (first["rss_bytes_after"] or 1),
    }
    # Marginal bytes between the first and last level, so fixed overheads cancel (see the goal's basis).
    grown = last["open_alerts"] - first["open_alerts"]
    if grown > 0:
        out["redis_marginal_used_memory_per_alert"] = (
            last["redis"]["used_memory"] - first["redis"]["used_memory"]
        ) / grown
        out["redis_marginal_key_bytes_per_alert"] = (
            last["redis"]["keys_bytes"] - first["redis"]["keys_bytes"]
        ) / grown
        out["redis_per_alert_goal_basis"] = (
            "used_memory (private embedded Redis)" if backend == "sqlite" else "MEMORY USAGE of our keys"
        )
        out["redis_marginal_per_alert"] = (
            out["redis_marginal_used_memory_per_alert"]
            if backend == "sqlite"
            else out["redis_marginal_key_bytes_per_alert"]
        )
    return out
