"""Every setting an operator can turn is in docs/configuration.md, under its environment variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from oncall_server.runtime.settings import Settings

DOCS = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()


def env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    choices = getattr(alias, "choices", None)
    return str(choices[0]) if choices else f"ONCALL_{field.upper()}"


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_setting_is_documented(field: str) -> None:
    assert f"`{env_name(field)}`" in DOCS, f"document {env_name(field)} in docs/configuration.md"
