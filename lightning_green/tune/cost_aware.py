"""A cost-aware searcher: the next trial is the one most likely to reach the target per joule.

To reach a target accuracy with the least energy, trials should be tried in decreasing order of
``p / c``: the chance ``p`` that a configuration reaches the target over the energy ``c`` it will
cost (for independent trials this order minimises the expected energy spent until the first
success; W. E. Smith, "Various optimizers for single-stage production", 1956). Both are learnt
from the trials so far:

- ``c``: a ridge regression of log(energy per epoch) on the configuration's cost features,
  fitted on the measured energy of every trial, times the epochs the configuration will train.
  With a ``flops`` function (the strategy counts each model's forward FLOPs per sample on the
  built model) the cost features are few and physical: log FLOPs per sample, log batch size
  (optimizer steps per epoch) and the searched choices (precision); without it, every feature.
  Until ``startup`` trials have finished nothing is measured: start-up trials come from the
  cheapest quarter of the candidates by a prior cost (steps per epoch x a step's fixed overhead
  plus its compute, :func:`prior_log_costs`) and, of those, the upper half by step budget
  (learning rate x optimizer steps, :func:`log_step_budget`), spread out in the searched space
  (:func:`startup_pool`, :meth:`CostAwareSearch.spread`); without FLOPs, those with the fewest
  epochs. Cheap is not enough: the cheapest configurations take the fewest steps, and at a low
  learning rate they fail whatever else they are. :func:`startup_points` hands the same
  start-up to other searchers (the ``multi`` strategy's Optuna study starts from it).
- ``p``, and how many epochs a success takes: every trial's learning curve (its accuracy after
  each epoch) says how many epochs that configuration needs to reach the target: the first
  epoch at or above it, or, for a curve that stopped short (ASHA, out of reach, or the budget),
  an extrapolation of its logit accuracy, linear in log epochs, from its last three epochs
  (:func:`epochs_to_reach`). A curve cut at 0.8 after one epoch is a configuration that needs
  about two, not a failure at 0.8: the scheduler's stops do not teach the model that a region
  fails. A Bayesian ridge regression of log epochs-to-target on the success features (log
  FLOPs, log batch size, learning rate, precision) gives each candidate a normal predictive
  distribution, wide away from the trials; ``p`` is its chance of needing no more epochs than
  the trial may train, and the expected epochs of a success are its mean below that
  (:func:`reach_model`). A candidate's expected cost is its predicted energy per epoch times
  ``p`` x those epochs plus ``1 - p`` x the epochs failed trials ran before they were stopped
  (:func:`attempt_cost`).

Once a trial reaches the target, the target becomes the best accuracy so far: the search goes on
looking for improvements, still cheapest-chance-first. A trial stopped early by a scheduler
counts with the curve it had when stopped, and its energy per epoch still informs the cost model.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from lightning_green.tune.space import Param, nested

try:  # the searcher is a Ray Searcher; the maths below needs only numpy
    from ray.tune.search import Searcher
except ImportError:  # pragma: no cover
    Searcher = object  # type: ignore[assignment,misc]


#: Keys whose ratio is the number of optimizer steps (up to the dataset's size), which accuracy
#: and energy both follow closely: added as a feature when the space searches either.
EPOCHS_KEY, BATCH_KEY = "trainer.max_epochs", "data.batch_size"


def features(params: list[Param], config: dict[str, Any]) -> np.ndarray:
    """A configuration (flat, dotted keys) as numbers: log for log-uniform, one-hot for choices,
    plus log(epochs / batch size) when the space searches epochs or the batch size."""
    out: list[float] = []
    keys = {p.key for p in params}
    if EPOCHS_KEY in keys or BATCH_KEY in keys:
        steps = [math.log(float(config.get(EPOCHS_KEY, 1)) / float(config.get(BATCH_KEY, 1)))]
    else:
        steps = []
    for p in params:
        v = config[p.key]
        if p.type == "choice":
            out += [1.0 if v == c else 0.0 for c in p.values]
        elif p.type == "loguniform":
            out.append(math.log(float(v)))
        else:
            out.append(float(v))
    return np.asarray(out + steps, dtype=float)


def size_features(params: list[Param], config: dict[str, Any], flops: float) -> list[float]:
    """log FLOPs per sample (the model's compute) and, when searched, log batch size (steps per epoch)."""
    out = [math.log(max(flops, 1.0))]
    if any(p.key == BATCH_KEY for p in params):
        out.append(math.log(float(config[BATCH_KEY])))
    return out


def _outside_model(params: list[Param]) -> list[Param]:
    return [p for p in params if not p.key.startswith(("model.", "data."))]


def cost_features(params: list[Param], config: dict[str, Any], flops: float | None) -> np.ndarray:
    """What a trial's energy per epoch follows: log FLOPs per sample, log batch size (steps per
    epoch) and the searched choices outside the model (precision); every feature without FLOPs."""
    if not flops:
        return features(params, config)
    choices = [p for p in _outside_model(params) if p.type == "choice"]
    onehots = [1.0 if config[p.key] == c else 0.0 for p in choices for c in p.values]
    return np.asarray(size_features(params, config, flops) + onehots, dtype=float)


def success_features(params: list[Param], config: dict[str, Any], flops: float | None) -> np.ndarray:
    """What reaching the target follows, compactly: the model's capacity as log FLOPs per sample,
    log batch size, and the parameters outside the model and data (learning rate, precision),
    so that a few trials already say something; every feature without FLOPs."""
    if not flops:
        return features(params, config)
    return np.concatenate([size_features(params, config, flops), features(_outside_model(params), config)])


def prior_log_costs(params: list[Param], configs: list[dict[str, Any]], flops: list[float]) -> np.ndarray:
    """Before any trial is measured, each candidate's log cost: optimizer steps per epoch
    (1 / batch size) x the cost of a step, a fixed overhead (kernel launches, the optimizer step,
    the loop) plus compute (batch size x FLOPs per sample), x the epochs when the space searches
    them. The overhead-to-compute ratio is unknown until something is measured; the prior takes
    the two as equal at the median candidate, so neither dominates: a tiny model at the smallest
    batch pays for its many steps, a big model at the biggest for its compute. (An earlier
    version used log FLOPs - log batch size, which ranks a tiny model at batch 16 with a mid-sized
    one at 256; the first costs 3-5x more per epoch on the 2-core VM.) Only the ranking matters."""
    keys = {p.key for p in params}
    batch = np.array([float(c[BATCH_KEY]) if BATCH_KEY in keys else 1.0 for c in configs])
    compute = batch * np.maximum(np.asarray(flops, dtype=float), 1.0)
    out = np.log(np.median(compute) + compute) - np.log(batch)
    if EPOCHS_KEY in keys:
        out += np.log([float(c[EPOCHS_KEY]) for c in configs])
    return out


#: The learning rate, when the space searches it.
LR_KEY = "optimizer.lr"


def log_step_budget(params: list[Param], config: dict[str, Any]) -> float:
    """log(learning rate x optimizer steps) up to the dataset size: learning rate / batch size,
    x the epochs when searched. How far a trial's budget can move the weights; NaN unless the
    space searches the learning rate."""
    keys = {p.key for p in params}
    if LR_KEY not in keys:
        return math.nan
    out = math.log(float(config[LR_KEY]))
    if BATCH_KEY in keys:
        out -= math.log(float(config[BATCH_KEY]))
    if EPOCHS_KEY in keys:
        out += math.log(float(config[EPOCHS_KEY]))
    return out


#: Start-up trials come from this cheapest fraction of the candidates by prior cost, and of
#: those, from the upper half by step budget (learning rate x steps).
STARTUP_QUANTILE, STEP_QUANTILE = 0.25, 0.5


def startup_pool(params: list[Param], configs: list[dict[str, Any]], flops: list[float]) -> np.ndarray:
    """Indices of the candidates a start-up trial may be: the cheapest quarter by
    :func:`prior_log_costs`, and of those, when the learning rate is searched, the upper half by
    :func:`log_step_budget`. The cheapest configurations are also those with the fewest steps
    (the biggest batch): at a low learning rate they cannot get far in a few epochs and fail
    whatever else they are, so a start-up trial there teaches little and costs its full budget;
    at a high one they reach a target at the least energy (the 2-core digits runs: 1.4-3 J for
    0.9 at batch 256 and learning rates above 0.01, against failures below 0.002)."""
    prior = prior_log_costs(params, configs, flops)
    keep = prior <= np.quantile(prior, STARTUP_QUANTILE)
    step = np.array([log_step_budget(params, c) for c in configs])
    if np.isfinite(step).all():
        keep &= step >= np.quantile(step[keep], STEP_QUANTILE)
    return np.flatnonzero(keep)


def _design(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.hstack([(x - mean) / scale, np.ones((len(x), 1))])


def _ridge(
    x: np.ndarray, y: np.ndarray, ridge: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ridge regression of ``y`` on standardised ``x`` with an unshrunk intercept: (mean, scale,
    weights with intercept last, (Z'Z + R)^-1 for the predictive variance)."""
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    z = _design(x, mean, scale)
    penalty = ridge * np.eye(z.shape[1])
    penalty[-1, -1] = 0.0  # the intercept is not shrunk
    inv = np.linalg.pinv(z.T @ z + penalty)
    return mean, scale, inv @ z.T @ y, inv


def _predictive(
    x_seen: np.ndarray, y: np.ndarray, x_new: np.ndarray, ridge: float, prior_var: float, prior_weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of new points under the ridge model: ``s^2 (1 + z (Z'Z + R)^-1 z')``,
    ``s^2`` the residual variance shrunk towards ``prior_var`` with ``prior_weight`` pseudo-trials."""
    mean, scale, w, inv = _ridge(x_seen, y, ridge)
    resid = y - _design(x_seen, mean, scale) @ w
    s2 = (float(resid @ resid) + prior_weight * prior_var) / (len(y) + prior_weight)
    z = _design(x_new, mean, scale)
    return z @ w, s2 * (1.0 + np.einsum("ij,jk,ik->i", z, inv, z))


def fit_cost_model(
    x: np.ndarray, log_cost: np.ndarray, ridge: float = 1e-2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge regression of ``log_cost`` on standardised ``x``; returns (mean, scale, weights with intercept last)."""
    mean, scale, w, _ = _ridge(x, log_cost, ridge)
    return mean, scale, w


def predict_log_cost(model: tuple[np.ndarray, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    mean, scale, w = model
    return _design(x, mean, scale) @ w


def expected_cost(
    x_seen: np.ndarray, log_cost: np.ndarray, x_new: np.ndarray, ridge: float = 1e-2,
    prior_sd: float = 0.5, prior_weight: float = 2.0,
) -> np.ndarray:  # fmt: skip
    """The expected cost of each new point under the ridge model read as log-normal:
    ``exp(mu + v / 2)``, ``v`` the predictive variance, growing with the distance from what was
    measured (a batch size never tried costs more in expectation than its point prediction), its
    residual part shrunk towards ``prior_sd^2`` with ``prior_weight`` pseudo-trials."""
    mu, var = _predictive(x_seen, log_cost, x_new, ridge, prior_sd**2, prior_weight)
    return np.exp(mu + 0.5 * var)


def _logit(acc: float) -> float:
    a = min(max(float(acc), 0.01), 0.995)  # a 0% or 100% epoch still has a finite logit
    return math.log(a / (1.0 - a))


#: Logit accuracy gained per unit of log epochs when a curve has a single point (0.5 after one
#: epoch -> 0.9 after three), and the least slope an extrapolation may assume.
DEFAULT_SLOPE, MIN_SLOPE = 2.0, 0.3


def epochs_to_reach(curve: list[float], target: float, cap: float = 100.0) -> float:
    """Epochs a learning curve (accuracy after epoch 1, 2, ...) needs to reach ``target``: the
    first epoch at or above it; for a curve that ends below it, its logit accuracy extrapolated
    linearly in log epochs from its last three epochs (one epoch: slope :data:`DEFAULT_SLOPE`;
    a flat or falling curve: :data:`MIN_SLOPE`), at least half an epoch past its end, at most ``cap``."""
    for epoch, acc in enumerate(curve, start=1):
        if acc >= target:
            return float(epoch)
    k = len(curve)
    if k == 0:
        return cap
    x = np.log(np.arange(1, k + 1, dtype=float))[-3:]
    y = np.array([_logit(a) for a in curve])[-3:]
    slope = float(np.polyfit(x, y, 1)[0]) if len(x) >= 2 else DEFAULT_SLOPE
    slope = max(slope, MIN_SLOPE)
    needed = math.exp(x[-1] + (_logit(target) - y[-1]) / slope)
    return float(min(max(needed, k + 0.5), cap))


#: Normal quadrature nodes for the expected epochs of a success.
_Z = np.linspace(-4.0, 4.0, 81)
_W = np.exp(-0.5 * _Z**2)


def reach_model(
    x_seen: np.ndarray, log_epochs: np.ndarray, x_new: np.ndarray, horizon: np.ndarray, ridge: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """For each new point: the chance that it reaches the target within ``horizon`` epochs, and
    the epochs it trains when it does (rounded to whole epochs: a curve reports the first whole
    epoch at the target, validation coming at each epoch's end), under a
    Bayesian ridge regression of the seen trials' log epochs-to-target (predictive variance
    ``s^2 (1 + z (Z'Z + R)^-1 z')``, ``s^2`` shrunk towards 1, a factor e, with one pseudo-trial)."""
    mu, var = _predictive(x_seen, log_epochs, x_new, ridge, 1.0, 1.0)
    sd = np.sqrt(var)
    h = np.asarray(horizon, dtype=float)
    p = 0.5 * np.array([math.erfc(-v / math.sqrt(2.0)) for v in (np.log(h) - mu) / sd])
    log_e = np.minimum(mu[:, None] + sd[:, None] * _Z[None, :], math.log(1e6))  # no overflow far out
    epochs = np.maximum(1.0, np.round(np.exp(log_e)))
    inside = epochs <= h[:, None]
    w = _W[None, :] * inside
    mean = np.where(inside.any(axis=1), (w * epochs).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-300), h)
    return p, mean


def attempt_cost(
    per_epoch: np.ndarray, p: np.ndarray, success_epochs: np.ndarray, failed_epochs: float
) -> np.ndarray:
    """Expected energy of one attempt: a success trains until it reaches the target, a failure
    until it is stopped (``failed_epochs``: what failed trials ran so far)."""
    return per_epoch * (p * success_epochs + (1.0 - p) * failed_epochs)


def pick(p: np.ndarray, cost: np.ndarray) -> int:
    """The candidate with the highest chance of success per unit of cost (Smith's rule)."""
    return int(np.argmax(p / np.maximum(cost, 1e-12)))


class Finished(NamedTuple):
    """A finished trial as the searcher learns from it (module-level: Ray pickles the searcher)."""

    config: dict[str, Any]
    accuracy: float | None  # None: the trial failed or reported none
    joules: float | None
    epochs: float
    curve: list[float]  # accuracy after each epoch


class CostAwareSearch(Searcher):
    """Ray Tune searcher choosing, among ``candidates`` random configurations, the one with the
    highest chance of reaching the target accuracy per predicted joule.

    Args:
        params: The search space.
        accuracy_metric, energy_metric: Result keys (accuracy maximised; energy in joules so far).
        target_accuracy: The accuracy to reach; ``None``: ``target_fraction`` x the best so far.
        epochs_key / default_epochs: Where a configuration's epochs come from (a searched
            ``trainer.max_epochs``), else the fixed number.
        startup: Trials chosen at random before the models are used.
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
        seen = self.done
        cands = [self.sample() for _ in range(self.candidates)]
        flops = [self._flops(c) for c in cands]
        if len(seen) < max(self.startup, 1):
            # Nothing measured yet. With FLOPs: the start-up pool (cheap by the prior, enough
            # step budget; see startup_pool); without: the fewest epochs. Spread out among those.
            if all(flops):
                return self.spread([cands[i] for i in startup_pool(self.params, cands, flops)])
            epochs = np.array([self.epochs(c) for c in cands])
            return self.spread([c for c, e in zip(cands, epochs, strict=True) if e == epochs.min()])
        target = self.target()
        x_new = np.stack([success_features(self.params, c, f) for c, f in zip(cands, flops, strict=True)])
        x_seen = np.stack([success_features(self.params, d.config, self._flops(d.config)) for d in seen])
        # a failed trial (no accuracy, no curve) needs more epochs than any trial may train
        log_epochs = np.log([epochs_to_reach(d.curve, target) for d in seen])
        searched = any(p_.key == EPOCHS_KEY for p_ in self.params)
        # the epochs a trial may train: its own searched value, else the budget every trial has
        horizon = np.array([self.epochs(c) for c in cands])
        p, success_epochs = reach_model(x_seen, log_epochs, x_new, horizon)
        costed = [
            (cost_features(self.params, d.config, self._flops(d.config)), d.joules / max(d.epochs, 1.0))
            for d in seen
            if d.joules is not None and d.joules > 0
        ]
        if len(costed) >= 2:
            x_cost = np.stack([cost_features(self.params, c, f) for c, f in zip(cands, flops, strict=True)])
            per_epoch = expected_cost(
                np.stack([f for f, _ in costed]), np.log([c for _, c in costed]), x_cost
            )
        else:
            per_epoch = np.ones(len(cands))
        if searched:  # a searched number of epochs is trained in full unless the target comes first
            failed = horizon
        else:  # epochs are the budget: a likely failure is stopped early, as failures were so far
            ran = [d.epochs for d in seen if d.accuracy is None or d.accuracy < target]
            failed = float(np.mean(ran)) if ran else 1.0
        return cands[pick(p, attempt_cost(per_epoch, p, success_epochs, failed))]


def startup_points(
    params: list[Param], n: int, seed: int, flops: Callable[[dict[str, Any]], float | None] | None
) -> list[dict[str, Any]]:
    """The first ``n`` configurations (flat, dotted keys) the cost-aware searcher would try with
    nothing measured: drawn from :func:`startup_pool` and spread out. Other searchers start
    from them (the ``multi`` strategy enqueues them as Optuna's start-up trials)."""
    search = CostAwareSearch(params, "accuracy", "energy", None, 1.0, default_epochs=1, startup=n, seed=seed,
                             flops=flops)  # fmt: skip
    for i in range(n):
        search.suggest(f"startup{i}")  # live, so the next one is spread out from it
    return list(search.live.values())
