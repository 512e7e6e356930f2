"""Per-epoch energy of training, validation and testing, logged and written to disk.

A thin callback, in the shape of Lightning's ``ThroughputMonitor``: the hooks decide *when* a window
opens and closes; :mod:`~lightning_green.callbacks.monitor_settings` checks the arguments and builds
the meter, :mod:`~lightning_green.callbacks.recorder` does the rest, without Lightning.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_deprecation, rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from lightning_green.callbacks.fit_forecast import ForecastSchedule, last_epoch
from lightning_green.callbacks.forecast import Forecast
from lightning_green.callbacks.monitor_settings import MonitorSettings
from lightning_green.callbacks.placement import default_output_dir, own_gpus
from lightning_green.callbacks.publish import publish
from lightning_green.callbacks.recorder import EnergyRecorder, forecast_metrics
from lightning_green.carbon import IntensityProvider
from lightning_green.carbon.co2e import DEFAULT_CARBON_INTENSITY, DEFAULT_PUE
from lightning_green.energy import Meter, Reading
from lightning_green.energy.baseline import IdleBaseline
from lightning_green.energy.estimate import DEFAULT_WATTS_PER_CORE
from lightning_green.energy.rapl import DEFAULT_ROOT
from lightning_green.ledger import PREDICT, SANITY, TEST, TRAIN, VAL, Exporter
from lightning_green.records import EnergySummary


class EnergyMonitor(Callback):
    r"""Measure the energy of each train epoch, validation run and test run.

    Each window is measured by a meter (see :func:`lightning_green.energy.make_meter`): GPU energy
    counters through NVML (or Zeus), CPU packages and DRAM through RAPL, and, on machines with no
    counter, an estimate from process CPU time (labelled ``estimated:cpu-time``). Devices are
    synchronised at window edges. Validation inside ``fit`` is measured on its own and is *not*
    part of the train epoch it interrupts. Slow counters (an NVML energy read takes about 4 ms on
    an H200) are read by a background thread and interpolated at the edges, so the training thread
    pays microseconds per edge (``sync_reads=True`` reads them at the edges instead).

    Logged through the Trainer's loggers and into ``trainer.callback_metrics``:

    - ``energy/train_epoch_j``: energy of the train epoch that just ended, in joules (validation excluded).
    - ``time/train_epoch_s``: its duration, in seconds (validation excluded).
    - ``power/train_avg_w``: its average power, in watts (``train_epoch_j / train_epoch_s``).
    - ``energy/val_epoch_j``: energy of the validation run that just ended, in joules.
    - ``energy/test_j``: energy of the test run, in joules.
    - ``energy/total_j``: energy of the run so far, in joules: every closed window (sanity check,
      train, validation, test) plus, when logged at validation, the training of the epoch so far;
      continued across checkpoint resumes. Set-up outside the windows is not counted.
    - ``energy/total_kwh``: the same in kilowatt-hours.
    - ``energy/co2e_g``: grams of CO2-equivalent: the sum over windows of ``kWh x pue x`` the grid
      intensity in force when the window closed (see ``carbon_intensity``).
    - ``carbon/intensity_g_per_kwh``: that intensity, in gCO2e per kWh.
    - ``energy/forecast_fit_j``: the predicted energy of the whole fit, in joules, logged after
      each train epoch and once inside the first epoch (or every ``forecast_every_n_steps``
      batches): energy so far + training energy per batch measured after a warm-up of
      ``forecast_warmup_steps`` batches x batches left (from ``max_epochs``, ``max_steps``,
      ``limit_train_batches``) + energy per validation run x validation runs left (see
      :mod:`lightning_green.callbacks.forecast`). Not logged when the fit has no end.
    - ``energy/forecast_fit_low_j``, ``energy/forecast_fit_high_j``: the forecast with the lowest
      and highest per-batch rate measured since warm-up, in joules.
    - ``energy/complete``: 1 if every counter was read for the whole window, else 0.
    - ``energy/train_epoch_dynamic_j``, ``energy/total_dynamic_j``: the same energies above the
      devices' idle baseline (energy - idle watts x seconds), in joules: what model choices
      change, while the total is what the bill and the carbon are. Logged while a baseline applies
      (see ``baseline_s``); an ``estimated:cpu-time`` figure is dynamic already and is not reduced.

    Written by global rank zero to ``output_dir``:

    - ``energy.jsonl``: one :class:`~lightning_green.records.WindowRecord` per window (run id,
      stage, epoch, global step, start/end time, seconds, joules per domain and device, source per
      domain, complete or not, interrupted by what), one unbuffered append as each window ends (a
      kill loses nothing written), fsynced in the background every 2 s and at the end (a power cut
      loses at most those seconds).
    - ``energy_summary.json``: totals by stage, sources and assumptions, the forecast, why the fit
      stopped (``stopped_by``, ``ended_by``), rewritten atomically after the first window, then at
      most every 30 s, on an exception (``"finished": false``) and at teardown.

    Under DDP every rank measures its own GPU, one process per node reads the node-wide CPU/DRAM
    counters, and rank zero writes the merged records: nothing is counted twice.

    On a shared node (concurrent Ray Tune trials, a packed cluster node, two trials on one GPU) a
    node-wide counter measures everyone on it. With ``attribution="auto"`` (the default) each job
    is charged its share of the device's busy time in the window (CPU packages and DRAM: the job's
    CPU time over the node's busy CPU time; GPUs: per-process utilisation), so concurrent runs
    never claim more than the node used; a job alone on a quiet node still gets (nearly) the whole
    device. Every figure above is then the job's; records keep the device's figure beside it
    (``node_j``, each domain's ``node_joules``, ``share`` and ``attribution``).

    Args:
        backend: ``"auto"`` (default), ``"zeus"``, ``"nvml"``, ``"rapl"`` or ``"estimate"``.
        output_dir: Where records go. Default: the logger's log dir, else ``./lightning_green_logs``.
        carbon_intensity: Grid carbon intensity: gCO2e/kWh, a place of the packaged table (a country
            ``"DE"``, a grid region ``"US-CA"``, a cloud region ``"aws:eu-west-1"``) or a live
            :class:`~lightning_green.carbon.IntensityProvider`. Default ``"WORLD"``: 475,
            the IEA's 2019 world average. Records and the summary say which value and source.
        pue: Power usage effectiveness of the facility, >= 1 (default 1.0: the devices alone).
        watts_per_core: Watts per busy core for the CPU-time estimate (default 12, Green Algorithms).
        rapl_root: The powercap sysfs tree to read (default ``/sys/class/powercap``).
        log: Log the metrics through the Trainer (records are written either way).
        sync_reads: Read GPU and RAPL counters at each window edge on the training thread.
        forecast_warmup_steps: Training batches at the start of a fit left out of the forecast's
            rate (at most a quarter of an epoch).
        forecast_every_n_steps: Also forecast every this many batches (``None``: once in the
            first epoch, then at each epoch end).
        meter: A meter to read instead of one built from ``backend`` (your own counter; the
            monitor does not close it).
        baseline_s: Seconds of idle measurement at set-up, before training, with the devices
            synchronised, giving each measured device's idle power (default 2; 0 turns static /
            dynamic energy off). Skipped when only estimates are read. A warning is given when
            the device looked busy (another process on the GPU, CPU load).
        idle_w: Idle watts per channel to use as is instead of measuring, e.g. ``{"gpu:0": 80.0}``.
        carbon_live: A live provider by name: ``"uk"`` or ``"uk:13"`` (GB, Carbon Intensity API, no
            key), ``"electricitymaps"`` or ``"electricitymaps:DE"`` (``$ELECTRICITYMAPS_API_KEY``).
            Offline or failing, the table value of ``carbon_intensity``'s place is used, and said.
        carbon_live_url: The live API's root URL (a proxy, a mirror, a test server).
        attribution: How node-wide counters are charged: ``"auto"`` (default: the job's share
            of each shared device where it can be told, else the whole device, said in the
            records), ``"job"`` (the job's share, an error where it cannot be told), ``"device"``
            (the whole device: for a machine this job owns whole). See
            :mod:`lightning_green.energy.attribution`.
        exporters: Where each closed window and the final summary also go, on global rank zero
            (see :class:`lightning_green.ledger.Exporter`); a failing one warns once and training
            goes on.
        carbon_intensity_g_per_kwh: Deprecated name of ``carbon_intensity`` (a number).

    Raises:
        ValueError: On an unknown backend, a negative, NaN or infinite carbon intensity, a PUE
            below 1, a non-positive ``watts_per_core``, a boolean where a number belongs.
        lightning_green.energy.MeterUnavailableError: In ``setup`` when an explicitly named
            backend cannot work on this machine.

    Example::

        >>> import tempfile
        >>> from lightning import Trainer
        >>> from lightning_green import EnergyMonitor
        >>> from lightning_green.data import DigitsDataModule
        >>> from lightning_green.models import LitClassifier, SimpleCNN
        >>> monitor = EnergyMonitor(output_dir=tempfile.mkdtemp())
        >>> trainer = Trainer(max_epochs=2, callbacks=[monitor], logger=False, enable_progress_bar=False,
        ...                   enable_checkpointing=False, enable_model_summary=False)
        >>> trainer.fit(LitClassifier(SimpleCNN()), datamodule=DigitsDataModule())
        >>> float(trainer.callback_metrics["energy/total_j"]) == monitor.summary()["total_j"] > 0
        True
    """

    def __init__(
        self,
        backend: str = "auto",
        output_dir: str | os.PathLike[str] | None = None,
        carbon_intensity: float | str | IntensityProvider = DEFAULT_CARBON_INTENSITY,
        pue: float = DEFAULT_PUE,
        watts_per_core: float = DEFAULT_WATTS_PER_CORE,
        rapl_root: str | os.PathLike[str] = DEFAULT_ROOT,
        log: bool = True,
        sync_reads: bool = False,
        forecast_warmup_steps: int = 10,
        forecast_every_n_steps: int | None = None,
        meter: Meter | None = None,
        baseline_s: float = 2.0,
        idle_w: dict[str, float] | None = None,
        carbon_live: str | None = None,
        carbon_live_url: str | None = None,
        carbon_intensity_g_per_kwh: float | None = None,
        attribution: str = "auto",
        exporters: list[Exporter] | None = None,
    ) -> None:
        #: The arguments, checked (see :class:`~lightning_green.callbacks.monitor_settings.MonitorSettings`).
        self.settings = MonitorSettings.check(
            backend=backend,
            output_dir=output_dir,
            carbon_intensity=carbon_intensity,
            pue=pue,
            watts_per_core=watts_per_core,
            rapl_root=rapl_root,
            log=log,
            sync_reads=sync_reads,
            forecast_warmup_steps=forecast_warmup_steps,
            forecast_every_n_steps=forecast_every_n_steps,
            meter=meter,
            baseline_s=baseline_s,
            idle_w=idle_w,
            carbon_live=carbon_live,
            carbon_live_url=carbon_live_url,
            attribution=attribution,
            carbon_intensity_g_per_kwh=carbon_intensity_g_per_kwh,
            deprecated=rank_zero_deprecation,
        )
        self.carbon = self.settings.carbon
        self._key_dir = None if output_dir is None else str(output_dir)
        #: The windows and where their figures go (see :mod:`lightning_green.callbacks.recorder`).
        self.recorder = EnergyRecorder(self.settings, list(exporters or []), rank_zero_warn)
        #: The run's totals, records and checkpoint state (see :mod:`lightning_green.ledger`).
        self.ledger = self.recorder.ledger
        #: Where each closed window and the final summary also go (the recorder's list).
        self.exporters = self.recorder.exporters
        self._fits = 0
        self._epoch_val_j = 0.0
        self._stage: str | None = None
        self._new_fit_state()

    def _new_fit_state(self) -> None:
        self.recorder.new_fit()
        s = self.settings
        self._schedule = ForecastSchedule(s.forecast_warmup_steps, s.forecast_every_n_steps)

    @classmethod
    def of(cls, trainer: pl.Trainer, who: str = "this callback") -> EnergyMonitor:
        """The Trainer's EnergyMonitor: the one way other callbacks and tools read a run's energy
        (:meth:`spent_j`, :attr:`forecast`, :meth:`summary`, :meth:`note_stop`, :attr:`carbon`,
        :attr:`run_id`, :attr:`output_dir`, :attr:`meter`).

        Raises:
            MisconfigurationException: If the Trainer has none (the message names ``who``).
        """
        monitor = next((c for c in trainer.callbacks if isinstance(c, cls)), None)
        if monitor is None:
            raise MisconfigurationException(
                f"{who} reads an EnergyMonitor: add one, Trainer(callbacks=[EnergyMonitor(), ...])"
            )
        return monitor

    @property
    @override
    def state_key(self) -> str:
        # Two monitors in one Trainer write to two folders and keep two states (Lightning refuses
        # two callbacks with one key); a monitor without an output_dir keeps the class name.
        if self._key_dir is None:
            return type(self).__qualname__
        return self._generate_state_key(output_dir=self._key_dir)

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # A resumed run usually writes to a new folder (a new Hydra run dir): its key differs from
        # the checkpoint's. With one monitor's state in the checkpoint, that state is this run's.
        states = checkpoint.get("callbacks", {})
        if self.state_key in states:
            return  # Lightning hands it to load_state_dict
        mine = [v for k, v in states.items() if isinstance(k, str) and k.startswith(type(self).__qualname__)]
        if len(mine) == 1:
            self.load_state_dict(mine[0])

    # ------------------------------------------------------------------ the run's figures
    @property
    def meter(self) -> Meter | None:
        """What reads the energy, between set-up and teardown (else ``None``)."""
        return self.recorder.meter

    @property
    def output_dir(self) -> Path | None:
        """Where the records go (the Trainer's default is known from set-up on global rank zero)."""
        return self.recorder.output_dir

    @property
    def baseline(self) -> IdleBaseline | None:
        """The devices' idle power, given or measured at the first set-up (``None`` before)."""
        return self.recorder.baseline

    @property
    def forecast(self) -> Forecast | None:
        """The latest forecast of the fit's energy (``None`` before there is one)."""
        return self.recorder.forecast

    @property
    def run_id(self) -> str:
        return self.ledger.run_id

    @property
    def total_j(self) -> float:
        """Energy of the closed windows of this run, in joules (see :meth:`spent_j` for open ones)."""
        return self.ledger.totals.j

    @property
    def stopped_by(self) -> str | None:
        return self.ledger.stopped_by

    @property
    def forecast_fit_j(self) -> float | None:
        """The latest forecast of the fit's energy, in joules (``None`` before there is one)."""
        return self.forecast.fit_j if self.forecast is not None else None

    def spent_j(self) -> float:
        """Energy of this run so far, open windows included, in joules (cheap: no device sync).

        Rank-local under DDP until the window closes and the ranks' readings are merged.
        """
        return self.recorder.spent_j()

    def note_stop(self, reason: str) -> None:
        """Record why a callback asked the fit to stop (written to the summary as ``stopped_by``)."""
        self.ledger.note_stop(reason)

    def summary(self) -> EnergySummary:
        """The totals, as written to ``energy_summary.json`` (a typed record; ``summary()["total_j"]`` works too)."""
        return self.recorder.summary()

    # ------------------------------------------------------------------ set-up and the end
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stage = stage
        if stage == "fit":
            if self._fits:
                # A second fit with the same monitor is a new run: its own run_id and totals, never
                # a mix of two fits' epochs. ``previous_run_id`` links them.
                self.ledger.new_run()
                self._new_fit_state()
            self._fits += 1
            self.ledger.ended_by = None
        if self.meter is not None:
            return
        self.carbon.start()  # a live provider's first fetch (bounded by its timeout)
        meter = self.settings.make_meter(
            own_gpus(trainer), measure_node=trainer.local_rank == 0, world_size=trainer.world_size
        )
        writer_dir = (self.output_dir or default_output_dir(trainer)) if trainer.is_global_zero else None
        self.recorder.start(meter, trainer.world_size, writer_dir, self.settings.baseline_s, rank_zero_info)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.meter is None:
            return
        finished = self.ledger.ended_by is None
        self.recorder.end("teardown", finished, self.settings.meter, lambda: _position(trainer))

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """A crash or Ctrl-C: record the open windows as interrupted, rewrite the summary, free the meter.

        Lightning calls no ``teardown`` after an exception, so this is where nothing may be lost.
        """
        reason = f"{type(exception).__name__}: {exception}"[:300]
        self.ledger.ended_by = reason
        if self.meter is None:
            return
        self.recorder.end(reason, False, self.settings.meter, lambda: _position(trainer))

    # ------------------------------------------------------------------ windows
    @property
    def _segments(self) -> dict[str, list[Reading]]:
        return self.recorder.segments

    def _finish(self, trainer: pl.Trainer, stage: str, settle: bool = False) -> Reading | None:
        return self.recorder.finish(
            stage, epoch=trainer.current_epoch, global_step=trainer.global_step, settle=settle
        )

    def _log(self, trainer: pl.Trainer, metrics: dict[str, float], reading: Reading) -> None:
        if self.settings.log:
            publish(trainer, self.recorder.metrics(metrics, reading))

    # ------------------------------------------------------------------ train
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._schedule.start(trainer)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_val_j = 0.0
        self.recorder.begin(TRAIN)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._schedule.batch_done(self.recorder.train_j_now):
            f = self._schedule.update(trainer, self.recorder, mid_epoch=True)
            if f is not None and self.settings.log:
                publish(trainer, forecast_metrics(f))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        reading = self._finish(trainer, TRAIN, settle=last_epoch(trainer))
        if reading is None:
            return
        self.ledger.close_epoch(reading.joules, self._epoch_val_j)
        self._schedule.update(trainer, self.recorder, mid_epoch=False)
        self._log(trainer, self.recorder.train_metrics(reading), reading)

    # ------------------------------------------------------------------ validation
    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.recorder.pause_train()
        self.recorder.begin(SANITY if trainer.sanity_checking else VAL)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stage = SANITY if trainer.sanity_checking else VAL
        reading = self._finish(trainer, stage)
        if reading is None or stage == SANITY:
            return
        self._epoch_val_j += reading.joules
        self._log(trainer, {"energy/val_epoch_j": reading.joules}, reading)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.recorder.resume_train()

    # ------------------------------------------------------------------ test / predict
    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.recorder.begin(TEST)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        reading = self._finish(trainer, TEST, settle=True)
        if reading is not None:
            self._log(trainer, {"energy/test_j": reading.joules}, reading)

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.recorder.begin(PREDICT)

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, PREDICT, settle=True)

    # ------------------------------------------------------------------ checkpoints
    @override
    def state_dict(self) -> dict[str, Any]:
        return self.ledger.state_dict(pending=list(self._segments.get(TRAIN, ())))

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._stage not in (None, "fit"):
            # trainer.test(ckpt_path=...) loads a checkpoint's weights; it does not resume the
            # run whose energy this monitor is counting, so its totals must not roll back.
            return
        self.ledger.load_state_dict(state_dict)


def _position(trainer: pl.Trainer) -> tuple[int, int]:
    return trainer.current_epoch, trainer.global_step
