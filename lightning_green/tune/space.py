"""Search spaces from config: validation, Ray Tune distributions, and grids of levels.

A space is a nested mapping whose leaves are parameter specs keyed by their config path::

    params:
      optimizer:
        lr: {type: loguniform, low: 1.0e-5, high: 0.1}
        beta1: {type: uniform, low: 0.1, high: 1.0}     # [low, high)
      model:
        conv_layers: {type: int, low: 1, high: 4}       # inclusive
        activation: {type: choice, values: [relu, none]}

A parameter that drives a trial's cost may say where it is cheap, ``cheap: low`` or ``cheap: high``
(the end of its range), or for a choice the cheap value (``cheap: 256``): the ``cfo`` strategy
starts there (:meth:`Param.cheapest`, FLAML's ``low_cost_partial_config``)::

    model:
      conv_layers: {type: int, low: 1, high: 4, cheap: low}
    data:
      batch_size: {type: choice, values: [16, 64, 256], cheap: 256}
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_green._checks import check_number
from lightning_green.config import ConfigError

TYPES = ("uniform", "loguniform", "int", "choice")


@dataclass(frozen=True)
class Param:
    key: str  # dotted config path, e.g. "optimizer.lr"
    type: str
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] = ()
    cheap: Any = None  # where a trial costs least: "low" / "high" (a range), a value (a choice)

    def cheapest(self) -> Any:
        """The parameter's cheapest value (``None`` where the space does not say): the low or
        high end of the range (its top is excluded: the float just below it), or a choice's value."""
        if self.cheap is None or self.type == "choice":
            return self.cheap
        if self.type == "int":
            return int(self.low if self.cheap == "low" else self.high)
        return float(self.low) if self.cheap == "low" else math.nextafter(float(self.high), -math.inf)

    def ray(self) -> Any:
        from ray import tune

        # Ranges are half-open, [low, high): Adam's beta2 = 1.0 is invalid. Optuna's float
        # distributions include their upper bound (model-based samplers do propose it), so the
        # bound handed over is the float just below ``high``.
        high = math.nextafter(self.high, -math.inf) if self.high is not None else None
        if self.type == "uniform":
            return tune.uniform(self.low, high)
        if self.type == "loguniform":
            return tune.loguniform(self.low, high)
        if self.type == "int":
            return tune.randint(int(self.low), int(self.high) + 1)  # randint's upper bound is exclusive
        return tune.choice(list(self.values))

    def unit(self, value: Any) -> float:
        """``value``'s place in the range, in [0, 1] (log scale for loguniform, the index for a
        choice): what a space-filling start-up spreads out."""
        if self.type == "choice":
            return self.values.index(value) / max(len(self.values) - 1, 1)
        lo, hi, v = float(self.low), float(self.high), float(value)
        if self.type == "loguniform":
            lo, hi, v = math.log(lo), math.log(hi), math.log(v)
        return (v - lo) / (hi - lo) if hi > lo else 0.5

    def levels(self, n: int) -> list[Any]:
        """``n`` grid levels: the midpoints of ``n`` equal bins of [low, high) (log bins for loguniform),
        every integer or choice when there are at most ``n``."""
        if self.type == "choice":
            return list(self.values)
        if self.type == "int":
            lo, hi = int(self.low), int(self.high)
            if hi - lo + 1 <= n:
                return list(range(lo, hi + 1))
            return sorted({round(lo + (hi - lo) * i / (n - 1)) for i in range(n)})
        if self.type == "loguniform":
            a, b = math.log(self.low), math.log(self.high)
            return [math.exp(a + (b - a) * (i + 0.5) / n) for i in range(n)]
        return [self.low + (self.high - self.low) * (i + 0.5) / n for i in range(n)]


def parse_space(node: DictConfig | dict, base_cfg: DictConfig | None = None) -> list[Param]:
    """Flatten and validate a space; with ``base_cfg``, every key must exist in it.

    Raises:
        ConfigError: Naming ``tune.space.params.<key>`` for an unknown type, an empty or inverted
            range, a non-positive log bound, an empty choice, or a key the config does not have.
    """
    data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    params: list[Param] = []

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and "type" in v:
                params.append(_param(key, v))
            elif isinstance(v, dict):
                walk(v, key)
            else:
                raise ConfigError(
                    f"tune.space.params.{key} must be a mapping with a 'type' ({', '.join(TYPES)}); got {v!r}"
                )

    walk(data or {}, "")
    if not params:
        raise ConfigError("tune.space.params is empty: name at least one parameter to search")
    if base_cfg is not None:
        for p in params:
            if OmegaConf.select(base_cfg, p.key, default=_MISSING) is _MISSING:
                raise ConfigError(
                    f"tune.space.params.{p.key}: the config has no key {p.key!r} to search over"
                )
    return params


_MISSING = object()


def _param(key: str, spec: dict) -> Param:
    where = f"tune.space.params.{key}"
    kind = spec.get("type")
    if kind not in TYPES:
        raise ConfigError(f"{where}.type must be one of {', '.join(TYPES)}; got {kind!r}")
    cheap = spec.get("cheap")
    if kind == "choice":
        values = tuple(spec.get("values") or ())
        if not values:
            raise ConfigError(f"{where}.values must be a non-empty list")
        if cheap is not None and cheap not in values:
            raise ConfigError(
                f"{where}.cheap must be one of its values {list(values)} (or absent); got {cheap!r}"
            )
        return Param(key, kind, values=values, cheap=cheap)
    if cheap not in (None, "low", "high"):
        raise ConfigError(
            f"{where}.cheap must be low or high (the cheap end of the range), or absent; got {cheap!r}"
        )
    low, high = spec.get("low"), spec.get("high")
    for bound, value in (("low", low), ("high", high)):
        try:
            check_number(f"{where}.{bound}", value)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if kind == "int":
        if int(low) != low or int(high) != high or low > high:
            raise ConfigError(f"{where}: int range needs integers with low <= high; got [{low}, {high}]")
    elif not low < high:
        raise ConfigError(f"{where}: the range [{low}, {high}) is empty or inverted; low must be below high")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0; got {low}")
    return Param(key, kind, float(low), float(high), cheap=cheap)


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"optimizer.lr": x}`` -> ``{"optimizer": {"lr": x}}`` (Ray's param_space shape)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        d = out
        *parents, last = key.split(".")
        for p in parents:
            d = d.setdefault(p, {})
        d[last] = value
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def grid_points(params: list[Param], levels: int, budget: int, seed: int) -> list[dict[str, Any]]:
    """The full grid of ``levels`` per parameter, sampled without replacement down to ``budget`` points."""
    import random

    grid = [
        dict(zip([p.key for p in params], combo, strict=True))
        for combo in itertools.product(*(p.levels(levels) for p in params))
    ]
    rng = random.Random(seed)
    return rng.sample(grid, k=min(budget, len(grid)))
