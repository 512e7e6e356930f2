"""What a configuration of the Hydra tree builds, and how one run trains: shared by the ``train``
and ``profile`` commands and by the tuner's trials (which import this, not a command module)."""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig

from lightning_green.callbacks import EnergyMonitor
from lightning_green.callbacks.flops import forward_flops
from lightning_green.config import (
    ConfigError,
    build,
    build_callbacks,
    build_loggers,
    check_energy_keys,
    check_output_dir,
    check_trainer,
    config_error,
    to_container,
)
from lightning_green.models import LitClassifier, count_params
from lightning_green.records import EnergySummary, RunRecord, write_run


@dataclass
class Run:
    """Everything a configuration builds, before any training."""

    trainer: pl.Trainer
    module: LitClassifier
    datamodule: pl.LightningDataModule
    monitor: EnergyMonitor
    flops_per_sample: int


def build_run(cfg: DictConfig, extra_callbacks: list[pl.Callback] | None = None) -> Run:
    """Validate and build datamodule, model, callbacks and Trainer. Raises ConfigError on bad values,
    and on an output folder that cannot be made or written (before anything trains)."""
    check_energy_keys(cfg)
    check_trainer(cfg)
    check_output_dir(cfg.output_dir)
    if cfg.get("threads") is not None:
        torch.set_num_threads(int(cfg.threads))
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
    callbacks: list[pl.Callback] = build_callbacks(cfg.get("callbacks"), check_off=CHECK_WHEN_OFF)
    monitor = next((c for c in callbacks if isinstance(c, EnergyMonitor)), None)
    if monitor is None:
        raise ConfigError(
            "callbacks.energy_monitor is needed (lightning-green's records and run.json come from it); "
            "do not switch it off"
        )
    callbacks += extra_callbacks or []
    logger = build_loggers(cfg.logger)
    trainer = build(
        "trainer", cfg.trainer, callbacks=callbacks, logger=logger, default_root_dir=cfg.output_dir
    )
    sample = torch.zeros(1, dm.in_channels, dm.image_size, dm.image_size)
    return Run(trainer, module, dm, monitor, forward_flops(net, sample) or 0)


#: The callbacks that are off while an argument is null (conf/callbacks/), with a stand-in for it:
#: built all the same, so that a wrong value among their other keys
#: (``callbacks.energy_budget.check=later``) fails before training even while they are off.
CHECK_WHEN_OFF = {
    "energy_budget": {"max_j": 1.0},
    "energy_efficient_stopping": {"min_gain_per_kj": 1.0},
}


