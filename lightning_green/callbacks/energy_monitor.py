"""Per-epoch energy of training, validation and testing, logged and written to disk.

Monitors the energy of every train epoch, validation run and test run of a Lightning Trainer.
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_green.energy import BACKENDS, DEFAULT_WATTS_PER_CORE, CarbonModel, Meter, Reading, make_meter
from lightning_green.energy.carbon import DEFAULT_INTENSITY_G_PER_KWH, DEFAULT_PUE
from lightning_green.energy.rapl import DEFAULT_ROOT
from lightning_green.energy.reading import DomainEnergy, merge_parallel, merge_readings
from lightning_green.records import (
    RECORDS_FILE,
    SUMMARY_FILE,
    RecordWriter,
    WindowRecord,
    write_json_atomic,
)

_TRAIN, _VAL, _TEST, _PRED, _SANITY = "train", "validate", "test", "predict", "sanity_check"
# Not "./lightning_green": run from a source checkout, that is the package itself.
DEFAULT_OUTPUT_DIR = "lightning_green_logs"
SUMMARY_EVERY_S = 30.0


class EnergyMonitor(Callback):
    r"""Measure the energy of each train epoch, validation run and test run.

    Each window is measured by a meter (see :func:`lightning_green.energy.make_meter`): GPU energy
    counters through Zeus or NVML, CPU packages and DRAM through RAPL, and, on machines with no
    counter, an estimate from process CPU time (labelled ``estimated:cpu-time``). Devices are
    synchronised at window edges. Validation inside ``fit`` is measured on its own and is *not*
    part of the train epoch it interrupts.

    Logged through the Trainer's loggers and into ``trainer.callback_metrics``:

    - ``energy/train_epoch_j``: energy of the train epoch that just ended, in joules (validation excluded).
    - ``time/train_epoch_s``: its duration, in seconds (validation excluded).
    - ``power/train_avg_w``: its average power, in watts (``train_epoch_j / train_epoch_s``).
    - ``energy/val_epoch_j``: energy of the validation run that just ended, in joules.
    - ``energy/test_j``: energy of the test run, in joules.
    - ``energy/total_j``: energy of every window so far (sanity check, train, validation, test),
      in joules, continued across checkpoint resumes. Set-up outside the windows is not counted.
    - ``energy/total_kwh``: the same in kilowatt-hours.
    - ``energy/co2e_g``: grams of CO2-equivalent: ``total_kwh x pue x carbon_intensity_g_per_kwh``.
    - ``energy/forecast_fit_j``: after each train epoch, the predicted energy of the whole fit, in
      joules: energy so far plus the mean energy of the last (up to) three epochs (train and their
      validation) times the epochs still to run (from ``max_epochs``, or ``max_steps`` divided by
      the batches per epoch, whichever ends first). Not logged when the fit has no end.
    - ``energy/complete``: 1 if every counter was read for the whole window, else 0.

    Written by global rank zero to ``output_dir``:

    - ``energy.jsonl``: one :class:`~lightning_green.records.WindowRecord` per window (stage,
      epoch, global step, start/end time, seconds, joules per domain and device, source per domain,
      complete or not), flushed and fsynced as each window ends.
    - ``energy_summary.json``: totals by stage, sources and assumptions, rewritten atomically after
      the first window, then at most every 30 s, and at teardown with ``"finished": true``.

    Under DDP every rank measures its own GPU, one process per node reads the node-wide CPU/DRAM
    counters, and rank zero writes the merged records: nothing is counted twice.

    Args:
        backend: ``"auto"`` (default), ``"zeus"``, ``"nvml"``, ``"rapl"`` or ``"estimate"``.
        output_dir: Where records go. Default: the logger's log dir, else ``./lightning_green_logs``.
        carbon_intensity_g_per_kwh: Grid carbon intensity (default 475, IEA 2019 world average).
        pue: Power usage effectiveness of the facility, >= 1 (default 1.0: the devices alone).
        watts_per_core: Watts per busy core for the CPU-time estimate (default 12, Green Algorithms).
        rapl_root: The powercap sysfs tree to read (default ``/sys/class/powercap``).
        log: Log the metrics through the Trainer (records are written either way).

    Raises:
        ValueError: On an unknown backend, a negative carbon intensity, a PUE below 1, a
            non-positive ``watts_per_core``.
        lightning_green.energy.MeterUnavailableError: In ``setup`` when an explicitly named
            backend cannot work on this machine.

    Example::

        from lightning import Trainer
        from lightning_green import EnergyMonitor
        from lightning_green.data import DigitsDataModule
        from lightning_green.models import LitClassifier, SimpleCNN

        trainer = Trainer(max_epochs=2, callbacks=[EnergyMonitor()])
        trainer.fit(LitClassifier(SimpleCNN()), datamodule=DigitsDataModule())
        print(trainer.callback_metrics["energy/total_j"])
    """

    def __init__(
        self,
        backend: str = "auto",
        output_dir: str | os.PathLike[str] | None = None,
        carbon_intensity_g_per_kwh: float = DEFAULT_INTENSITY_G_PER_KWH,
        pue: float = DEFAULT_PUE,
        watts_per_core: float = DEFAULT_WATTS_PER_CORE,
        rapl_root: str | os.PathLike[str] = DEFAULT_ROOT,
        log: bool = True,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        if not isinstance(watts_per_core, (int, float)) or not watts_per_core > 0:
            raise ValueError(f"watts_per_core must be a positive number of watts, got {watts_per_core!r}")
        self.carbon = CarbonModel(carbon_intensity_g_per_kwh, pue)
        self.backend = backend
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.watts_per_core = float(watts_per_core)
        self.rapl_root = rapl_root
        self.log_metrics = log
        self.run_id = uuid.uuid4().hex[:12]
        self.meter: Meter | None = None
        self._writer: RecordWriter | None = None
        self._is_writer = False
        self._world_size = 1
        self._warned_incomplete = False
        self._reset_totals()
        # Windows in flight: stage -> list of finished segments (train pauses around validation).
        self._segments: dict[str, list[Reading]] = {}
        self._paused_train = False
        self._epoch_val_j = 0.0
        self._summary_at = -math.inf

    def _reset_totals(self) -> None:
        self.total_j = 0.0
        self.stage_j: dict[str, float] = {}
        self.stage_s: dict[str, float] = {}
        self.sources: dict[str, str] = {}
        self.windows = 0
        self.incomplete_windows = 0
        self.epoch_j: list[float] = []  # train + its validation, per completed epoch
        self.forecast_fit_j: float | None = None

    # ------------------------------------------------------------------ set-up
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.meter is not None:
            return
        self._world_size = trainer.world_size
        device = trainer.strategy.root_device
        gpus = (
            [device.index if device.index is not None else torch.cuda.current_device()]
            if device.type == "cuda"
            else []
        )
        self.meter = make_meter(
            self.backend,
            gpu_indices=gpus,
            measure_node=trainer.local_rank == 0,
            watts_per_core=self.watts_per_core,
            rapl_root=self.rapl_root,
            # Under DDP the other ranks may be rank 0's children: each rank counts only itself.
            include_children=trainer.world_size == 1,
        )
        self._is_writer = trainer.is_global_zero
        if self._is_writer:
            if self.output_dir is None:
                self.output_dir = _default_output_dir(trainer)
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._writer = RecordWriter(self.output_dir / RECORDS_FILE)
        rank_zero_info(f"lightning-green EnergyMonitor: {self.meter.describe()}")

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.meter is None:
            return
        # Close windows an exception left open, so their energy is still recorded as incomplete.
        for name in list(self._segments):
            if self.meter.is_open(name):
                self._segments[name].append(self.meter.end_window(name))
        self._segments.clear()
        self._paused_train = False
        self._write_summary(finished=True)
        self.meter.close()
        self.meter = None

    # ------------------------------------------------------------------ windows
    def _begin(self, stage: str) -> None:
        assert self.meter is not None
        self._segments.setdefault(stage, [])
        self.meter.begin_window(stage)

    def _pause(self, stage: str) -> None:
        assert self.meter is not None
        self._segments[stage].append(self.meter.end_window(stage))

    def _finish(self, trainer: pl.Trainer, stage: str) -> Reading | None:
        """Close window ``stage``, merge ranks, record it; returns the merged reading."""
        if self.meter is None or stage not in self._segments:
            return None
        segments = self._segments.pop(stage)
        if self.meter.is_open(stage):
            segments.append(self.meter.end_window(stage))
        local = merge_readings(segments)
        reading = self._gather(trainer, local)
        self._account(trainer, stage, reading)
        return reading

    def _gather(self, trainer: pl.Trainer, local: Reading) -> Reading:
        if (
            self._world_size <= 1
            or not torch.distributed.is_available()
            or not torch.distributed.is_initialized()
        ):
            return local
        gathered: list[Reading | None] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, local)
        per_rank = []
        for rank, r in enumerate(gathered):
            assert r is not None
            domains = tuple(
                DomainEnergy(d.domain, f"rank{rank}/{d.device}", d.joules, d.source, d.complete)
                for d in r.domains
            )
            per_rank.append(Reading(r.start_time, r.end_time, r.seconds, domains, r.assumptions))
        return merge_parallel(per_rank)

    def _account(self, trainer: pl.Trainer, stage: str, reading: Reading) -> None:
        j = reading.joules
        self.total_j += j
        self.stage_j[stage] = self.stage_j.get(stage, 0.0) + j
        self.stage_s[stage] = self.stage_s.get(stage, 0.0) + reading.seconds
        self.windows += 1
        for domain, source in reading.sources.items():
            self.sources[domain] = source
        if not reading.complete:
            self.incomplete_windows += 1
            if not self._warned_incomplete:
                self._warned_incomplete = True
                rank_zero_warn(
                    f"lightning-green: the {stage} window at epoch {trainer.current_epoch} is incomplete "
                    f"(a counter failed: {[d.key for d in reading.domains if not d.complete]}); its record "
                    "says complete=false and training goes on. Further incomplete windows are not warned about."
                )
        if self._is_writer and self._writer is not None:
            self._writer.write(
                WindowRecord.from_reading(
                    reading,
                    run_id=self.run_id,
                    stage=stage,
                    epoch=trainer.current_epoch,
                    global_step=trainer.global_step,
                    world_size=self._world_size,
                )
            )
            # energy.jsonl is the crash-safe record; the summary (derivable from it) is refreshed
            # at most every SUMMARY_EVERY_S so that short epochs do not pay for a second fsync.
            if time.monotonic() - self._summary_at >= SUMMARY_EVERY_S:
                self._write_summary(finished=False)

    def _log(self, trainer: pl.Trainer, metrics: dict[str, float], reading: Reading) -> None:
        if not self.log_metrics:
            return
        metrics = {
            **metrics,
            "energy/total_j": self.total_j,
            "energy/total_kwh": self.carbon.kwh(self.total_j),
            "energy/co2e_g": self.carbon.co2e_g(self.total_j),
            "energy/complete": float(reading.complete),
        }
        # Straight to the loggers (float64, one call each) rather than LightningModule.log, whose
        # per-key bookkeeping cost more than the measurement itself on short epochs.
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        trainer.callback_metrics.update({k: torch.tensor(v, dtype=torch.float64) for k, v in metrics.items()})

    # ------------------------------------------------------------------ train
    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_val_j = 0.0
        self._begin(_TRAIN)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        reading = self._finish(trainer, _TRAIN)
        if reading is None:
            return
        self.epoch_j.append(reading.joules + self._epoch_val_j)
        self.forecast_fit_j = self._forecast(trainer)
        metrics = {
            "energy/train_epoch_j": reading.joules,
            "time/train_epoch_s": reading.seconds,
            "power/train_avg_w": reading.watts,
        }
        if self.forecast_fit_j is not None:
            metrics["energy/forecast_fit_j"] = self.forecast_fit_j
        self._log(trainer, metrics, reading)

    def _forecast(self, trainer: pl.Trainer) -> float | None:
        done = trainer.current_epoch + 1
        remaining: list[float] = []
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            remaining.append(max(0, trainer.max_epochs - done))
        batches = trainer.num_training_batches
        if trainer.max_steps is not None and trainer.max_steps > 0 and batches and math.isfinite(batches):
            left_steps = max(0, trainer.max_steps - trainer.global_step)
            remaining.append(math.ceil(left_steps / batches))
        if not remaining or not self.epoch_j:
            return None
        recent = self.epoch_j[-3:]
        return self.total_j + min(remaining) * (sum(recent) / len(recent))

    # ------------------------------------------------------------------ validation
    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.meter is not None and self.meter.is_open(_TRAIN):
            self._pause(_TRAIN)
            self._paused_train = True
        self._begin(_SANITY if trainer.sanity_checking else _VAL)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stage = _SANITY if trainer.sanity_checking else _VAL
        reading = self._finish(trainer, stage)
        if reading is None or stage == _SANITY:
            return
        self._epoch_val_j += reading.joules
        self._log(trainer, {"energy/val_epoch_j": reading.joules}, reading)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._paused_train:
            self._paused_train = False
            self._begin(_TRAIN)

    # ------------------------------------------------------------------ test / predict
    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._begin(_TEST)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        reading = self._finish(trainer, _TEST)
        if reading is not None:
            self._log(trainer, {"energy/test_j": reading.joules}, reading)

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._begin(_PRED)

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, _PRED)

    # ------------------------------------------------------------------ files and state
    def summary(self) -> dict[str, Any]:
        """The totals, as written to ``energy_summary.json``."""
        meter = self.meter
        return {
            "schema": 1,
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "world_size": self._world_size,
            "meter": meter.describe() if meter is not None else None,
            "assumptions": meter.assumptions if meter is not None else {},
            "total_j": self.total_j,
            "total_kwh": self.carbon.kwh(self.total_j),
            "co2e_g": self.carbon.co2e_g(self.total_j),
            "carbon_intensity_g_per_kwh": self.carbon.intensity_g_per_kwh,
            "pue": self.carbon.pue,
            "stage_j": dict(self.stage_j),
            "stage_s": dict(self.stage_s),
            "sources": dict(self.sources),
            "windows": self.windows,
            "incomplete_windows": self.incomplete_windows,
            "complete": self.incomplete_windows == 0,
            "epochs": len(self.epoch_j),
            "forecast_fit_j": self.forecast_fit_j,
            "total_covers": "sum of the measured windows (sanity check, train epochs, validation, test, predict)",
        }

    def _write_summary(self, finished: bool) -> None:
        if self._is_writer and self.output_dir is not None:
            self._summary_at = time.monotonic()
            write_json_atomic(self.output_dir / SUMMARY_FILE, {**self.summary(), "finished": finished})

    @override
    def state_dict(self) -> dict[str, Any]:
        pending = 0.0
        if _TRAIN in self._segments:
            # A checkpoint saved after validation but before the train epoch closes (monitoring a
            # val metric) must still carry that epoch's training energy.
            pending = sum(r.joules for r in self._segments[_TRAIN])
        return {
            "run_id": self.run_id,
            "total_j": self.total_j + pending,
            "stage_j": {**self.stage_j, _TRAIN: self.stage_j.get(_TRAIN, 0.0) + pending},
            "stage_s": dict(self.stage_s),
            "sources": dict(self.sources),
            "windows": self.windows,
            "incomplete_windows": self.incomplete_windows,
            "epoch_j": list(self.epoch_j),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total_j = float(state_dict["total_j"])
        self.stage_j = dict(state_dict["stage_j"])
        self.stage_s = dict(state_dict["stage_s"])
        self.sources = dict(state_dict["sources"])
        self.windows = int(state_dict["windows"])
        self.incomplete_windows = int(state_dict["incomplete_windows"])
        self.epoch_j = list(state_dict["epoch_j"])


def _default_output_dir(trainer: pl.Trainer) -> Path:
    if trainer.loggers:
        log_dir = getattr(trainer.loggers[0], "log_dir", None)
        if log_dir:
            return Path(log_dir)
    return Path(DEFAULT_OUTPUT_DIR)
