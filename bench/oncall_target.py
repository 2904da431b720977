"""Our server under test: ``oncall-server serve`` on embedded defaults (SQLite + embedded Redis) or on
PostgreSQL (a scratch database it creates and drops) + an external Redis (a db number other than 0,
flushed first); what it uses (CPU of its Redis and database processes, RSS, Redis memory, group
commits) and read-only SQL on its database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TypedDict

from processes import StartError, clean_env, terminate, wait_http
from sysinfo import free_port, rss_bytes, worker_pids

BENCH = Path(__file__).resolve().parent


class RedisMemory(TypedDict):
    """What :meth:`OncallServer.redis_memory` measures, in bytes (lengths in entries)."""

    used_memory: int
    keys: int
    keys_bytes: int
    dedup_hash_bytes: int | None  # MEMORY USAGE answers nil for a key that does not exist
    dedup_hash_len: int


async def _pg(admin_url: str, query: str, *params: Any) -> list[Any]:
    import asyncpg

    url = admin_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(query, *params))
    finally:
        await conn.close()


def pg_query(url: str, query: str, *params: Any) -> list[Any]:
    return asyncio.run(_pg(url, query, *params))


class OncallServer:
    """Our server as a separate process (``oncall-server serve``), configured by env vars."""

    kind = "ours"

    def __init__(
        self,
        backend: str,
        *,
        postgres: str | None = None,
        redis_url: str | None = None,
        source: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.backend = backend  # "sqlite" or "postgresql"
        self.source = source  # another source tree to run (PYTHONPATH), for A/B comparisons
        self.extra_env = extra_env or {}
        self.name = f"oncall/{backend}"
        self.admin_url = postgres
        self.redis_url = redis_url
        self.database_url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.data_dir = Path(tempfile.mkdtemp(prefix="ocb-", dir="/tmp"))
        self.log = self.data_dir / "server.log"
        self.grpc_port = 0
        self.http_port = 0
        self.creds: dict[str, str] = {}
        self.env: dict[str, str] = {}
        self.launched_at = 0.0
        self.ready_at = 0.0

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> OncallServer:
        self.prepare()
        self.launch()
        return self

    def prepare(self) -> None:
        """The database (a scratch one on PostgreSQL; Redis flushed) and ``oncall-server bootstrap``."""
        redis_url = ""  # embedded Redis: the server starts its own
        if self.backend == "postgresql":
            assert self.admin_url and self.redis_url
            redis_url = self.redis_url
            from oncall_server.testing import create_scratch_postgres

            self.database_url = asyncio.run(create_scratch_postgres(self.admin_url))
            import redis

            redis.Redis.from_url(redis_url).flushdb()
        self.env = clean_env(
            {
                "ONCALL_DATA_DIR": str(self.data_dir),
                "ONCALL_DATABASE_URL": self.database_url,
                "ONCALL_REDIS_URL": redis_url,
                "ONCALL_ACCESS_LOG": "false",
                "ONCALL_LOG_LEVEL": "WARNING",
                "ONCALL_DRAIN_SECONDS": "2",
            }
        )
        self.env.update(self.extra_env)
        if self.source:
            src = Path(self.source).resolve()
            self.env["PYTHONPATH"] = os.pathsep.join(
                [str(src), str(src / "adapters"), str(src / "plugins"), self.env.get("PYTHONPATH", "")]
            )
        # cwd: the data dir, so ``-m`` does not put the caller's directory first on sys.path (--server-src)
        boot = subprocess.run(
            [*self.cli, "bootstrap", "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            cwd=self.data_dir,
        )
        if boot.returncode != 0:
            raise StartError(f"oncall-server bootstrap failed:\n{boot.stderr}")
        self.creds = json.loads(boot.stdout)

    def launch(self) -> None:
        """``oncall-server serve`` on fresh free ports; returns once /healthz answers 200.

        ``launched_at`` / ``ready_at`` (wall clock) say how long start-up took; call
        :meth:`stop_process` and ``launch`` again to restart on the same database and data dir.
        """
        self.grpc_port, self.http_port = free_port(), free_port()
        self.env["ONCALL_GRPC_LISTEN"] = f"127.0.0.1:{self.grpc_port}"
        self.env["ONCALL_HTTP_LISTEN"] = f"127.0.0.1:{self.http_port}"
        self.launched_at = time.time()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.cli, "serve"], env=self.env, stdout=log, stderr=log, cwd=self.data_dir
            )
        wait_http(f"http://127.0.0.1:{self.http_port}/healthz", self.proc, self.log)
        self.ready_at = time.time()

    def stop_process(self) -> None:
        """Stop ``serve`` only: the database, data dir (embedded Redis's AOF) and credentials stay."""
        terminate(self.proc)
        self.proc = None

    @property
    def cli(self) -> list[str]:
        return [sys.executable, "-m", "oncall_server.runtime.cli"]

    @property
    def sqlalchemy_url(self) -> str:
        """The server's database, for bulk seeding (scenario 6)."""
        if self.backend == "sqlite":
            return f"sqlite+aiosqlite:///{(self.data_dir / 'oncall.db').resolve()}"
        return self.database_url

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None
        if self.backend == "postgresql" and self.database_url and self.admin_url:
            from oncall_server.testing import drop_scratch_postgres

            with contextlib.suppress(Exception):
                asyncio.run(drop_scratch_postgres(self.admin_url, self.database_url))
            self.database_url = ""
        shutil.rmtree(self.data_dir, ignore_errors=True)

    # --- addresses -------------------------------------------------------------------------------
    @property
    def key(self) -> str:
        return self.creds["integration_key"]

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/api/webhooks/ingest"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    # --- what to watch ---------------------------------------------------------------------------
    def redis_client(self) -> Any:
        import redis

        if self.backend == "postgresql":
            assert self.redis_url
            return redis.Redis.from_url(self.redis_url)
        return redis.Redis(unix_socket_path=str(self.data_dir / "redis" / "redis.sock"))

    def redis_pid(self) -> int | None:
        if self.backend == "sqlite":
            with contextlib.suppress(OSError, ValueError):
                return int((self.data_dir / "redis" / "redis.pid").read_text())
            return None
        with contextlib.suppress(Exception):
            return int(self.redis_client().info("server")["process_id"])
        return None

    def db_pids(self) -> list[int]:
        """PostgreSQL backends serving the scratch database plus the WAL writer and checkpointer."""
        if self.backend != "postgresql" or not self.admin_url:
            return []
        name = self.database_url.rsplit("/", 1)[-1].split("?")[0]
        rows = pg_query(
            self.admin_url,
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 OR backend_type IN "
            "('walwriter', 'checkpointer', 'background writer')",
            name,
        )
        return [int(r["pid"]) for r in rows]

    def watched(self) -> dict[str, list[int]]:
        redis_pid = self.redis_pid()
        server = [self.pid, *worker_pids(self.pid)]  # ONCALL_WORKERS > 1: every worker's CPU counts
        return {"server": server, "redis": [redis_pid] if redis_pid else [], "db": self.db_pids()}

    def rss(self) -> int | None:
        sizes = [rss_bytes(pid) for pid in [self.pid, *worker_pids(self.pid)]]
        return sum(size for size in sizes if size is not None) or None

    def ingest_batches(self) -> tuple[float, float]:
        """(group commits, alerts in them) so far, from /metrics (one worker's, if several)."""
        from oncall_server.testing import unlabelled_metrics

        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10) as response:
            values = unlabelled_metrics(response.read().decode())
        return (
            values.get("oncall_ingest_batch_alerts_count", 0.0),
            values.get("oncall_ingest_batch_alerts_sum", 0.0),
        )

    def open_alerts(self) -> int:
        query = "SELECT count(*) AS n FROM alerts WHERE open_dedup_key IS NOT NULL"
        return int(self.sql(query)[0][0])

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        """Rows of a read-only query on the server's database (no parameters)."""
        if self.backend == "sqlite":
            with contextlib.closing(sqlite3.connect(self.data_dir / "oncall.db", timeout=60)) as conn:
                return [tuple(row) for row in conn.execute(query).fetchall()]
        return [tuple(row) for row in pg_query(self.database_url, query)]

    def log_problems(self, limit: int = 10) -> list[str]:
        """The server log's last WARNING/ERROR lines (and traceback ends), for the JSON."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        keep = [line for line in lines if " WARNING " in line or " ERROR " in line or "Error:" in line]
        return keep[-limit:]

    def redis_memory(self) -> RedisMemory:
        """Redis ``used_memory`` (the whole instance), the summed MEMORY USAGE of every key in our
        db (precise even on a shared Redis), and the size and length of this service's dedup hash."""
        client = self.redis_client()
        key = f"oncall:{{{self.creds['service_id']}}}:dedup"
        used_memory = int(client.info("memory")["used_memory"])
        keys_bytes = 0
        keys = 0
        for name in client.scan_iter(count=1000):
            keys += 1
            keys_bytes += client.memory_usage(name, samples=0) or 0
        return {
            "used_memory": used_memory,
            "keys": keys,
            "keys_bytes": keys_bytes,
            "dedup_hash_bytes": client.memory_usage(key, samples=0),
            "dedup_hash_len": int(client.hlen(key)),
        }
