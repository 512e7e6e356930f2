"""The docstring examples written as doctests run, so they stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "lightning_green.energy",
    "lightning_green.energy.base",
    "lightning_green.carbon.places",
    "lightning_green.carbon.providers",
    "lightning_green.carbon.co2e",
    "lightning_green.trials",
    "lightning_green.records",
    "lightning_green.energy.measure",
    "lightning_green.energy.attribution",
    "lightning_green.ledger",
    "lightning_green.testing",
    "lightning_green.export.prometheus",
    "lightning_green.export.otlp",
    "lightning_green.export._figures",
    "lightning_green.callbacks.energy_monitor",
    "lightning_green.callbacks.layer_profiler.callback",
    "lightning_green.callbacks.forecast",
    "lightning_green.callbacks.flops",
    "lightning_green.callbacks.energy_budget",
    "lightning_green.callbacks.energy_efficient_stopping",
    "lightning_green.callbacks.stop_at_target",
    "lightning_green.callbacks.progress",
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no doctest"
    assert result.failed == 0
