"""The processes under test, each started on loopback with free ports and stopped by its own pid.

* :class:`OncallServer` - ``oncall-server serve`` on embedded defaults (SQLite + embedded Redis) or on
  PostgreSQL (a scratch database it creates and drops) + an external Redis (a db number other than 0,
  flushed first).
* :class:`NoopGrpc` / :class:`NoopHttp` - the do-nothing baselines (bench/noop_grpc.py, bench/noop_http.py).
* :class:`PageReceiver` - bench/receiver.py, the webhook the paging scenarios (5, 6) page.
* :class:`Alertmanager` - Debian's ``prometheus-alertmanager``, in memory, temp storage, no cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TypedDict

from sysinfo import free_port, rss_bytes, worker_pids

BENCH = Path(__file__).resolve().parent
ALERTMANAGER = os.environ.get("BENCH_ALERTMANAGER", "/usr/bin/prometheus-alertmanager")


class StartError(RuntimeError):
    pass


class RedisMemory(TypedDict):
    """What :meth:`OncallServer.redis_memory` measures, in bytes (lengths in entries)."""

    used_memory: int
    keys: int
    keys_bytes: int
    dedup_hash_bytes: int | None  # MEMORY USAGE answers nil for a key that does not exist
    dedup_hash_len: int


def _stop(proc: subprocess.Popen[Any] | None, timeout: float = 15.0) -> None:
    """SIGTERM this one process, SIGKILL it if it does not exit in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _wait_http(url: str, proc: subprocess.Popen[Any], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(f"{proc.args!r} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise StartError(f"{url} did not answer 200 within {timeout}s:\n{_tail(log)}")


def _wait_line(proc: subprocess.Popen[str], needle: str, timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise StartError(f"{proc.args!r} exited before printing {needle!r}")
        if needle in line:
            return line
    raise StartError(f"{proc.args!r} did not print {needle!r} within {timeout}s")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONCALL_")}
    env.update(extra)
    return env


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
        self.env = _clean_env(
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
        _wait_http(f"http://127.0.0.1:{self.http_port}/healthz", self.proc, self.log)
        self.ready_at = time.time()

    def stop_process(self) -> None:
        """Stop ``serve`` only: the database, data dir (embedded Redis's AOF) and credentials stay."""
        _stop(self.proc)
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
        _stop(self.proc)
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


class _Script:
    """A bench/*.py server run as its own process."""

    script = ""
    kind = "noop"
    name = ""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> _Script:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / self.script), "--port", str(self.port)],
            stdout=subprocess.PIPE,
            text=True,
            env=_clean_env({}),
        )
        _wait_line(self.proc, "listening")
        return self

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def watched(self) -> dict[str, list[int]]:
        return {"server": [self.pid], "redis": [], "db": []}

    def rss(self) -> int | None:
        return rss_bytes(self.pid)


class NoopGrpc(_Script):
    script = "noop_grpc.py"
    name = "noop gRPC"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.port}"


class NoopHttp(_Script):
    script = "noop_http.py"
    name = "noop aiohttp"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/webhooks/ingest"


class PageReceiver(_Script):
    """bench/receiver.py: the webhook the paging scenarios page; records each page's arrival time."""

    script = "receiver.py"
    name = "page receiver"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/page"

    def records(self, since: int = 0) -> dict[str, Any]:
        """``{"records": [[arrival wall s, title, notification id, incident id], ...], "count": n,
        "duplicates": d}``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/records?since={since}", timeout=30) as r:
            return dict(json.loads(r.read()))

    def count(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/records?since=999999999", timeout=30) as r:
            return int(json.loads(r.read())["count"])

    def reset(self) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/reset", method="POST")
        with urllib.request.urlopen(request, timeout=30):
            pass


ALERTMANAGER_CONFIG = """\
route:
  receiver: blackhole
receivers:
  - name: blackhole
"""


class Alertmanager:
    """prometheus-alertmanager with a do-nothing receiver, temp storage, clustering off."""

    kind = "alertmanager"
    name = "Alertmanager"

    @staticmethod
    def available() -> bool:
        return os.access(ALERTMANAGER, os.X_OK)

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.dir = Path(tempfile.mkdtemp(prefix="ocb-am-", dir="/tmp"))
        self.log = self.dir / "alertmanager.log"

    def start(self) -> Alertmanager:
        (self.dir / "alertmanager.yml").write_text(ALERTMANAGER_CONFIG)
        (self.dir / "data").mkdir(exist_ok=True)
        self.port = free_port()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    ALERTMANAGER,
                    f"--config.file={self.dir / 'alertmanager.yml'}",
                    f"--storage.path={self.dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--cluster.listen-address=",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=log,
                env=_clean_env({}),
            )
        _wait_http(f"http://127.0.0.1:{self.port}/-/ready", self.proc, self.log)
        return self

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v2/alerts"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def watched(self) -> dict[str, list[int]]:
        return {"server": [self.pid], "redis": [], "db": []}

    def rss(self) -> int | None:
        return rss_bytes(self.pid)
