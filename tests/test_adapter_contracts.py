"""Every built-in adapter against its sample payloads (adapters/oncall_adapters/samples)."""

from __future__ import annotations

from pathlib import Path

import oncall_adapters
import pytest

from oncall_server.plugins import Plugins
from oncall_server.testing import adapter_samples, assert_adapter_contract

SAMPLES = Path(oncall_adapters.__file__).parent / "samples"
PLUGINS = Plugins().load()


@pytest.mark.parametrize(("adapter_name", "sample"), adapter_samples(SAMPLES))
def test_adapter_matches_its_samples(adapter_name: str, sample: Path) -> None:
    assert_adapter_contract(PLUGINS.adapter(adapter_name), sample)


def test_every_builtin_adapter_has_samples() -> None:
    builtin = {
        name for name, a in PLUGINS.adapters.items() if type(a).__module__.startswith("oncall_adapters.")
    }
    assert builtin == {p.name for p in SAMPLES.iterdir() if p.is_dir()}
