"""The ``cfo`` strategy's searcher: FLAML's CFO as a Ray ``Searcher`` (imported only for that
strategy; FLAML is the optional ``lightning-green[flaml]``). See :mod:`lightning_green.tune.peers`."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

with warnings.catch_warnings():  # "flaml.automl is not available": the AutoML part is not used
    warnings.simplefilter("ignore", UserWarning)
    from flaml import CFO


def plain(config: Any) -> Any:
    """``config`` with NumPy scalars as Python ones (FLAML hands ``np.float64`` and ``np.str_``
    back; a trial's config tree takes Python values). Equal values: FLAML's record of what it
    proposed still matches the trial's config."""
    if isinstance(config, dict):
        return {k: plain(v) for k, v in config.items()}
    return config.item() if isinstance(config, np.generic) else config


class FrugalSearch(CFO):
    """FLAML's CFO, with Python values in its configurations, and a trial that ended without an
    accuracy (crashed, or never validated) told to it as an error: it has no objective to learn
    from (FLAML would fail on the missing value)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._proposed: dict[str, dict[str, Any]] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        if not isinstance(config, dict):  # None (nothing now) or Searcher.FINISHED
            return config
        self._proposed[trial_id] = config = plain(config)
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        config = self._proposed.pop(trial_id, None)
        value = (result or {}).get(self._metric)
        if not error and (value is None or (isinstance(value, float) and math.isnan(value))):
            error = True
        if result is not None and "config" not in result and config is not None:
            result = {**result, "config": config}
        super().on_trial_complete(trial_id, result, error)
