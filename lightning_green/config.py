"""Structured-config schemas for the Hydra tree in ``conf/``, and building objects from a config.

Each YAML choice extends a schema registered here (``defaults: [cnn_schema]``), so a value of the
wrong type fails at composition with its key named. The ``energy`` node alone is open to keys it
does not have: :func:`check_energy_keys` refuses them in one line, naming the new key of one that
moved to its callback's own file (``conf/callbacks/``). Range checks live in the constructors; this
module re-raises their errors prefixed with the config group (``model.conv_layers must be ...``),
before any training starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import functools
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from lightning_green._checks import UserInputError
from lightning_green.config_schema import (
    AdamSchema,
    BaseConfig,
    CNNSchema,
    DenseSchema,
    DigitsSchema,
    EnergySchema,
    PathsSchema,
    ProfilerSchema,
    SyntheticSchema,
    TorchvisionDataSchema,
    TorchvisionModelSchema,
    TrainerSchema,
    TransformerSchema,
)
from lightning_green.energy import MeterUnavailableError

CONF_DIR = Path(__file__).parent / "conf"


class ConfigError(UserInputError):
    """A config value is invalid; the message names its key and the allowed values."""


def route_logs_to_hydra() -> None:
    """Lightning logs through its own stderr handler and does not propagate, so Hydra's job log
    (``<job>.log`` in the run folder) stayed empty. Once Hydra has configured logging, hand
    Lightning's records to the root logger: Hydra's console and file handlers then show and keep
    them (one console line each, as before)."""
    import logging

    root = logging.getLogger()
    if not any(isinstance(h, logging.FileHandler) for h in root.handlers):
        return  # Hydra's job logging is off: leave Lightning's console output as it is
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        lg.handlers = [h for h in lg.handlers if isinstance(h, logging.FileHandler)]
        lg.propagate = True


def friendly_errors(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap a Hydra task so that wrong input prints one line and exits with status 2, instead of a
    traceback: a :class:`ConfigError`, another :class:`UserInputError` (a record file, missing data),
    or an energy backend that cannot work on this machine."""

    @functools.wraps(task)
    def run(cfg: DictConfig) -> Any:
        route_logs_to_hydra()
        try:
            check_energy_keys(cfg)  # a key that moved, before any command starts its work
            return task(cfg)
        except ConfigError as err:
            _fail(f"invalid configuration: {err}")
        except UserInputError as err:
            _fail(str(err))
        except MeterUnavailableError as err:
            backend = OmegaConf.select(cfg, "energy.backend", default="?")
            _fail(f"energy.backend={backend} cannot work on this machine: {err}; use energy.backend=auto")

    return run


