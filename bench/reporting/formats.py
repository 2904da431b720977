"""How a figure is written in a table cell or a log line ("-" for a missing one)."""

from __future__ import annotations

import math
from typing import Any


def num(x: Any, fmt: str = ",.0f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, fmt)


def spread_cell(s: dict[str, float], fmt: str = ",.0f") -> str:
    """A :func:`sysinfo.spread` as ``median (min-max)``, or the median alone for one run."""
    if not s or s.get("n", 0) == 0:
        return "-"
    if s["n"] == 1:
        return num(s["median"], fmt)
    return f"{num(s['median'], fmt)} ({num(s['min'], fmt)}-{num(s['max'], fmt)})"


def mib(x: Any) -> str:
    return "-" if x is None else f"{x / 2**20:,.0f}"


def per_commit(target: dict[str, Any]) -> str:
    """Median alerts per ingest group commit ('-' for servers that are not ours)."""
    return num(target.get("alerts_per_commit", {}).get("median"), ",.1f")
