"""What a study checks and settles before Ray starts: the strategy, the trainer, the space, the
Ray address, the resources a trial asks for, whether there is a study to resume; and the base
config every trial starts from.

Bad input fails here in one line naming the key, before any trial (or Ray itself) starts.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_green.config import ConfigError, check_trainer, to_container
from lightning_green.tune.space import Param, parse_space
from lightning_green.tune.strategies import EPOCH_BUDGET, check_strategy
from lightning_green.tune.trainable import EPOCH_METRICS

#: The ``callbacks`` entry the efficient strategy adds to every trial (``tune.strategy.stop_at_target_callback``).
STOP_AT_TARGET = "stop_at_target"


def prepare(cfg: DictConfig) -> tuple[list[Param], dict[str, Any]]:
    """Validate everything a study needs before Ray starts; returns (params, base config).

    The base config is resolved except for the ``callbacks`` group, whose nodes keep their
    interpolations (``${output_dir}``, ``${energy.*}``) so that each trial's folder reaches them.
    """
    check_strategy(cfg.tune.strategy, cfg.tune)
    check_trainer(cfg)
    check_ray_address(cfg.tune.ray_address)
    base = to_container(cfg)
    if "callbacks" in cfg:
        base["callbacks"] = OmegaConf.to_container(cfg.callbacks, resolve=False)
    params = parse_space(cfg.tune.space.params, OmegaConf.create(base))
    strategy = cfg.tune.strategy
    if strategy.name in EPOCH_BUDGET and not strategy.get("search_epochs", False):
        params = epochs_as_budget(cfg, params, base)
    return params, base


def epochs_as_budget(cfg: DictConfig, params: list[Param], base: dict[str, Any]) -> list[Param]:
    """The ``efficient`` strategy (and its peers ``asha`` and ``bohb``) spends epochs as its
    budget instead of searching them: every trial may train up to the searched range's top, ASHA
    stops weak trials at its rungs, and, for ``efficient`` with
    ``stop_at_target`` on, each trial gets ``tune.strategy.stop_at_target_callback``
    (:class:`~lightning_green.StopAtTarget`: a trial stops at the first validation that reaches
    ``tune.target_accuracy``, or once its learning curve, extrapolated, cannot reach it in the
    epochs it has left): the epochs a trial would train past the goal cost energy and buy nothing
    the strategy is asked for. Returns the params without ``trainer.max_epochs``; ``cfg`` and
    ``base`` get the top."""
    searched = next((p for p in params if p.key == "trainer.max_epochs"), None)
    top = max_epochs(cfg, params)
    if searched is not None:
        params = [p for p in params if p is not searched]
        cfg.trainer.max_epochs = top
        base["trainer"]["max_epochs"] = top
    node = stop_at_target_node(base["tune"]["strategy"])
    if node is not None:
        base["callbacks"] = callbacks = base.get("callbacks") or {}
        callbacks[STOP_AT_TARGET] = node
    return params


def stop_at_target_node(strategy: dict[str, Any]) -> dict[str, Any] | None:
    """The resolved ``stop_at_target_callback`` of the efficient strategy, its ``monitor`` the
    name the trial logs the accuracy metric under; ``None`` when the switch is off, there is no
    target (``tune.target_accuracy=null``) or the metric is not reported every epoch."""
    node = strategy.get("stop_at_target_callback")
    if not strategy.get("stop_at_target", True) or not node or node.get("target") is None:
        return None
    monitor = EPOCH_METRICS.get(node.get("monitor"))
    if monitor is None:
        return None
    return {**node, "monitor": monitor, "target": float(node["target"])}


def max_epochs(cfg: DictConfig, params: list[Param]) -> int:
    """The most epochs a trial can train: the searched range's top when ``trainer.max_epochs`` is searched."""
    searched = next((p for p in params if p.key == "trainer.max_epochs"), None)
    if searched is not None:
        return int(searched.high) if searched.type == "int" else int(max(searched.values))
    return int(cfg.trainer.max_epochs)


def check_ray_address(address: str | None, timeout_s: float = 3.0) -> None:
    """Fail in one line, before Ray starts, when nothing listens at ``host:port`` (Ray itself would
    retry for minutes). ``None`` (start Ray here) and ``"auto"`` are left to Ray."""
    if address in (None, "", "auto", "local"):
        return
    text = str(address).removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"tune.ray_address must be null, auto or host:port (e.g. 10.0.0.1:6379); got {address!r}"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConfigError(
            f"tune.ray_address={address}: nothing answers there ({err.strerror or err}); start the cluster "
            "with `ray start --head --port=PORT`, or leave tune.ray_address=null to start Ray on this machine"
        ) from None


def check_resources(tune_cfg: DictConfig, cluster: dict[str, Any]) -> None:
    """A trial that asks for more GPUs or CPUs than the whole cluster has would wait forever in
    Ray's queue: say so in one line before any trial starts."""
    for key, unit, have in (("gpus_per_trial", "GPU", cluster.get("gpus", 0)), ("cpus_per_trial", "CPU", cluster.get("cpus", 0))):  # fmt: skip
        want = tune_cfg.get(key) or 0
        if want > (have or 0):
            fix = (
                "start GPU nodes (ray start --num-gpus=N) or set tune.gpus_per_trial=0 trainer=cpu"
                if unit == "GPU"
                else f"lower tune.cpus_per_trial to at most {int(have or 0)} or add nodes"
            )
            raise ConfigError(
                f"tune.{key}={want} but the Ray cluster ({cluster.get('address')}, {cluster.get('nodes')} node(s)) "
                f"has {have:g} {unit}(s) in all: no trial could start; {fix}"
            )


def check_resumable(cfg: DictConfig, out: Path) -> None:
    """``tune.resume=true`` needs an interrupted study in ``out``; say so before Ray starts."""
    from ray import tune

    experiment = out / "ray" / cfg.tune.name
    if cfg.tune.resume and not tune.Tuner.can_restore(str(experiment.resolve())):
        raise ConfigError(
            f"tune.resume=true but there is no study to resume in {out}; pass the interrupted study's "
            "folder as hydra.run.dir=..., or drop tune.resume to start a new study"
        )
