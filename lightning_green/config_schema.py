"""The structured-config schemas of the Hydra tree in ``conf/``: one dataclass per group choice, so
a value of the wrong type fails at composition with its key named (registered by
:func:`lightning_green.config.register_configs`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from lightning_green.carbon.co2e import DEFAULT_CARBON_INTENSITY, DEFAULT_PUE
from lightning_green.energy.estimate import DEFAULT_WATTS_PER_CORE
from lightning_green.energy.rapl import DEFAULT_ROOT as DEFAULT_RAPL_ROOT


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
    """EnergyMonitor's settings (``energy.*``): ``callbacks/energy_monitor.yaml`` hands them on, and
    ``tune`` measures a whole study with them. The node is open (see :func:`check_energy_keys`)."""

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
class PathsSchema:
    """Where the commands write (``conf/paths/default.yaml`` holds the values)."""

    root: str = MISSING


@dataclass
class BaseConfig:
    model: Any = MISSING
    data: Any = MISSING
    trainer: Any = MISSING
    optimizer: Any = MISSING
    paths: Any = MISSING
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
