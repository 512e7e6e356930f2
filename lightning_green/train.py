"""``lightning-green train``: train one configuration of the Hydra tree with EnergyMonitor on.

Usage::

    lightning-green train                                  # default CNN on digits
    lightning-green train model.conv_layers=4 trainer.max_epochs=3
    lightning-green train -m model.conv_layers=1,2,4       # a multirun
    lightning-green train +experiment=paper_rq2            # the study's 2x2x2 design
    python -m lightning_green.train ...                    # the same
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import hydra
import lightning.pytorch as pl
import torch
from omegaconf import DictConfig

from lightning_green.callbacks import EnergyBudget, EnergyEfficientStopping, EnergyMonitor
from lightning_green.config import (
    CONF_DIR,
    ConfigError,
    build,
    check_trainer,
    config_error,
    friendly_errors,
    to_container,
)
from lightning_green.energy.carbon import JOULES_PER_KWH
from lightning_green.models import LitClassifier, count_params
from lightning_green.records import RunRecord, write_run


@dataclass
class Run:
    """Everything a configuration builds, before any training."""

    trainer: pl.Trainer
    module: LitClassifier
    datamodule: pl.LightningDataModule
    monitor: EnergyMonitor
    flops_per_sample: int


def forward_flops(net: torch.nn.Module, sample: torch.Tensor) -> int:
    """FLOPs of one forward pass on ``sample`` (PyTorch's own counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(sample)
    finally:
        net.train(was_training)
    return int(counter.get_total_flops())


def build_run(cfg: DictConfig, extra_callbacks: list[pl.Callback] | None = None) -> Run:
    """Validate and build datamodule, model, callbacks and Trainer. Raises ConfigError on bad values."""
    check_trainer(cfg)
    dm = build("data", cfg.data)
    net = build(
        "model",
        cfg.model,
        in_channels=dm.in_channels,
        image_size=dm.image_size,
        num_classes=dm.num_classes,
    )
    try:
        module = LitClassifier(net, **to_container(cfg.optimizer))
    except ValueError as err:
        raise config_error("optimizer", err) from err
    e = cfg.energy
    try:
        monitor = EnergyMonitor(
            backend=e.backend,
            output_dir=cfg.output_dir,
            carbon_intensity_g_per_kwh=e.carbon_intensity_g_per_kwh,
            pue=e.pue,
            watts_per_core=e.watts_per_core,
            rapl_root=e.rapl_root,
            sync_reads=e.sync_reads,
            baseline_s=e.baseline_s,
            idle_w=to_container(e.idle_w) if e.idle_w is not None else None,
        )
    except ValueError as err:
        raise config_error("energy", err) from err
    callbacks: list[pl.Callback] = [monitor]
    callbacks += _acting_callbacks(e, monitor)
    if cfg.profile_layers:
        from lightning_green.callbacks.layer_profiler import LayerEnergyProfiler

        callbacks.append(
            build("profiler", cfg.profiler, _target_=LayerEnergyProfiler, output_dir=cfg.output_dir)
        )
    callbacks += extra_callbacks or []
    logger = build("logger", cfg.logger) if cfg.logger else False
    trainer = build(
        "trainer", cfg.trainer, callbacks=callbacks, logger=logger, default_root_dir=cfg.output_dir
    )
    sample = torch.zeros(1, dm.in_channels, dm.image_size, dm.image_size)
    return Run(trainer, module, dm, monitor, forward_flops(net, sample))


#: ``energy.*`` keys of the acting callbacks, and the argument each becomes.
_BUDGET_KEYS = {"budget_j": "max_j", "budget_check": "check", "budget_on_exceed": "on_exceed"}
_STOP_KEYS = {
    "stop_gain_per_kj": "min_gain_per_kj",
    "stop_monitor": "monitor",
    "stop_mode": "mode",
    "stop_patience": "patience",
}


def _acting_callbacks(e: DictConfig, monitor: EnergyMonitor) -> list[pl.Callback]:
    """EnergyBudget / EnergyEfficientStopping from ``energy.budget_*`` / ``energy.stop_*``.

    Every key is checked, set or not, so a typo fails before training; errors name the config key.
    """
    out: list[pl.Callback] = []
    for cls, keys, switch, extra in (
        (EnergyBudget, _BUDGET_KEYS, "budget_j", {"monitor": monitor}),
        (EnergyEfficientStopping, _STOP_KEYS, "stop_gain_per_kj", {"energy_monitor": monitor}),
    ):
        kwargs = {arg: e[key] for key, arg in keys.items()}
        probe = {**kwargs, keys[switch]: 1.0} if e[switch] is None else kwargs
        try:
            built = cls(**probe, **extra)
        except ValueError as err:
            message = str(err)
            for key, arg in keys.items():
                message = message.replace(f"{arg} must", f"energy.{key} must", 1)
            raise ConfigError(message) from None
        if e[switch] is not None:
            out.append(built)
    return out


def run_training(cfg: DictConfig, extra_callbacks: list[pl.Callback] | None = None) -> RunRecord:
    """Train (and test) one configuration; writes ``run.json`` beside the energy records."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    run = build_run(cfg, extra_callbacks)
    t0 = time.monotonic()
    run.trainer.fit(run.module, datamodule=run.datamodule)
    val_acc = _metric(run.trainer, "val_acc")
    fit_j = run.monitor.total_j
    test_acc = None
    if cfg.test:
        results = run.trainer.test(run.module, datamodule=run.datamodule, verbose=False)
        test_acc = float(results[0]["test_acc"]) if results else None
    m = run.monitor
    record = RunRecord(
        run_id=m.run_id,
        overrides=_overrides(),
        choices=_choices(),
        config=to_container(cfg),
        test_acc=test_acc,
        val_acc=val_acc,
        energy_j=fit_j,
        total_j=m.total_j,
        total_kwh=m.carbon.kwh(m.total_j),
        co2e_g=m.carbon.co2e_g(m.total_j),
        seconds=time.monotonic() - t0,
        train_seconds=m.stage_s.get("train", 0.0),
        params=count_params(run.module.net),
        flops_per_sample=run.flops_per_sample,
        sources=dict(m.sources),
        complete=m.incomplete_windows == 0,
        epochs=len(m.epoch_j),
        resumed_from=list(m.resumed_from),
        dynamic_j=_fit_dynamic_j(m) if m.baseline is not None else None,
    )
    if run.trainer.is_global_zero:
        write_run(cfg.output_dir, record)
    return record


def _fit_dynamic_j(m: EnergyMonitor) -> float | None:
    parts = [m.stage_dynamic_j.get(stage, 0.0) for stage in ("train", "validate", "sanity_check")]
    return None if any(p is None for p in parts) else float(sum(parts))  # type: ignore[arg-type]


def _metric(trainer: pl.Trainer, key: str) -> float | None:
    v = trainer.callback_metrics.get(key)
    return float(v) if v is not None else None


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _choices() -> dict[str, str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra/")}


def print_summary(record: RunRecord, output_dir: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="lightning-green run", show_header=False)
    table.add_row("overrides", " ".join(record.overrides) or "(defaults)")
    table.add_row("test accuracy", f"{record.test_acc:.4f}" if record.test_acc is not None else "-")
    table.add_row("training energy", f"{record.energy_j:,.1f} J ({record.energy_j / JOULES_PER_KWH:.3g} kWh)")
    table.add_row("total energy (with test)", f"{record.total_j:,.1f} J, {record.co2e_g:.3g} g CO2e")
    table.add_row("source", ", ".join(f"{d}: {s}" for d, s in record.sources.items()))
    table.add_row("complete", "yes" if record.complete else "NO: a counter failed, see energy.jsonl")
    table.add_row("time", f"{record.seconds:.1f} s ({record.epochs} epochs)")
    table.add_row("params / FLOPs per sample", f"{record.params:,} / {record.flops_per_sample:,}")
    table.add_row("records", output_dir)
    Console().print(table)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
@friendly_errors
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the test accuracy (what a sweeper maximises)."""
    record = run_training(cfg)
    print_summary(record, cfg.output_dir)
    return float(record.test_acc if record.test_acc is not None else record.val_acc or 0.0)


if __name__ == "__main__":
    main()
