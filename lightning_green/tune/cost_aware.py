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
  Until ``startup`` trials have finished nothing is measured: start-up trials are random among
  the cheapest quarter of the candidates by the prior log FLOPs - log batch size (compute and
  per-step cost weighted alike), or among those with the fewest epochs without FLOPs.
- ``p``: a kernel regression of the trials' accuracies (Gaussian kernel on standardised
  features), shrunk towards their overall mean and spread, read as a normal predictive
  distribution: the chance that the configuration's accuracy reaches the target. Where few
  trials are near, the spread is wide and the chance moderate, so unexplored regions stay in play;
  a new batch of random candidates each time keeps the choice varied.

Once a trial reaches the target, the target becomes the best accuracy so far: the search goes on
looking for improvements, still cheapest-chance-first. A trial stopped early by a scheduler counts
with the accuracy it had when stopped, and its energy per epoch still informs the cost model.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from typing import Any

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


def prior_log_cost(params: list[Param], config: dict[str, Any], flops: float) -> float:
    """Before any trial is measured: log FLOPs per sample - log batch size (compute and per-step
    overhead weighted alike; only the ranking of candidates matters)."""
    size = size_features(params, config, flops)
    return size[0] - (size[1] if len(size) > 1 else 0.0)


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


def _chance_above(target: float, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """1 - Phi((target - mu) / sigma): the normal chance of reaching ``target``."""
    return 0.5 * np.array([math.erfc(v / math.sqrt(2.0)) for v in (target - mu) / sigma])


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


def expected_epochs(p: np.ndarray, failed_epochs: float, success_epochs: float) -> np.ndarray:
    """Epochs a trial is expected to train when epochs are the budget: a failure ends early
    (ASHA, or out of reach), a success trains until it reaches the target."""
    return (1.0 - p) * failed_epochs + p * success_epochs


def success_chance(
    x_seen: np.ndarray, acc: np.ndarray, x_new: np.ndarray, target: float, prior_weight: float = 1.0
) -> np.ndarray:
    """Chance that each new point's accuracy reaches ``target``: a kernel regression of the seen
    accuracies (Gaussian kernel on features standardised by the seen trials' spread, bandwidth
    0.75 x sqrt(dimensions)), shrunk towards their overall mean and variance with ``prior_weight``
    pseudo-trials, read through a normal predictive distribution: 1 - Phi((target - mu) / sigma)."""
    if len(x_seen) == 0:
        return np.full(len(x_new), 0.5)
    scale = x_seen.std(axis=0)
    scale[scale == 0] = 1.0
    bandwidth = 0.75 * math.sqrt(x_seen.shape[1])
    d2 = (((x_new[:, None, :] - x_seen[None, :, :]) / scale) ** 2).sum(axis=2)
    w = np.exp(-0.5 * d2 / bandwidth**2)
    m0, v0 = float(acc.mean()), float(acc.var()) + 1e-4
    n = w.sum(axis=1) + prior_weight
    mu = (w @ acc + prior_weight * m0) / n
    var = ((w * (acc[None, :] - mu[:, None]) ** 2).sum(axis=1) + prior_weight * v0) / n
    return _chance_above(target, mu, np.sqrt(var * (1.0 + 1.0 / n)))


def success_chance_linear(
    x_seen: np.ndarray, acc: np.ndarray, x_new: np.ndarray, target: float, ridge: float = 1.0
) -> np.ndarray:
    """Chance that each new point's accuracy reaches ``target`` under a Bayesian ridge regression
    of the seen accuracies on standardised features (a trend: a larger batch or a lower learning
    rate keeps failing, so the chance falls along that direction, not only near the failures),
    read through its normal predictive distribution, whose variance grows away from the trials:
    ``s^2 (1 + z (Z'Z + R)^-1 z')``, ``s^2`` the residual variance shrunk towards the accuracies'
    variance with one pseudo-trial."""
    if len(x_seen) == 0:
        return np.full(len(x_new), 0.5)
    mu, var = _predictive(x_seen, acc, x_new, ridge, float(acc.var()) + 1e-3, 1.0)
    return _chance_above(target, mu, np.sqrt(var))


def pick(p: np.ndarray, cost: np.ndarray) -> int:
    """The candidate with the highest chance of success per unit of cost (Smith's rule)."""
    return int(np.argmax(p / np.maximum(cost, 1e-12)))


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
        self.done: list[
            tuple[dict[str, Any], float | None, float | None, float]
        ] = []  # config, acc, J, epochs
        self.best = 0.0

    # ------------------------------------------------------------------ Ray's Searcher API
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the space is ours; Tune's param_space describes the same parameters

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = self.propose()
        self.live[trial_id] = config
        return nested(config)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        config = self.live.pop(trial_id, None)
        if config is None:
            return
        r = result or {}
        acc, joules = r.get(self.accuracy_metric), r.get(self.energy_metric)
        epochs = r.get("epochs") or r.get("training_iteration") or self.epochs(config)
        acc = None if acc is None or acc != acc else float(acc)
        self.done.append((config, acc, None if joules is None else float(joules), float(epochs)))
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

    def propose(self) -> dict[str, Any]:
        seen = self.done
        cands = [self.sample() for _ in range(self.candidates)]
        flops = [self._flops(c) for c in cands]
        if len(seen) < max(self.startup, 1):
            # Nothing measured yet. With FLOPs: random among the cheapest quarter by the prior;
            # without: the only cost known is that energy grows with the epochs.
            if all(flops):
                prior = np.array(
                    [prior_log_cost(self.params, c, f) for c, f in zip(cands, flops, strict=True)]
                )
                cheap = np.flatnonzero(prior <= np.quantile(prior, 0.25))
                return cands[int(self.rng.choice(cheap))]
            epochs = np.array([self.epochs(c) for c in cands])
            return cands[int(np.argmin(epochs))]
        x_new = np.stack([success_features(self.params, c, f) for c, f in zip(cands, flops, strict=True)])
        x_seen = np.stack([success_features(self.params, c, self._flops(c)) for c, *_ in seen])
        acc = np.array([0.0 if a is None else a for _, a, _, _ in seen])  # no accuracy: a failed trial
        chance = success_chance_linear if all(flops) else success_chance
        p = chance(x_seen, acc, x_new, self.target())
        costed = [
            (cost_features(self.params, c, self._flops(c)), j / max(e, 1.0))
            for c, _, j, e in seen
            if j is not None and j > 0
        ]
        if len(costed) >= 2:
            x_cost = np.stack([cost_features(self.params, c, f) for c, f in zip(cands, flops, strict=True)])
            per_epoch = expected_cost(
                np.stack([f for f, _ in costed]), np.log([c for _, c in costed]), x_cost
            )
        else:
            per_epoch = np.ones(len(cands))
        if any(p_.key == EPOCHS_KEY for p_ in self.params):
            epochs = np.array([self.epochs(c) for c in cands])
        else:  # epochs are the budget: a likely success trains longer than a likely failure
            reached = [e for _, a, _, e in seen if a is not None and a >= self.target()]
            failed = [e for _, a, _, e in seen if a is None or a < self.target()]
            epochs = expected_epochs(
                p,
                float(np.mean(failed)) if failed else 1.0,
                float(np.mean(reached)) if reached else max(self.default_epochs / 2.0, 1.0),
            )
        return cands[pick(p, per_epoch * epochs)]
