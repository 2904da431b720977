"""Every hook is documented in docs/plugins.md (the datasette habit)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from oncall_server import hookspecs

DOCS = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text()
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("oncall_")]


def test_there_are_hooks() -> None:
    assert "oncall_register_adapters" in HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook: str) -> None:
    signature = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert f"### `{hook}({signature})`" in DOCS, f"document {hook}({signature}) in docs/plugins.md"
