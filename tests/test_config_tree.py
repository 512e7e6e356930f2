"""The Hydra config tree: every group composes and instantiates; bad values fail with their key."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lightning_green.carbon import lookup
from lightning_green.config import CONF_DIR, MOVED_KEYS, ConfigError, build, check_trainer
from lightning_green.data import DatasetNotFoundError, TorchvisionDataModule
from lightning_green.experiment import build_run

GROUPS = {
    name: sorted(p.stem for p in (CONF_DIR / name).glob("*.yaml"))
    for name in ("model", "data", "trainer", "optimizer", "energy", "logger")
}


def _compose(overrides: list[str], tmp_path: Path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    cfg.output_dir = str(tmp_path)  # ${hydra:runtime.output_dir} is only set under @hydra.main
    return cfg


def write_idx(root: Path, n_train: int = 40, n_test: int = 20) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 255, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + imgs.tobytes()
        )
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


def write_cifar(root: Path, per_batch: int = 10) -> None:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            "data": rng.integers(0, 255, size=(per_batch, 3 * 32 * 32), dtype=np.uint8),
            "labels": rng.integers(0, 10, size=per_batch).tolist(),
        }
        (d / name).write_bytes(pickle.dumps(batch))
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


@pytest.mark.parametrize("model", GROUPS["model"])
def test_every_model_composes_and_runs_forward(model: str, tmp_path: Path):
    cfg = _compose([f"model={model}"], tmp_path)
    dm = build("data", cfg.data)
    net = build(
        "model", cfg.model, in_channels=dm.in_channels, image_size=dm.image_size, num_classes=dm.num_classes
    )
    out = net(torch.zeros(2, dm.in_channels, dm.image_size, dm.image_size))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("group", ["trainer", "optimizer", "energy", "logger"])
def test_every_choice_of_other_groups_composes(group: str, tmp_path: Path):
    for choice in GROUPS[group]:
        cfg = _compose([f"{group}={choice}"], tmp_path)
        assert cfg[group] is not None


def test_default_build_run_and_shapes(tmp_path: Path):
    run = build_run(_compose([], tmp_path))
    assert run.flops_per_sample > 0
    assert run.trainer.max_epochs == 20


def test_digits_and_synthetic_datamodules(tmp_path: Path):
    for data in ("digits", "synthetic"):
        dm = build("data", _compose([f"data={data}"], tmp_path).data)
        dm.setup("fit")
        x, y = next(iter(dm.train_dataloader()))
        assert x.shape[1:] == (1, 8, 8) and y.dtype == torch.long


def test_digits_split_is_deterministic(tmp_path: Path):
    a = build("data", _compose(["seed=3"], tmp_path).data)
    b = build("data", _compose(["seed=3"], tmp_path).data)
    a.setup(), b.setup()
    assert torch.equal(a.test_set.tensors[0], b.test_set.tensors[0])


@pytest.mark.parametrize(("name", "sub"), [("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw")])
def test_mnist_family_through_real_torchvision_loader(name: str, sub: str, tmp_path: Path):
    write_idx(tmp_path / "data" / sub)
    cfg = _compose([f"data={name}", f"data.data_dir={tmp_path / 'data'}", "data.batch_size=8"], tmp_path)
    dm = build("data", cfg.data)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 28, 28) and y.dtype == torch.long
    assert len(dm.val_set) == 4 and len(dm.train_set) == 36 and len(dm.test_set) == 20


def test_cifar10_through_real_torchvision_loader(tmp_path: Path, monkeypatch):
    import torchvision

    write_cifar(tmp_path / "data")
    # Our files are tiny, so the loader's md5 check of the official archive cannot pass; the
    # unpickling, reshaping and transforms are torchvision's own.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    dm = TorchvisionDataModule("cifar10", data_dir=tmp_path / "data", batch_size=5)
    dm.setup()
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (5, 3, 32, 32) and len(dm.test_set) == 10


def test_missing_dataset_says_where_it_looked(tmp_path: Path):
    dm = TorchvisionDataModule("mnist", data_dir=tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match=r"nowhere/MNIST/raw.*data.download=true"):
        dm.setup()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.conv_layers=-1", r"model\.conv_layers must be an integer >= 1"),
        ("model.activation=tanh", r"model\.activation must be one of relu, none"),
        ("trainer.max_epochs=0", r"trainer\.max_epochs must be an integer >= 1"),
        ("optimizer.beta1=1.5", r"optimizer\.beta1 must be a finite number in \(0, 1\)"),
        ("energy.backend=watts", r"energy\.backend must be one of auto, zeus, nvml, rapl, estimate"),
        ("threads=0", r"threads must be null \(PyTorch's default\) or an integer >= 1"),
        ("energy.pue=0.5", r"energy\.pue must be a finite number >= 1"),
        ("data.batch_size=0", r"data\.batch_size must be an integer >= 1"),
        # NaN, infinity and out-of-range numbers, in every numeric field the tree hands on
        ("energy.pue=nan", r"energy\.pue must be a finite number >= 1"),
        ("energy.carbon_intensity=inf", r"energy\.carbon_intensity must be a finite number"),
        ("energy.carbon_intensity=Atlantis", r"energy\.carbon_intensity must be gCO2e/kWh .*got 'Atlantis'"),
        ("energy.carbon_live=wind", r"energy\.carbon_live must be null, uk, uk:<GB region id 1-17>"),
        ("energy.watts_per_core=inf", r"energy\.watts_per_core must be a finite number > 0"),
        ("optimizer.lr=inf", r"optimizer\.lr must be a finite number > 0"),
        ("energy.baseline_s=-1", r"energy\.baseline_s must be a finite number >= 0"),
        # the callbacks' own keys (conf/callbacks/), checked also while the callback is off
        ("callbacks.energy_budget.max_j=nan", r"callbacks\.energy_budget\.max_j must be a finite number > 0"),
        ("callbacks.energy_budget.max_j=inf", r"callbacks\.energy_budget\.max_j must be a finite number > 0"),
        ("callbacks.energy_budget.max_j=true", r"callbacks\.energy_budget\.max_j must be a finite number > 0, got True"),
        ("callbacks.energy_budget.max_co2e_g=-1", r"callbacks\.energy_budget\.max_co2e_g must be a finite number > 0"),
        ("callbacks.energy_budget.check=later", r"callbacks\.energy_budget\.check must be one of spent, forecast"),
        ("callbacks.energy_budget.on_exceed=panic", r"callbacks\.energy_budget\.on_exceed must be one of stop, warn"),
        ("callbacks.energy_budget.check_every_n_steps=0", r"callbacks\.energy_budget\.check_every_n_steps must be an integer >= 1"),
        ("callbacks.energy_efficient_stopping.min_gain_per_kj=-1",
         r"callbacks\.energy_efficient_stopping\.min_gain_per_kj must be a finite number >= 0"),
        ("callbacks.energy_efficient_stopping.min_gain_per_kj=nan",
         r"callbacks\.energy_efficient_stopping\.min_gain_per_kj must be a finite number >= 0"),
        ("callbacks.energy_efficient_stopping.mode=up", r"callbacks\.energy_efficient_stopping\.mode must be one of max, min"),
        ("callbacks.energy_efficient_stopping.patience=true",
         r"callbacks\.energy_efficient_stopping\.patience must be an integer >= 1, got True"),
        ("callbacks.layer_profiler._enabled_=yes", r"callbacks\.layer_profiler\._enabled_ must be true or false; got 'yes'"),
        ("energy.carbon_intensty=DE", r"energy\.carbon_intensty is not a setting: did you mean energy\.carbon_intensity\?"),
    ],
)  # fmt: skip
def test_invalid_values_fail_before_training_naming_the_key(override: str, message: str, tmp_path: Path):
    with pytest.raises(ConfigError, match=message):
        build_run(_compose([override], tmp_path))
    assert not (tmp_path / "energy.jsonl").exists()


def test_wrong_type_fails_at_composition_naming_the_key(tmp_path: Path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=r"model\.conv_layers"):
        _compose(["model.conv_layers=abc"], tmp_path)


def test_check_trainer_allows_max_steps_only_with_an_endless_epoch_count(tmp_path: Path):
    assert check_trainer(_compose(["trainer.max_epochs=-1", "trainer.max_steps=10"], tmp_path)) is None
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs must be an integer >= 1 \(or -1 with"):
        check_trainer(_compose(["trainer.max_epochs=-1", "trainer.max_steps=-1"], tmp_path))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], {"EnergyMonitor", "ModelCheckpoint"}),
        (["callbacks.layer_profiler._enabled_=true"], {"EnergyMonitor", "ModelCheckpoint", "LayerEnergyProfiler"}),
        (["energy=profile"], {"EnergyMonitor", "ModelCheckpoint", "LayerEnergyProfiler"}),  # a preset of it
        (["callbacks.energy_budget.max_j=5", "callbacks.energy_efficient_stopping.min_gain_per_kj=2"],
         {"EnergyMonitor", "ModelCheckpoint", "EnergyBudget", "EnergyEfficientStopping"}),
        (["callbacks.energy_budget.max_co2e_g=0.5"], {"EnergyMonitor", "ModelCheckpoint", "EnergyBudget"}),
        (["callbacks.early_stopping._enabled_=true", "callbacks.model_checkpoint._enabled_=false"],
         {"EnergyMonitor", "EarlyStopping", "ModelCheckpoint"}),  # Lightning's own default checkpointing
        (["trainer.enable_progress_bar=true"], {"EnergyMonitor", "ModelCheckpoint", "EnergyProgressBar"}),
    ],
)  # fmt: skip
def test_callbacks_come_from_the_callbacks_group(overrides: list[str], expected: set[str], tmp_path: Path):
    trainer = build_run(_compose(overrides, tmp_path)).trainer
    ours = {type(c).__name__ for c in trainer.callbacks} & {
        "EnergyMonitor", "ModelCheckpoint", "LayerEnergyProfiler", "EnergyBudget", "EnergyEfficientStopping",
        "EarlyStopping", "EnergyProgressBar",
    }  # fmt: skip
    assert ours == expected
    ours_ckpt = [
        c for c in trainer.callbacks if type(c).__name__ == "ModelCheckpoint" and c.monitor == "val_acc"
    ]
    assert bool(ours_ckpt) == ("callbacks.model_checkpoint._enabled_=false" not in overrides)
    monitor = next(c for c in trainer.callbacks if type(c).__name__ == "EnergyMonitor")
    assert str(monitor.output_dir) == str(tmp_path)  # ${output_dir} reached the callback


def test_the_callbacks_take_their_settings_from_their_own_files(tmp_path: Path):
    trainer = build_run(_compose([
        "callbacks.energy_budget.max_kwh=0.002", "callbacks.energy_budget.check=forecast",
        "callbacks.energy_budget.on_exceed=warn", "callbacks.energy_efficient_stopping.min_gain_per_kj=0.5",
        "callbacks.energy_efficient_stopping.monitor=val_loss", "callbacks.energy_efficient_stopping.mode=min",
        "callbacks.energy_efficient_stopping.patience=2",
    ], tmp_path)).trainer  # fmt: skip
    budget = next(c for c in trainer.callbacks if type(c).__name__ == "EnergyBudget")
    assert (budget.max_j, budget.max_kwh, budget.check, budget.on_exceed) == (None, 0.002, "forecast", "warn")
    stop = next(c for c in trainer.callbacks if type(c).__name__ == "EnergyEfficientStopping")
    assert (stop.min_gain_per_kj, stop.monitor, stop.mode, stop.patience) == (0.5, "val_loss", "min", 2)


@pytest.mark.parametrize("old", sorted(MOVED_KEYS))
def test_a_key_that_moved_fails_before_training_naming_its_new_key(old: str, tmp_path: Path):
    value = "true" if old.endswith("profile_layers") else "5000"
    cfg = _compose([f"{old}={value}"], tmp_path)
    with pytest.raises(ConfigError) as err:
        build_run(cfg)
    assert str(err.value) == f"{old} moved: use {MOVED_KEYS[old]}={value}"
    assert not (tmp_path / "energy.jsonl").exists()
    node, _, leaf = MOVED_KEYS[old].rpartition(".")
    assert leaf in OmegaConf.select(_compose([], tmp_path), node)  # the key it names is there


def test_each_setting_is_said_once():
    """The callbacks' settings live in their own files; nothing interpolates a key that moved."""
    text = "\n".join(p.read_text() for p in CONF_DIR.rglob("*.yaml"))
    for old in MOVED_KEYS:
        assert "${" + old + "}" not in text and f"{old}=" not in text, old
    # the output root is written once, in the paths group, and read from there
    assert [p.relative_to(CONF_DIR).as_posix() for p in CONF_DIR.rglob("*.yaml")
            if "lightning_green_runs" in p.read_text()] == ["paths/default.yaml"]  # fmt: skip


