"""Search algorithms for each strategy: grid, random, bayes (accuracy only), multi (accuracy and
energy), efficient (least energy that reaches a target accuracy, with weak trials stopped early),
and the peers it is compared with (:mod:`lightning_green.tune.peers`): asha (random search, weak
trials stopped by ASHA), bohb (Optuna's TPE with ASHA over HyperBand's brackets), cfo (FLAML's
cost-frugal search, its cost the trial's energy)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from lightning_green._checks import check_number
from lightning_green.config import ConfigError
from lightning_green.tune.space import Param, grid_points, nested
from lightning_green.tune.trainable import REPORTED_METRICS

STRATEGIES = ("grid", "random", "bayes", "multi", "efficient", "asha", "bohb", "cfo")
SAMPLERS = {"bayes": ("gp", "tpe"), "multi": ("tpe", "gp", "nsga2"), "efficient": ("cost", "tpe", "gp")}
#: Each strategy's true/false settings.
SWITCHES = {
    "multi": ("cost_aware_startup",),
    "efficient": ("search_epochs", "stop_at_target"),
    "asha": ("search_epochs",),
    "bohb": ("search_epochs", "multivariate"),
}
#: The strategies whose trials ASHA stops, whatever ``tune.scheduler`` says: epochs are their
#: budget (each trial may train the top of the space's epochs) unless ``search_epochs: true``.
EPOCH_BUDGET = ("efficient", "asha", "bohb")
#: What ``tune/strategy=cfo`` needs and the line that says how to get it.
FLAML_HINT = 'tune.strategy=cfo needs FLAML: pip install "lightning-green[flaml]"'
#: ASHA's settings: one node, ``tune.asha`` (``conf/tune/asha/default.yaml``), whatever the strategy.
ASHA_KEYS = ("grace_period", "reduction_factor")


def check_strategy(strategy: DictConfig, tune_cfg: DictConfig) -> None:
    name = strategy.get("name")
    if name not in STRATEGIES:
        raise ConfigError(f"tune.strategy.name must be one of {', '.join(STRATEGIES)}; got {name!r}")
    if name in SAMPLERS and strategy.get("sampler") not in SAMPLERS[name]:
        raise ConfigError(
            f"tune.strategy.sampler must be one of {', '.join(SAMPLERS[name])} for {name}; got {strategy.get('sampler')!r}"
        )
    if name == "grid" and not (isinstance(strategy.get("levels"), int) and strategy.levels >= 2):
        raise ConfigError(f"tune.strategy.levels must be an integer >= 2; got {strategy.get('levels')!r}")
    if name == "cfo":
        require_flaml()
    startup = strategy.get("n_startup_trials")
    if startup is not None and (isinstance(startup, bool) or not isinstance(startup, int) or startup < 1):
        raise ConfigError(f"tune.strategy.n_startup_trials must be an integer >= 1; got {startup!r}")
    brackets = strategy.get("brackets")
    if (
        name == "bohb"
        and brackets is not None
        and (isinstance(brackets, bool) or not isinstance(brackets, int) or brackets < 1)
    ):
        raise ConfigError(
            f"tune.strategy.brackets must be an integer >= 1, or null (HyperBand's); got {brackets!r}"
        )
    for key in ("accuracy_metric", "energy_metric"):
        if tune_cfg[key] not in REPORTED_METRICS:
            raise ConfigError(
                f"tune.{key} must be a metric the trials report ({', '.join(REPORTED_METRICS)}); got {tune_cfg[key]!r}"
            )
    for key, lo in (("num_samples", 1), ("max_concurrent", 1), ("max_failures", 0)):
        v = tune_cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"tune.{key} must be an integer >= {lo}; got {v!r}")
    for key in SWITCHES.get(name, ()):
        if not isinstance(strategy.get(key, False), bool):
            raise ConfigError(f"tune.strategy.{key} must be true or false; got {strategy.get(key)!r}")
    for key in ASHA_KEYS:  # a strategy file of the user's own, written when ASHA's settings were there
        if key in strategy:
            raise ConfigError(f"tune.strategy.{key} moved: use tune.asha.{key}={strategy[key]}")
    check_target(tune_cfg)
    if tune_cfg.scheduler not in ("fifo", "asha"):
        raise ConfigError(f"tune.scheduler must be one of fifo, asha; got {tune_cfg.scheduler!r}")
    if uses_asha(tune_cfg):
        asha_settings(tune_cfg)
    b = tune_cfg.energy_budget_j
    if b is not None:
        try:
            check_number("tune.energy_budget_j", b, above=0.0, unit="joules, or null")
        except ValueError as err:
            raise ConfigError(str(err)) from None


def require_flaml() -> None:
    """FLAML's CFO, for ``tune.strategy=cfo``; without it, one line saying how to install it
    (checked before Ray starts)."""
    import warnings

    try:
        with warnings.catch_warnings():  # "flaml.automl is not available": the AutoML part is not used
            warnings.simplefilter("ignore", UserWarning)
            from flaml import CFO  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"{FLAML_HINT} ({err})") from None


def uses_asha(tune_cfg: DictConfig) -> bool:
    """Whether the study's trials are stopped by ASHA: ``tune.scheduler=asha``, and always with
    the ``efficient``, ``asha`` and ``bohb`` strategies (epochs are their budget)."""
    return tune_cfg.scheduler == "asha" or tune_cfg.strategy.name in EPOCH_BUDGET


def asha_settings(tune_cfg: DictConfig) -> dict[str, int]:
    """ASHA's ``grace_period`` and ``reduction_factor``, from ``tune.asha`` (``conf/tune/asha/``:
    their one place), checked."""
    node = tune_cfg.get("asha")
    if node is None:
        raise ConfigError(
            "tune.asha is missing: a strategy config needs `defaults: [/tune/asha@_global_.tune.asha: default]` "
            "(conf/tune/strategy/*.yaml have it), or set +tune.asha.grace_period and +tune.asha.reduction_factor"
        )
    out = {}
    for key, lo in zip(ASHA_KEYS, (1, 2), strict=True):
        v = node.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"tune.asha.{key} must be an integer >= {lo}; got {v!r}")
        out[key] = v
    return out


def check_target(tune_cfg: DictConfig) -> None:
    """``tune.target_accuracy`` (null or a number in (0, 1]) and ``tune.target_fraction`` (in (0, 1])."""
    for key, allow_null in (("target_accuracy", True), ("target_fraction", False)):
        v = tune_cfg.get(key)
        if v is None and allow_null:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise ConfigError(
                f"tune.{key} must be a number in (0, 1]{' or null' if allow_null else ''}; got {v!r}"
            )


def model_flops(base: dict[str, Any]) -> Callable[[dict[str, Any]], float | None]:
    """FLOPs per sample of the model a flat configuration builds, counted on the built model
    (``torch.utils.flop_counter``; cached per distinct model settings; ``None`` where it cannot be
    built): the cost-aware searcher's physical prior on what a trial will cost."""
    import json

    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lightning_green.callbacks.flops import forward_flops

    cache: dict[str, float | None] = {}

    def flops(config: dict[str, Any]) -> float | None:
        # Keyed by the searched model and data values: a lookup costs microseconds (the searcher
        # scores hundreds of candidates per trial); only a model not seen before is built.
        key = json.dumps(
            sorted((k, v) for k, v in config.items() if k.startswith(("model.", "data."))), default=str
        )
        if key not in cache:
            cfg = OmegaConf.create({"model": base.get("model"), "data": base.get("data")})
            for name, value in config.items():
                if name.startswith(("model.", "data.")):
                    OmegaConf.update(cfg, name, value, force_add=True)
            try:
                dm = instantiate(cfg.data)
                net = instantiate(cfg.model, in_channels=dm.in_channels, image_size=dm.image_size,
                                  num_classes=dm.num_classes)  # fmt: skip
                cache[key] = forward_flops(net, torch.zeros(1, dm.in_channels, dm.image_size, dm.image_size))
            except Exception:  # a configuration the trial would reject: no prior, the trial says why
                cache[key] = None
        return cache[key]

    return flops


