"""Every shipped config loads and validates (nothing drifts from the code)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from knowpack.config import load_config
from knowpack.runs import RunConfig
from knowpack.sweep import load_sweep

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path):
    raw = yaml.safe_load(path.read_text())
    if "grid" in raw or "points" in raw:
        _, points = load_sweep(path)
        assert points
    else:
        load_config(RunConfig, path)


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {"demo.yaml", "lora-world.yaml", "loki-world.yaml", "paper-grid.yaml"}