def _fail(message: str) -> NoReturn:
    print(f"lightning-green: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(2)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=BaseConfig)
    cs.store(group="model", name="cnn_schema", node=CNNSchema)
    cs.store(group="model", name="dense_schema", node=DenseSchema)
    cs.store(group="model", name="torchvision_schema", node=TorchvisionModelSchema)
    cs.store(group="model", name="transformer_schema", node=TransformerSchema)
    cs.store(group="data", name="digits_schema", node=DigitsSchema)
    cs.store(group="data", name="torchvision_schema", node=TorchvisionDataSchema)
    cs.store(group="data", name="synthetic_schema", node=SyntheticSchema)
    cs.store(group="trainer", name="trainer_schema", node=TrainerSchema)
    cs.store(group="optimizer", name="adam_schema", node=AdamSchema)
    # Open (not struct): an override of a key that moved composes, and check_energy_keys names its
    # new key in one line (Hydra would refuse it in a multi-line error naming neither).
    energy = OmegaConf.structured(EnergySchema)
    OmegaConf.set_struct(energy, False)
    cs.store(group="energy", name="energy_schema", node=energy)
    cs.store(group="profiler", name="profiler_schema", node=ProfilerSchema)
    cs.store(group="paths", name="paths_schema", node=PathsSchema)


register_configs()
# ``${lg.is_set:${.max_j},${.max_kwh}}``: whether any of the values is set (not null), to switch a
# callback on.
OmegaConf.register_new_resolver("lg.is_set", lambda *values: any(v is not None for v in values), replace=True)

#: Settings that left the energy group for their callback's own file (conf/callbacks/), and the
#: key each is now.
MOVED_KEYS = {
    "energy.budget_j": "callbacks.energy_budget.max_j",
    "energy.budget_check": "callbacks.energy_budget.check",
    "energy.budget_on_exceed": "callbacks.energy_budget.on_exceed",
    "energy.stop_gain_per_kj": "callbacks.energy_efficient_stopping.min_gain_per_kj",
    "energy.stop_monitor": "callbacks.energy_efficient_stopping.monitor",
    "energy.stop_mode": "callbacks.energy_efficient_stopping.mode",
    "energy.stop_patience": "callbacks.energy_efficient_stopping.patience",
    "energy.profile_layers": "callbacks.layer_profiler._enabled_",
}


def check_energy_keys(cfg: DictConfig) -> None:
    """Every key of the (open) ``energy`` node is a field of :class:`EnergySchema`; else a
    :class:`ConfigError` in one line: where a key that moved lives now
    (``energy.budget_j moved: use callbacks.energy_budget.max_j=5000``), or the keys there are."""
    energy = cfg.get("energy") if isinstance(cfg, DictConfig) else None
    if not isinstance(energy, DictConfig):
        return
    known = [f.name for f in dataclasses.fields(EnergySchema)]
    given = OmegaConf.to_container(energy, resolve=False)
    for key, value in given.items():  # type: ignore[union-attr]
        if key in known:
            continue
        moved = MOVED_KEYS.get(f"energy.{key}")
        if moved is not None:
            raise ConfigError(f"energy.{key} moved: use {moved}={_as_override(value)}")
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean energy.{close[0]}? " if close else ""
        raise ConfigError(f"energy.{key} is not a setting: {hint}the energy group has {', '.join(known)}")


def _as_override(value: object) -> str:
    """``value`` as a command-line override writes it (``true``, ``null``, ``5000``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _root_value_error(err: BaseException) -> BaseException:
    seen: BaseException | None = err
    found: BaseException = err
    while seen is not None:
        if isinstance(seen, ValueError):
            found = seen
        seen = seen.__cause__ or seen.__context__
    return found


def config_error(group: str, err: BaseException) -> ConfigError:
    """``err`` (or the ValueError beneath it) as a ConfigError naming ``group.<argument>``."""
    root = _root_value_error(err)
    return ConfigError(f"{group}.{root}" if isinstance(root, ValueError) else f"{group}: {root}")


#: A key of ours in a ``callbacks`` node (not passed to the callback): ``false`` switches it off.
ENABLED_KEY = "_enabled_"


def build_callbacks(
    node: DictConfig | None, check_off: Mapping[str, Mapping[str, Any]] | None = None
) -> list[Any]:
    """Instantiate every enabled callback of the ``callbacks`` group, in order.

    ``_enabled_`` must be true or false. A callback that is off but named in ``check_off`` is built
    all the same, with the stand-in arguments given there for those that are null, and dropped:
    a wrong value among its other keys fails before training although it is off. An error names
    the config key the user sets: ``energy.pue`` when the node interpolates it, else
    ``callbacks.<name>.<argument>``.
    """
    out = []
    for name, sub in (node or {}).items():
        if sub is None:
            continue
        enabled = sub.get(ENABLED_KEY, True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"callbacks.{name}.{ENABLED_KEY} must be true or false; got {enabled!r}")
        if enabled:
            out.append(_build_callback(str(name), sub))
        elif check_off and name in check_off:
            _build_callback(str(name), sub, check_off[name])
    return out


def _build_callback(name: str, sub: DictConfig, stand_in: Mapping[str, Any] | None = None) -> Any:
    from hydra.utils import instantiate

    raw = OmegaConf.to_container(sub, resolve=False)
    kwargs = {k: v for k, v in OmegaConf.to_container(sub, resolve=True).items() if k != ENABLED_KEY}
    kwargs.update({k: v for k, v in (stand_in or {}).items() if kwargs.get(k) is None})
    try:
        return instantiate(kwargs, _convert_="all")
    except Exception as err:
        root = _root_value_error(err)
        message = str(root)
        arg = message.split(" ", 1)[0]
        source = raw.get(arg) if isinstance(raw, dict) else None
        if isinstance(source, str) and source.startswith("${") and source.endswith("}") and ":" not in source:
            key = source[2:-1]
        else:
            key = f"callbacks.{name}.{arg}"
        if isinstance(root, ValueError) and arg in raw:
            raise ConfigError(f"{key}{message[len(arg) :]}") from err
        raise ConfigError(f"callbacks.{name}: {message}") from err


def build(group: str, node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with errors re-raised as :class:`ConfigError` naming ``group.key``."""
    from hydra.utils import instantiate

    try:
        return instantiate(node, _convert_="all", **kwargs)
    except Exception as err:
        raise config_error(group, err) from err


#: The extra that provides a logger's package (``pip install lightning-green[<extra>]``).
LOGGER_EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}


