"""A cost-aware searcher: the next trial is the one most likely to reach the target per joule.

:class:`CostAwareSearch` is the Ray Tune searcher of the ``efficient`` strategy: it keeps the
trials (their configurations, learning curves and joules), draws random candidates, and asks the
model (:mod:`lightning_green.tune.cost_model`, pure numpy: Smith's rule, a ridge cost model and a
Bayesian model of the epochs each candidate needs) which to try. Until ``startup`` trials have
finished it proposes start-up trials: cheap by the model's prior, with enough step budget, spread
out in the searched space (:meth:`CostAwareSearch.spread`); :func:`startup_points` hands the same
start-up to other searchers (the ``multi`` strategy's Optuna study starts from it).

Once a trial reaches the target, the target becomes the best accuracy so far: the search goes on
looking for improvements, still cheapest-chance-first.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np

from lightning_green.tune.cost_model import EPOCHS_KEY, Finished, choose, startup_pool
from lightning_green.tune.space import Param, nested

try:  # the searcher is a Ray Searcher; the model it asks needs only numpy
    from ray.tune.search import Searcher
except ImportError:  # pragma: no cover
    Searcher = object  # type: ignore[assignment,misc]

# ``Finished`` stays importable from here: searcher checkpoints written before the model had its
# own module name it so.
__all__ = ["CostAwareSearch", "Finished", "startup_points"]


class CostAwareSearch(Searcher):
    """Ray Tune searcher choosing, among ``candidates`` random configurations, the one with the
    highest chance of reaching the target accuracy per predicted joule.

    Args:
        params: The search space.
        accuracy_metric, energy_metric: Result keys (accuracy maximised; energy in joules so far).
        target_accuracy: The accuracy to reach; ``None``: ``target_fraction`` x the best so far.
        target_fraction: See ``target_accuracy``.
        default_epochs: The epochs a configuration may train when the space does not search
            ``trainer.max_epochs`` (:data:`~lightning_green.tune.cost_model.EPOCHS_KEY`); a
            searched value is the configuration's own.
        startup: Trials proposed before the models are used (cheap, spread out).
        candidates: Random configurations scored per suggestion.
        seed: Random seed.
        flops: FLOPs per sample of the model a configuration builds (``None`` when unknown).
    """

    def __init__(
        self, params: list[Param], accuracy_metric: str, energy_metric: str, target_accuracy: float | None,
        target_fraction: float, default_epochs: int, startup: int = 3, candidates: int = 512, seed: int = 0,
        flops: Callable[[dict[str, Any]], float | None] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(metric=accuracy_metric, mode="max")
        self.params, self.accuracy_metric, self.energy_metric = params, accuracy_metric, energy_metric
        self.target_accuracy, self.target_fraction = target_accuracy, target_fraction
        self.default_epochs, self.startup, self.candidates = default_epochs, startup, candidates
        self.rng = np.random.default_rng(seed)
        self.flops = flops
        self.live: dict[str, dict[str, Any]] = {}
        self.curves: dict[str, list[float]] = {}  # running trials' accuracy after each epoch
        self.done: list[Finished] = []
        self.best = 0.0

    # ------------------------------------------------------------------ Ray's Searcher API
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the space is ours; Tune's param_space describes the same parameters

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = self.propose()
        self.live[trial_id] = config
        return nested(config)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Each epoch's report extends the trial's learning curve (the final report repeats it)."""
        acc = result.get(self.accuracy_metric)
        if trial_id in self.live and not result.get("final") and acc is not None and acc == acc:
            self.curves.setdefault(trial_id, []).append(float(acc))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        config = self.live.pop(trial_id, None)
        curve = self.curves.pop(trial_id, [])
        if config is None:
            return
        r = result or {}
        acc, joules = r.get(self.accuracy_metric), r.get(self.energy_metric)
        epochs = r.get("epochs") or r.get("training_iteration") or self.epochs(config)
        acc = None if acc is None or acc != acc else float(acc)
        if not curve and acc is not None:  # no epoch reports seen: the final accuracy is all there is
            curve = [acc]
        self.done.append(
            Finished(config, acc, None if joules is None else float(joules), float(epochs), curve)
        )
        if acc is not None:
            self.best = max(self.best, acc)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            # the FLOPs counter is rebuilt with the searcher on restore, not saved
            pickle.dump({k: v for k, v in self.__dict__.items() if k != "flops"}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))

    # ------------------------------------------------------------------ the choice
    def target(self) -> float:
        """``target_accuracy`` until a trial reaches it, then the best accuracy so far (look for
        improvements); without one, ``target_fraction`` x the best so far."""
        if self.target_accuracy is None:
            return self.target_fraction * self.best
        return max(float(self.target_accuracy), self.best)

    def epochs(self, config: dict[str, Any]) -> float:
        """The epochs ``config`` may train: its searched ``trainer.max_epochs``, else ``default_epochs``."""
        return float(config.get(EPOCHS_KEY, self.default_epochs))

    def sample(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in self.params:
            if p.type == "choice":
                out[p.key] = p.values[int(self.rng.integers(len(p.values)))]
            elif p.type == "int":
                out[p.key] = int(self.rng.integers(int(p.low), int(p.high) + 1))
            elif p.type == "loguniform":
                out[p.key] = float(math.exp(self.rng.uniform(math.log(p.low), math.log(p.high))))
            else:
                out[p.key] = float(self.rng.uniform(p.low, p.high))
        return out

    def _flops(self, config: dict[str, Any]) -> float | None:
        return self.flops(config) if self.flops is not None else None

    def spread(self, cands: list[dict[str, Any]]) -> dict[str, Any]:
        """The start-up's space-filling design: the first at random, then each the candidate
        farthest (in the unit cube of the searched values) from the nearest earlier start-up
        trial, so a few start-up trials cover the learning rates and batch sizes instead of
        landing on one end by chance (greedy maximin)."""
        earlier = [d.config for d in self.done] + list(self.live.values())
        if not earlier:
            return cands[int(self.rng.integers(len(cands)))]
        seen = np.stack([self._unit(c) for c in earlier])
        gaps = [float(np.min(np.linalg.norm(seen - self._unit(c), axis=1))) for c in cands]
        return cands[int(np.argmax(gaps))]

    def _unit(self, config: dict[str, Any]) -> np.ndarray:
        return np.array([p.unit(config[p.key]) for p in self.params])

    def propose(self) -> dict[str, Any]:
        cands = [self.sample() for _ in range(self.candidates)]
        flops = [self._flops(c) for c in cands]
        if len(self.done) < max(self.startup, 1):
            # Nothing measured yet. With FLOPs: the start-up pool (cheap by the prior, enough
            # step budget; see startup_pool); without: the fewest epochs. Spread out among those.
            if all(flops):
                return self.spread([cands[i] for i in startup_pool(self.params, cands, flops)])
            epochs = np.array([self.epochs(c) for c in cands])
            return self.spread([c for c, e in zip(cands, epochs, strict=True) if e == epochs.min()])
        # the epochs a trial may train: its own searched value, else the budget every trial has
        horizon = np.array([self.epochs(c) for c in cands])
        seen_flops = [self._flops(d.config) for d in self.done]
        return cands[choose(self.params, cands, flops, self.done, seen_flops, self.target(), horizon)]


def startup_points(
    params: list[Param], n: int, seed: int, flops: Callable[[dict[str, Any]], float | None] | None
) -> list[dict[str, Any]]:
    """The first ``n`` configurations (flat, dotted keys) the cost-aware searcher would try with
    nothing measured: drawn from :func:`~lightning_green.tune.cost_model.startup_pool` and spread
    out. Other searchers start from them (the ``multi`` strategy enqueues them as Optuna's
    start-up trials)."""
    search = CostAwareSearch(params, "accuracy", "energy", None, 1.0, default_epochs=1, startup=n, seed=seed,
                             flops=flops)  # fmt: skip
    for i in range(n):
        search.suggest(f"startup{i}")  # live, so the next one is spread out from it
    return list(search.live.values())
