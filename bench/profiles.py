"""Summaries of py-spy ``--format raw`` profiles (collapsed stacks): where the server's samples go.

    python bench/profiles.py bench/results/profile/           # every *.txt in the directory
    python bench/profiles.py one-profile.txt --top 40

For each function: *self* % (samples where it is the innermost frame) and *total* % (samples
where it is anywhere on the stack), of the on-CPU samples in the file. py-spy leaves out idle
threads itself in its default (non-blocking) mode; in --native mode this script drops samples
blocked in epoll/sleep/condition waits (waiting for the GIL included).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _name(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``module.py:func``; line numbers dropped to merge a function."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    func = match.group("func")
    if func.startswith("0x"):  # an unsymbolized native frame: merge by library
        func = "?"
    return f"{short}:{func}"


# Where a sample's innermost frame lives, by package (the first matching rule wins).
COMPONENTS = [
    ("sqlite (C library)", ("libsqlite3", "sqlite3VdbeExec", "_sqlite3")),
    ("aiosqlite thread", ("aiosqlite/",)),
    ("SQLAlchemy", ("sqlalchemy/", "engine/", "sql/", "orm/", "dialects/", "util/", "pool/")),
    ("asyncpg", ("asyncpg/",)),
    ("redis-py", ("redis/", "_parsers/", "hiredis")),
    ("grpc (cygrpc, C core)", ("cygrpc", "grpc/", "_cython/", "libgrpc")),
    ("protobuf", ("_message", "protobuf/", "upb")),
    ("uvloop / asyncio", ("uvloop", "loop.c", "asyncio/", "_asynciomodule", "handles/", "core.c")),
    ("aiohttp", ("aiohttp/", "_http_parser", "multidict", "yarl")),
    ("On-Call code", ("oncall_server/", "oncall_adapters/", "oncall_channels/")),
    ("prometheus_client", ("prometheus_client/",)),
    ("libc / kernel", ("libc.so", "libpthread")),
    ("Python interpreter", ("libpython", "python3", "object.h", "ceval")),
]


# Native (--native) profiles sample blocked threads too: a thread waiting in one of these is off-CPU.
_IDLE = (
    "epoll_wait",
    "epoll_pwait",
    "clock_nanosleep",
    "nanosleep",
    "usleep",
    "pthread_cond_timedwait",
    "pthread_cond_wait",
    "PyThread_acquire_lock_timed",
    "take_gil",
    "sem_clockwait",
    "sem_timedwait",
    "sem_wait",
    "poll (libc",
    "select (libc",
)


def is_idle(raw_frames: list[str]) -> bool:
    """A native sample whose innermost frames are a blocking wait (the GIL included)."""
    return any(f.startswith(_IDLE) or f.startswith(("poll ", "select ")) for f in raw_frames[-3:])


def component(leaf: str) -> str:
    for name, needles in COMPONENTS:
        if any(n in leaf for n in needles):
            return name
    return "other"


def load(path: Path) -> tuple[Counter[str], Counter[str], int]:
    own, total, _parts, samples = load_all(path)
    return own, total, samples


def load_all(path: Path) -> tuple[Counter[str], Counter[str], Counter[str], int]:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        raw = [f for f in stack.split(";") if f]
        if not raw or is_idle(raw):
            continue
        frames = [_name(f) for f in raw]
        samples += count
        own[frames[-1]] += count
        parts[component(frames[-1])] += count
        for name in set(frames):
            total[name] += count
    return own, total, parts, samples


def summarize(path: Path, top: int = 25) -> str:
    own, total, parts, samples = load_all(path)
    if not samples:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {samples} samples", "  self%  by component (innermost frame)"]
    for name, count in parts.most_common():
        lines.append(f"  {100 * count / samples:5.1f}  {name}")
    lines.append("  self%  total%  function")
    shown = set()
    for name, count in own.most_common(top):
        shown.add(name)
        lines.append(f"  {100 * count / samples:5.1f}  {100 * total[name] / samples:6.1f}  {name}")
    lines.append("  -- by total (inclusive) --")
    for name, count in total.most_common(top):
        lines.append(f"  {100 * own[name] / samples:5.1f}  {100 * count / samples:6.1f}  {name}")
    return "\n".join(lines)


def summarize_dir(directory: Path, top: int = 25) -> str:
    files = sorted(directory.glob("*.txt"))
    return "\n\n".join(summarize(f, top) for f in files) if files else f"no profiles in {directory}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if args.path.is_dir():
        print(summarize_dir(args.path, args.top))
    else:
        print(summarize(args.path, args.top))


if __name__ == "__main__":
    main()