def build_loggers(node: DictConfig | None) -> list[Any] | bool:
    """Every logger of the ``logger`` group (one key per chosen file: ``logger=[csv,mlflow]``), or
    ``False`` for none. A logger whose package is missing is a :class:`ConfigError` saying what to
    install, not a stack trace."""
    if not node:
        return False
    loggers = []
    for key, sub in node.items():
        if sub is None:
            continue
        try:
            loggers.append(build(f"logger.{key}", sub))
        except ConfigError as err:
            cause = err.__cause__
            while cause is not None and not isinstance(cause, (ImportError, ModuleNotFoundError)):
                cause = cause.__cause__ or cause.__context__
            text = str(err).lower()
            if cause is not None or "not installed" in text or "no module named" in text:
                extra = LOGGER_EXTRAS.get(str(key))
                how = (
                    f"install lightning-green[{extra}]"
                    if extra
                    else f"install the package it needs ({cause or err})"
                )
                raise ConfigError(f"logger={key} needs a package that is not installed: {how}") from err
            raise
    return loggers or False


#: Most threads per usable CPU that ``threads`` may ask for. More threads than CPUs only queue
#: for them, yet a little oversubscription is ordinary (Ray told of more CPUs than the host has, a
#: container whose CPU count is the host's); far beyond it, the run's own threads swamp the load
#: average, and ``other_load`` (load minus threads) hides every other process on the machine.
THREADS_PER_CPU = 4


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as ``taskset`` or a cpuset sets it)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def check_threads(threads: object) -> None:
    """``threads`` is null or an integer from 1 to ``THREADS_PER_CPU`` x the usable CPUs; a
    :class:`ConfigError` naming the field and the allowed range otherwise."""
    cpus = usable_cpus()
    most = THREADS_PER_CPU * cpus
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= most
    ):
        raise ConfigError(
            f"threads must be null (PyTorch's default) or an integer >= 1 and <= {most} ({THREADS_PER_CPU} x "
            f"the {cpus} CPU(s) this process may use: more only queue for them and hide the machine's "
            f"other load); got {threads!r}"
        )


def check_output_dir(output_dir: object) -> Path:
    """``output_dir`` as a folder that exists (made if needed) and takes new files; a
    :class:`ConfigError` naming the path and the problem otherwise, before anything trains."""
    path = Path(str(output_dir)).expanduser()
    problem = _unusable_folder(path)
    if problem:
        raise ConfigError(f"output_dir={path}: {problem}; give a folder this process can create and write")
    return path


def _unusable_folder(path: Path) -> str | None:
    try:
        if path.exists() and not path.is_dir():
            return "is a file, not a folder"
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a parent that is a file, no permission, a read-only or pseudo file system
        return f"cannot be created ({err.strerror or err})"
    # A nameless file (O_TMPFILE) proves the folder takes new files (a read-only mount, a full
    # quota, no permission) without a name that a folder synchroniser could list and then miss.
    try:
        fd = os.open(path, os.O_TMPFILE | os.O_WRONLY, 0o600)
    except AttributeError:  # no O_TMPFILE on this platform
        fd = None
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return f"is not writable ({err.strerror or err})"
        fd = None  # a file system without O_TMPFILE: ask the kernel instead
    if fd is not None:
        os.close(fd)
    elif not os.access(path, os.W_OK | os.X_OK):
        return "is not writable (permission denied or a read-only file system)"
    return None


def check_trainer(cfg: DictConfig) -> None:
    check_threads(cfg.get("threads"))
    t = cfg.trainer
    if not (t.max_epochs >= 1 or (t.max_epochs == -1 and t.max_steps > 0)):
        raise ConfigError(
            f"trainer.max_epochs must be an integer >= 1 (or -1 with trainer.max_steps > 0), got {t.max_epochs}"
        )
    if t.accelerator not in ("cpu", "gpu", "cuda", "mps", "auto"):
        raise ConfigError(
            f"trainer.accelerator must be one of cpu, gpu, cuda, mps, auto; got {t.accelerator!r}"
        )


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
