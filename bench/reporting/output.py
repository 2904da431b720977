"""Where the report goes: the JSON file, the tables on stdout and in ``--markdown``'s file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reporting.goals import evaluate_goals
from reporting.tables import render


def write_json(results: dict[str, Any], path: str) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    return out


def print_tables(results: dict[str, Any], markdown: str) -> None:
    table = render(results)
    print(table)
    if markdown:
        Path(markdown).write_text(table + "\n")


def rerender(path: str, markdown: str) -> None:
    """``--render``: an earlier run's tables, its targets judged again (the bounds may have changed)."""
    earlier = json.loads(Path(path).read_text())
    earlier["goals"] = evaluate_goals(earlier, earlier["config"]["backends"])
    print_tables(earlier, markdown)
