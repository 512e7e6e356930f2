"""Structured-config schemas for the Hydra tree in ``conf/``, and building objects from a config.

Each YAML choice extends a schema registered here (``defaults: [cnn_schema]``), so a value of the
wrong type fails at composition with its key named. Range checks live in the constructors; this
module re-raises their errors prefixed with the config group (``model.conv_layers must be ...``),
before any training starts.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from lightning_green._checks import UserInputError
from lightning_green.energy import DEFAULT_WATTS_PER_CORE, MeterUnavailableError
from lightning_green.energy.carbon import DEFAULT_CARBON_INTENSITY, DEFAULT_PUE
from lightning_green.energy.rapl import DEFAULT_ROOT as DEFAULT_RAPL_ROOT

CONF_DIR = Path(__file__).parent / "conf"


class ConfigError(UserInputError):
    """A config value is invalid; the message names its key and the allowed values."""


@dataclass
class CNNSchema:
    _target_: str = "lightning_green.models.SimpleCNN"
    conv_layers: int = 2
    linear_layers: int = 2
    base_channels: int | None = None
    hidden_units: int = 64
    activation: str = "relu"
    batchnorm: bool = True
    pooling: bool = True


@dataclass
class DenseSchema:
    _target_: str = "lightning_green.models.DenseNet"
    hidden_layers: int = 3
    width: int = 256
    shape: str = "linear"
    activation: str = "relu"


@dataclass
class TransformerSchema:
    _target_: str = "lightning_green.models.TransformerClassifier"
    depth: int = 4
    width: int = 64
    heads: int = 4
    patch: int = 0
    dropout: float = 0.0


@dataclass
class TorchvisionModelSchema:
    _target_: str = "lightning_green.models.torchvision_model"
    name: str = "resnet18"


@dataclass
class _DataSchema:
    batch_size: int = 64
    num_workers: int = 0
    seed: int = "${seed}"  # type: ignore[assignment]


@dataclass
class DigitsSchema(_DataSchema):
    _target_: str = "lightning_green.data.DigitsDataModule"
    val_fraction: float = 0.15
    test_fraction: float = 0.15


@dataclass
class TorchvisionDataSchema(_DataSchema):
    _target_: str = "lightning_green.data.TorchvisionDataModule"
    name: str = MISSING
    data_dir: str = "data"
    download: bool = False
    val_fraction: float = 0.1


@dataclass
class SyntheticSchema(_DataSchema):
    _target_: str = "lightning_green.data.SyntheticDataModule"
    samples: int = 1024
    in_channels: int = 1
    image_size: int = 8
    num_classes: int = 10


@dataclass
class TrainerSchema:
    _target_: str = "lightning.pytorch.Trainer"
    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: Any = "32-true"
    max_epochs: int = 5
    max_steps: int = -1
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    val_check_interval: Any = None
    check_val_every_n_epoch: int = 1
    num_sanity_val_steps: int = 2
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    log_every_n_steps: int = 10
    deterministic: bool = False
    enable_progress_bar: bool = False
    enable_model_summary: bool = False


@dataclass
class AdamSchema:
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class EnergySchema:
    backend: str = "auto"
    attribution: str = "auto"
    carbon_intensity: Any = DEFAULT_CARBON_INTENSITY
    carbon_live: str | None = None
    carbon_live_url: str | None = None
    carbon_intensity_g_per_kwh: float | None = None  # deprecated: carbon_intensity
    pue: float = DEFAULT_PUE
    watts_per_core: float = DEFAULT_WATTS_PER_CORE
    rapl_root: str = DEFAULT_RAPL_ROOT
    sync_reads: bool = False
    baseline_s: float = 2.0
    idle_w: Any = None
    budget_j: float | None = None
    budget_check: str = "spent"
    budget_on_exceed: str = "stop"
    stop_gain_per_kj: float | None = None
    stop_monitor: str = "val_acc"
    stop_mode: str = "max"
    stop_patience: int = 3
    profile_layers: bool = False


@dataclass
class ProfilerSchema:
    """LayerEnergyProfiler's settings; ``callbacks/layer_profiler.yaml`` builds it from them."""

    warmup_steps: int = 5
    profile_steps: int = 3
    every_n_steps: int | None = 500
    mode: str = "allocate"
    replay_window_s: float = 2.0
    clock: str = "auto"


@dataclass
class BaseConfig:
    model: Any = MISSING
    data: Any = MISSING
    trainer: Any = MISSING
    optimizer: Any = MISSING
    energy: Any = MISSING
    logger: Any = None
    profiler: Any = MISSING
    callbacks: Any = None
    tune: Any = None
    compare: Any = None
    seed: int = 0
    output_dir: str = MISSING
    test: bool = True
    threads: int | None = None


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
    cs.store(group="energy", name="energy_schema", node=EnergySchema)
    cs.store(group="profiler", name="profiler_schema", node=ProfilerSchema)


register_configs()
# ``${lg.is_set:${energy.budget_j}}``: whether a value is set (not null), to switch a callback on.
OmegaConf.register_new_resolver("lg.is_set", lambda value: value is not None, replace=True)


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


def build_callbacks(node: DictConfig | None) -> list[Any]:
    """Instantiate every enabled callback of the ``callbacks`` group, in order.

    An error names the config key the user sets: ``energy.pue`` when the node interpolates it,
    else ``callbacks.<name>.<argument>``.
    """
    from hydra.utils import instantiate

    out = []
    for name, sub in (node or {}).items():
        if sub is None or not sub.get(ENABLED_KEY, True):
            continue
        raw = OmegaConf.to_container(sub, resolve=False)
        kwargs = {k: v for k, v in OmegaConf.to_container(sub, resolve=True).items() if k != ENABLED_KEY}
        try:
            out.append(instantiate(kwargs, _convert_="all"))
        except Exception as err:
            root = _root_value_error(err)
            message = str(root)
            arg = message.split(" ", 1)[0]
            source = raw.get(arg) if isinstance(raw, dict) else None
            if (
                isinstance(source, str)
                and source.startswith("${")
                and source.endswith("}")
                and ":" not in source
            ):
                key = source[2:-1]
            else:
                key = f"callbacks.{name}.{arg}"
            if isinstance(root, ValueError) and arg in raw:
                raise ConfigError(f"{key}{message[len(arg) :]}") from err
            raise ConfigError(f"callbacks.{name}: {message}") from err
    return out


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