def run_training(cfg: DictConfig, extra_callbacks: list[pl.Callback] | None = None) -> RunRecord:
    """Train (and test) one configuration; writes ``run.json`` beside the energy records."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    run = build_run(cfg, extra_callbacks)
    warmup_s = warm_process(run)
    load0 = _load_average()
    cpu0 = _cpu_clocks()
    t0 = time.monotonic()
    run.trainer.fit(run.module, datamodule=run.datamodule)
    val_acc = _metric(run.trainer, "val_acc")
    fit = run.monitor.summary()  # the fit's totals, before the test adds to them
    test_acc = None
    if cfg.test:
        # The best checkpoint when one monitors a metric (callbacks.model_checkpoint), else the last weights.
        best = next(
            (c.best_model_path for c in run.trainer.checkpoint_callbacks if c.monitor and c.best_model_path),
            None,
        )
        results = run.trainer.test(run.module, datamodule=run.datamodule, ckpt_path=best, verbose=False)
        test_acc = float(results[0]["test_acc"]) if results else None
    end = run.monitor.summary()
    record = RunRecord(
        run_id=end.run_id,
        overrides=_overrides(),
        choices=_choices(),
        config=to_container(cfg),
        test_acc=test_acc,
        val_acc=val_acc,
        energy_j=fit.total_j,
        total_j=end.total_j,
        total_kwh=end.total_kwh,
        co2e_g=end.co2e_g,
        carbon={**end.carbon, "effective_g_per_kwh": end.carbon_intensity_g_per_kwh, "pue": end.pue},
        seconds=time.monotonic() - t0,
        train_seconds=end.stage_s.get("train", 0.0),
        params=count_params(run.module.net),
        flops_per_sample=run.flops_per_sample,
        sources=end.sources,
        complete=end.complete,
        epochs=end.epochs,
        resumed_from=end.resumed_from,
        dynamic_j=_fit_dynamic_j(fit),
    )
    record.machine = {**machine_state(load0), **other_cpu(cpu0), "process_warmup_s": warmup_s}
    other = record.machine["other_cpu_cores"]
    if other is not None and other > OTHER_CPU_WARN_CORES:
        rank_zero_warn(
            f"lightning-green: other processes kept {other:.2f} CPU core(s) busy on average during this run "
            f"(of {record.machine['cpus']}; ours used {record.machine['own_cpu_cores']:.2f}): CPU figures, "
            "above all the CPU-time estimate, move with that load (threads wait and are descheduled); "
            "compare runs made on a quiet machine with the same `threads`"
        )
    if run.trainer.is_global_zero:
        write_run(cfg.output_dir, record)
    return record


#: Whether this process has run a training step yet (the first pays for first kernels, lazy
#: initialisation and allocator growth; in a Hydra multirun the jobs share the process).
_PROCESS_WARM = False


def warm_process(run: Run, steps: int = 2) -> float:
    """Before the process's first run, a tiny untimed fit of a copy of the model (a sanity check,
    ``steps`` training batches, one validation batch) with no callbacks, outside every window: first
    kernels, lazy initialisation and allocator growth belong to the process, and the first job of a
    multirun is then measured like the others. Returns the seconds spent (0 after the first run, and
    under DDP, where each rank is a process of its own)."""
    global _PROCESS_WARM
    if _PROCESS_WARM or run.trainer.world_size > 1:
        return 0.0
    _PROCESS_WARM = True
    t0 = time.monotonic()
    device = run.trainer.strategy.root_device
    with _quiet_lightning():
        warm = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=[device.index or 0] if device.type == "cuda" else 1,
            max_steps=steps,
            limit_train_batches=steps,
            limit_val_batches=1,
            num_sanity_val_steps=1,
            logger=False,
            callbacks=[],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        warm.fit(copy.deepcopy(run.module), datamodule=copy.deepcopy(run.datamodule))
    return time.monotonic() - t0


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's set-up lines for a warm-up nobody asked to see."""
    import logging

    names = ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _fit_dynamic_j(fit: EnergySummary) -> float | None:
    """The fit's dynamic energy (sanity check, train, validation), ``None`` where any is unknown."""
    stages = [fit.stage_dynamic_j.get(st, 0.0) for st in ("train", "validate", "sanity_check")]
    if fit.idle_baseline is None or any(d is None for d in stages):
        return None
    return float(sum(d or 0.0 for d in stages))


#: Average CPU cores kept busy by other processes above which a run is said to be loaded: a
#: quarter of a core already moved the default run's CPU-time estimate by tens of percent.
OTHER_CPU_WARN_CORES = 0.25


def _cpu_clocks() -> tuple[float, float, float] | None:
    """(wall, node busy CPU seconds, this process tree's CPU seconds), or ``None`` off Linux."""
    from lightning_green.energy.attribution import node_busy_seconds
    from lightning_green.energy.estimate import _process_cpu_seconds

    try:
        return time.monotonic(), node_busy_seconds(), _process_cpu_seconds(True)
    except OSError:
        return None


def other_cpu(start: tuple[float, float, float] | None) -> dict[str, float | None]:
    """CPU cores kept busy on average since ``start`` by this run (``own_cpu_cores``) and by every
    other process on the machine (``other_cpu_cores``: the node's busy time from /proc/stat minus ours)."""
    end = _cpu_clocks()
    if start is None or end is None or end[0] <= start[0]:
        return {"own_cpu_cores": None, "other_cpu_cores": None}
    wall = end[0] - start[0]
    own = (end[2] - start[2]) / wall
    return {"own_cpu_cores": own, "other_cpu_cores": max(0.0, (end[1] - start[1]) / wall - own)}


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):  # not on every platform
        return None


def machine_state(load_start: float | None) -> dict[str, Any]:
    """Where and how the run computed: host, threads, cores, and the 1-minute load average at its
    start and end, with the part of the end load that is not this run's threads (``other_load``)."""
    end = _load_average()
    threads = torch.get_num_threads()
    return {
        "host": socket.gethostname(),
        "threads": threads,
        "cpus": os.cpu_count(),
        "load_avg_start": load_start,
        "load_avg_end": end,
        "other_load": None if end is None else max(0.0, end - threads),
    }


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