@pytest.mark.parametrize(
    ("config", "key", "under"),
    [("config", "run", ""), ("config", "sweep", "multirun/"), ("profile", "run", ""), ("tune", "run", "tune/"),
     ("compare", "run", "compare/")],
)  # fmt: skip
def test_every_commands_folders_are_under_paths_root(config: str, key: str, under: str, tmp_path: Path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        default = compose(config, return_hydra_config=True)
        moved = compose(config, overrides=[f"paths.root={tmp_path}"], return_hydra_config=True)
    assert default.paths.root == "lightning_green_runs"
    assert str(default.hydra[key].dir).startswith(f"lightning_green_runs/{under}")
    assert str(moved.hydra[key].dir).startswith(f"{tmp_path}/{under}")


USER_PROJECT_FILE = """\
# conf/callbacks/energy_monitor.yaml in your own Hydra project (the README's example)
energy_monitor:
  _target_: lightning_green.EnergyMonitor
  output_dir: ${paths.output_dir}
  carbon_intensity: FR
"""


def test_a_users_own_hydra_project_adds_the_callback_from_a_copied_file(tmp_path: Path):
    from hydra.utils import instantiate
    from lightning import Trainer

    from lightning_green.data import DigitsDataModule
    from lightning_green.models import LitClassifier, SimpleCNN
    from lightning_green.records import read_summary

    conf = tmp_path / "conf"
    (conf / "callbacks").mkdir(parents=True)
    (conf / "callbacks" / "energy_monitor.yaml").write_text(USER_PROJECT_FILE)
    (conf / "train.yaml").write_text(
        f"defaults:\n  - callbacks: energy_monitor\n  - _self_\npaths:\n  output_dir: {tmp_path / 'out'}\n"
    )
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train")
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]  # as lightning-hydra-template does
    Trainer(max_epochs=1, callbacks=callbacks, logger=False, enable_progress_bar=False,
            enable_checkpointing=False).fit(LitClassifier(SimpleCNN(conv_layers=1)), datamodule=DigitsDataModule())  # fmt: skip
    summary = read_summary(tmp_path / "out")
    assert summary["carbon"]["place"] == "FR" and summary["carbon"]["method"] == "table"
    assert summary["co2e_g"] == pytest.approx(summary["total_kwh"] * lookup("FR").g_per_kwh)


def test_several_loggers_and_a_missing_logger_package(tmp_path: Path):
    from lightning_green.config import ConfigError, build_loggers

    trainer = build_run(_compose(["logger=[csv,tensorboard]"], tmp_path)).trainer
    assert sorted(type(lg).__name__ for lg in trainer.loggers) == ["CSVLogger", "TensorBoardLogger"]
    assert build_run(_compose(["~logger"], tmp_path)).trainer.loggers == []
    # a logger whose package is missing says what to install, in one line
    node = OmegaConf.create({"mlflow": {"_target_": "helpers.missing_logger.make"}})
    with pytest.raises(
        ConfigError,
        match=r"logger=mlflow needs a package that is not installed: install lightning-green\[mlflow\]",
    ):
        build_loggers(node)
