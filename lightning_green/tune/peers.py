"""The strongest peers of the ``efficient`` strategy, on the same budget, target, epochs and seeds:

- ``asha``: random search, weak trials stopped by Ray's ``ASHAScheduler`` (Li et al., "A System
  for Massively Parallel Hyperparameter Tuning", MLSys 2020). Epochs are the budget, as for
  ``efficient``: every trial may train the top of the space's epochs, ASHA (``tune.asha``) stops it
  at a rung.
- ``bohb``: BOHB's combination (Falkner et al., ICML 2018: a TPE-like density model proposing
  configurations, HyperBand stopping them) from maintained parts: Optuna's TPE sampler (seeded,
  multivariate like BOHB's kernel density) through Ray's ``OptunaSearch``, and Ray's
  ``ASHAScheduler`` over HyperBand's brackets (:func:`hyperband_brackets`; each trial is put in
  one by a seeded draw, :class:`SeededASHA`). Not Ray's ``TuneBOHB``: it needs ``hpbandster``
  (last released in 2018) and ``ConfigSpace``. Not Ray's synchronous ``HyperBandScheduler``: it
  pauses trials at a rung and resumes them later, which needs trial checkpoints (the trials keep
  none, so a resumed trial would train its epochs again, paying for them twice) and leaves
  workers idle until a rung fills; ASHA only stops, asynchronously.
- ``cfo``: FLAML's cost-frugal optimisation (Wu et al., "Frugal Optimization for Cost-related
  Hyperparameters", AAAI 2021), a Ray ``Searcher``: a randomised local search that starts at the
  space's cheap end (``low_cost_partial_config``: the parameters the space marks ``cheap``,
  :meth:`~lightning_green.tune.space.Param.cheapest`) and moves towards costlier configurations
  only as they pay off, its cost the trial's energy (``cost_attr``: ``tune.energy_metric``; FLAML
  tracks with it what its improvements cost; the frugality itself comes from the cheap start and
  the local steps). Epochs, where the space searches them, are one of those parameters (the cap
  is the same: the top of the range). Needs ``pip install "lightning-green[flaml]"``.

Seeds: ``tune.seed`` seeds Ray's random search (asha), Optuna's sampler and the bracket draw
(bohb) and CFO's random steps (cfo). A study is the same from run to run as far as its trials'
results are (ASHA's stops and every model-based proposal follow them) and, with
``tune.max_concurrent`` above 1, as far as the order in which trials end is.

Module-level classes, because Ray pickles the searcher and the scheduler to checkpoint a study.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from ray.tune.schedulers import ASHAScheduler

from lightning_green.tune.space import Param, nested


def hyperband_brackets(max_t: int, grace_period: int, reduction_factor: int) -> int:
    """HyperBand's number of brackets, ``floor(log_rf(max_t / grace_period)) + 1``: bracket ``s``
    first compares a trial after ``grace_period x rf^s`` iterations, from the most aggressive
    (``s = 0``: plain ASHA) to one that stops trials at the last rung only."""
    if max_t <= grace_period:
        return 1
    # the small tolerance: log(9) / log(3) is 2 give or take a rounding
    return math.floor(math.log(max_t / grace_period) / math.log(reduction_factor) + 1e-9) + 1


class SeededASHA(ASHAScheduler):
    """Ray's ``ASHAScheduler`` whose draw of a trial's bracket (a softmax over the brackets' rung
    counts, as Ray's) comes from its own seeded generator instead of NumPy's global one, so that
    a study with several brackets is reproducible."""

    def __init__(self, *args: Any, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rng = np.random.default_rng(seed)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if not self._metric or not self._metric_op:
            return super().on_trial_add(tune_controller, trial)  # Ray's own error
        sizes = np.array([len(b._rungs) for b in self._brackets])
        probs = np.e ** (sizes - sizes.max())
        self._trial_info[trial.trial_id] = self._brackets[
            int(self._rng.choice(len(sizes), p=probs / probs.sum()))
        ]


def bohb_search(accuracy_metric: str, seed: int, startup: int, multivariate: bool = True) -> Any:
    """Ray's ``OptunaSearch`` maximising accuracy with Optuna's TPE sampler (seeded; ``startup``
    random trials first; ``multivariate``: one density over all parameters, as BOHB's)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=multivariate)
    return OptunaSearch(metric=accuracy_metric, mode="max", sampler=sampler)


def low_cost_config(params: list[Param]) -> dict[str, Any]:
    """The space's cheap end (flat, dotted keys): each parameter marked ``cheap`` at its cheapest
    value. Empty where the space marks none (a space whose parameters do not drive the cost)."""
    return {p.key: p.cheapest() for p in params if p.cheap is not None}


def frugal_space(params: list[Param]) -> dict[str, Any]:
    """The space as Ray domains for FLAML (nested). Ranges are half-open, ``[low, high)``: FLAML
    maps its unit interval onto ``[low, upper]`` and, by rounding, may reach ``upper`` itself, so a
    float range's upper bound is taken a billionth of the range below ``high`` (Adam's beta2 = 1.0
    is invalid)."""
    from ray import tune

    out = {}
    for p in params:
        if p.type in ("uniform", "loguniform"):
            lo, hi = float(p.low), float(p.high)
            hi = min(hi - (hi - lo) * 1e-9, math.nextafter(hi, -math.inf))
            out[p.key] = tune.uniform(lo, hi) if p.type == "uniform" else tune.loguniform(lo, hi)
        else:
            out[p.key] = p.ray()
    return nested(out)


def cfo_search(params: list[Param], accuracy_metric: str, energy_metric: str, seed: int) -> Any:
    """FLAML's CFO maximising accuracy (:class:`lightning_green.tune.frugal.FrugalSearch`), its
    cost each trial's ``energy_metric``, starting at :func:`low_cost_config`, seeded."""
    from lightning_green.tune.frugal import FrugalSearch

    low = low_cost_config(params)
    return FrugalSearch(
        metric=accuracy_metric, mode="max", space=frugal_space(params),
        low_cost_partial_config=nested(low) if low else None, cost_attr=energy_metric, seed=seed,
    )  # fmt: skip