def search_setup(
    strategy: DictConfig,
    params: list[Param],
    tune_cfg: DictConfig,
    seed: int,
    base: dict[str, Any] | None = None,
) -> tuple[Any, dict, dict]:
    """Returns (search_alg, param_space, tune_config kwargs: metric/mode). ``base``: the study's
    resolved config tree (the cost-aware searcher counts each candidate model's FLOPs from it)."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    space = nested({p.key: p.ray() for p in params})
    acc, energy = tune_cfg.accuracy_metric, tune_cfg.energy_metric
    n = tune_cfg.num_samples
    if strategy.name == "grid":
        points = [nested(p) for p in grid_points(params, strategy.levels, n, seed)]
        alg = BasicVariantGenerator(
            points_to_evaluate=points, max_concurrent=tune_cfg.max_concurrent, random_state=seed
        )
        return alg, space, {"metric": acc, "mode": "max", "num_samples": len(points)}
    if strategy.name in ("random", "asha"):  # asha's trials are stopped by ASHA (study.asha_scheduler)
        alg = BasicVariantGenerator(max_concurrent=tune_cfg.max_concurrent, random_state=seed)
        return alg, space, {"metric": acc, "mode": "max", "num_samples": n}
    if strategy.name == "cfo":
        from lightning_green.tune.peers import cfo_search

        search = cfo_search(params, acc, energy, seed)
        kw = {"metric": acc, "mode": "max", "num_samples": n}
        return ConcurrencyLimiter(search, max_concurrent=tune_cfg.max_concurrent), space, kw
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    startup = int(strategy.get("n_startup_trials", 5))
    if strategy.name == "efficient" and strategy.sampler == "cost":
        from lightning_green.tune.cost_aware import CostAwareSearch

        # Searched epochs (trainer.max_epochs) scale a candidate's cost; otherwise every trial may
        # train the tree's max_epochs, and the searcher expects fewer for a likely failure.
        top = int(base["trainer"]["max_epochs"]) if base is not None else 1
        search = CostAwareSearch(
            params, acc, energy, tune_cfg.get("target_accuracy"), tune_cfg.target_fraction, default_epochs=top,
            startup=int(strategy.get("n_startup_trials", 3)), seed=seed,
            flops=model_flops(base) if base is not None else None,
        )  # fmt: skip
        return ConcurrencyLimiter(search, max_concurrent=tune_cfg.max_concurrent), space, {"num_samples": n}
    if strategy.name == "efficient":
        from lightning_green.tune.searchers import energy_constrained_search

        search = energy_constrained_search(
            acc,
            energy,
            strategy.sampler,
            seed,
            startup,
            tune_cfg.get("target_accuracy"),
            tune_cfg.target_fraction,
        )
        # Tune's own metric/mode stay unset: ASHA ranks by accuracy (study.asha_scheduler), the searcher by energy
        return ConcurrencyLimiter(search, max_concurrent=tune_cfg.max_concurrent), space, {"num_samples": n}
    if strategy.name == "bohb":
        from lightning_green.tune.peers import bohb_search

        search = bohb_search(acc, seed, startup, bool(strategy.get("multivariate", True)))
        kw = {"metric": acc, "mode": "max", "num_samples": n}
        return ConcurrencyLimiter(search, max_concurrent=tune_cfg.max_concurrent), space, kw
    if strategy.sampler == "gp":
        sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    elif strategy.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    else:
        sampler = optuna.samplers.NSGAIISampler(seed=seed)
    if strategy.name == "bayes":
        search = OptunaSearch(metric=acc, mode="max", sampler=sampler)
        kw = {"metric": acc, "mode": "max"}
    else:
        points = None
        if strategy.get("cost_aware_startup", False) and base is not None:
            from lightning_green.tune.cost_aware import startup_points

            # Optuna names a nested parameter with "/" (Ray's flattening of the param_space)
            points = [
                {k.replace(".", "/"): v for k, v in c.items()}
                for c in startup_points(params, startup, seed, model_flops(base))
            ]
        search = OptunaSearch(
            metric=[acc, energy], mode=["max", "min"], sampler=sampler, points_to_evaluate=points
        )
        kw = {}  # Tune itself takes no list of metrics; the searcher holds them
    return ConcurrencyLimiter(search, max_concurrent=tune_cfg.max_concurrent), space, {**kw, "num_samples": n}
