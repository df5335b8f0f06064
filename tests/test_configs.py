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
    if path.name == "fidelity-world.yaml":  # bench/fidelity.py's run settings: a run config plus its rates
        from knowpack.methods import method_names

        assert set(raw.pop("rates")) <= set(method_names())
        assert set(raw.pop("compare")["lrs"]) <= set(method_names())
        load_config(RunConfig, data=raw)
    elif "compare" in raw:
        from knowpack.compare import load_compare

        _, points, settings = load_compare(path)
        assert points and 0 < settings.target <= 1
    elif "grid" in raw or "points" in raw:
        _, points = load_sweep(path)
        assert points
    else:
        load_config(RunConfig, path)


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {"demo.yaml", "lora-world.yaml", "loki-world.yaml", "paper-grid.yaml",
                                         "compare-world.yaml", "fidelity-world.yaml"}
