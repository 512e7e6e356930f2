"""The cost-aware searcher's model: which configuration is most likely to reach the target per joule.

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
  (:func:`startup_pool`; the searcher spreads them out); without FLOPs, those with the fewest
  epochs. Cheap is not enough: the cheapest configurations take the fewest steps, and at a low
  learning rate they fail whatever else they are.
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
  (:func:`attempt_cost`); :func:`choose` puts it together.

A trial stopped early by a scheduler counts with the curve it had when stopped, and its energy
per epoch still informs the cost model. Pure numpy, no Ray: the Ray searcher that keeps the
trials and asks this model is :class:`lightning_green.tune.cost_aware.CostAwareSearch`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from lightning_green.tune.space import Param

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
    """A finished trial as the model learns from it (module-level: Ray pickles the searcher that
    holds them)."""

    config: dict[str, Any]
    accuracy: float | None  # None: the trial failed or reported none
    joules: float | None
    epochs: float
    curve: list[float]  # accuracy after each epoch


def choose(
    params: list[Param], cands: list[dict[str, Any]], flops: list[float | None], seen: list[Finished],
    seen_flops: list[float | None], target: float, horizon: np.ndarray,
) -> int:  # fmt: skip
    """Which of ``cands`` to try next, once trials have finished (``seen``; ``flops`` and
    ``seen_flops``: each configuration's FLOPs per sample, ``None`` when unknown): the one with the
    highest chance of reaching ``target`` within its ``horizon`` of epochs per joule of an attempt
    (:func:`reach_model`, :func:`expected_cost`, :func:`attempt_cost`, :func:`pick`)."""
    x_new = np.stack([success_features(params, c, f) for c, f in zip(cands, flops, strict=True)])
    x_seen = np.stack([success_features(params, d.config, f) for d, f in zip(seen, seen_flops, strict=True)])
    # a failed trial (no accuracy, no curve) needs more epochs than any trial may train
    log_epochs = np.log([epochs_to_reach(d.curve, target) for d in seen])
    p, success_epochs = reach_model(x_seen, log_epochs, x_new, horizon)
    costed = [
        (cost_features(params, d.config, f), d.joules / max(d.epochs, 1.0))
        for d, f in zip(seen, seen_flops, strict=True)
        if d.joules is not None and d.joules > 0
    ]
    if len(costed) >= 2:
        x_cost = np.stack([cost_features(params, c, f) for c, f in zip(cands, flops, strict=True)])
        per_epoch = expected_cost(np.stack([f for f, _ in costed]), np.log([c for _, c in costed]), x_cost)
    else:
        per_epoch = np.ones(len(cands))
    if any(p_.key == EPOCHS_KEY for p_ in params):
        # a searched number of epochs is trained in full unless the target comes first
        failed: float | np.ndarray = horizon
    else:  # epochs are the budget: a likely failure is stopped early, as failures were so far
        ran = [d.epochs for d in seen if d.accuracy is None or d.accuracy < target]
        failed = float(np.mean(ran)) if ran else 1.0
    return pick(p, attempt_cost(per_epoch, p, success_epochs, failed))
