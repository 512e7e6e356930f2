"""Per-epoch energy of training, validation and testing, logged and written to disk.

The hooks decide *when* a window opens and closes; :mod:`lightning_green.ledger` keeps what the
windows add up to.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_deprecation, rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from lightning_green._checks import check_bool, check_int, check_number
from lightning_green.callbacks.fit_forecast import ForecastSchedule, last_epoch
from lightning_green.callbacks.forecast import Forecast
from lightning_green.callbacks.placement import default_output_dir, own_gpus
from lightning_green.callbacks.publish import publish
from lightning_green.callbacks.windows import Windows
from lightning_green.energy import DEFAULT_WATTS_PER_CORE, Meter, Reading, make_meter
from lightning_green.energy.attribution import check_attribution
from lightning_green.energy.baseline import IdleBaseline, given_baseline, measure_idle
from lightning_green.energy.carbon import DEFAULT_CARBON_INTENSITY, DEFAULT_PUE, CarbonModel
from lightning_green.energy.grid import IntensityProvider
from lightning_green.energy.rapl import DEFAULT_ROOT
from lightning_green.energy.select import check_backend
from lightning_green.ledger import PREDICT as _PRED
from lightning_green.ledger import SANITY as _SANITY
from lightning_green.ledger import TEST as _TEST
from lightning_green.ledger import TRAIN as _TRAIN
from lightning_green.ledger import VAL as _VAL
from lightning_green.ledger import EnergyLedger, Exporter
from lightning_green.records import RECORDS_FILE, SUMMARY_FILE, EnergySummary, RecordWriter


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
            :class:`~lightning_green.energy.grid.IntensityProvider`. Default ``"WORLD"``: 475,
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
        check_backend(backend)
        self.attribution = check_attribution(attribution)
        self.baseline_s = check_number("baseline_s", baseline_s, minimum=0.0, unit="seconds")
        self.baseline: IdleBaseline | None = given_baseline(idle_w) if idle_w is not None else None
        if meter is not None and not isinstance(meter, Meter):
            raise ValueError(f"meter must be a lightning_green.energy.Meter or None; got {meter!r}")
        self._user_meter = meter
        self.sync_reads = check_bool("sync_reads", sync_reads)
        self.forecast_warmup_steps = check_int("forecast_warmup_steps", forecast_warmup_steps, 0)
        self.forecast_every_n_steps = (
            None
            if forecast_every_n_steps is None
            else check_int("forecast_every_n_steps", forecast_every_n_steps, 1)
        )
        check_bool("log", log)
        self.watts_per_core = check_number("watts_per_core", watts_per_core, above=0.0, unit="watts")
        if carbon_intensity_g_per_kwh is not None:
            if carbon_intensity != DEFAULT_CARBON_INTENSITY:
                raise ValueError("give carbon_intensity or its old name carbon_intensity_g_per_kwh, not both")
            rank_zero_deprecation("EnergyMonitor(carbon_intensity_g_per_kwh=) is now carbon_intensity=")
            carbon_intensity = carbon_intensity_g_per_kwh
        self.carbon = CarbonModel(carbon_intensity, pue, live=carbon_live, live_url=carbon_live_url)
        self.backend = backend
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self._key_dir = None if output_dir is None else str(output_dir)
        self.rapl_root = rapl_root
        self.log_metrics = log
        #: The run's totals, records and checkpoint state (see :mod:`lightning_green.ledger`).
        self.ledger = EnergyLedger(self.carbon)
        #: Where each closed window and the final summary also go (Prometheus, OpenTelemetry, ...).
        self.exporters: list[Exporter] = list(exporters or [])
        self.forecast: Forecast | None = None
        self.meter: Meter | None = None
        self._windows: Windows | None = None
        self._fits = 0
        self._is_writer = False
        self._world_size = 1
        self._paused_train = False
        self._epoch_val_j = 0.0
        self._stage: str | None = None
        self._new_fit_state()

    def _new_fit_state(self) -> None:
        self.forecast = None
        self._schedule = ForecastSchedule(self.forecast_warmup_steps, self.forecast_every_n_steps)
        self._warned: set[str] = set()
        self._described = ""

    # ------------------------------------------------------------------ the accessor
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
        return self.ledger.spent_j(self._windows.pending_j() if self._windows is not None else 0.0)

    def note_stop(self, reason: str) -> None:
        """Record why a callback asked the fit to stop (written to the summary as ``stopped_by``)."""
        self.ledger.note_stop(reason)

    def summary(self) -> EnergySummary:
        """The totals, as written to ``energy_summary.json`` (a typed record; ``summary()["total_j"]`` works too)."""
        meter = self.meter
        return self.ledger.summary(
            meter=meter.describe() if meter is not None else None,
            assumptions=meter.assumptions if meter is not None else {},
            world_size=self._world_size,
            attribution=self.attribution,
            baseline=self.baseline.to_dict() if self.baseline is not None else None,
            forecast=asdict(self.forecast) if self.forecast is not None else None,
        )

    # ------------------------------------------------------------------ set-up
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
        self._world_size = trainer.world_size
        self.meter = self._user_meter or make_meter(
            self.backend,
            gpu_indices=own_gpus(trainer),
            measure_node=trainer.local_rank == 0,
            watts_per_core=self.watts_per_core,
            rapl_root=self.rapl_root,
            # Under DDP the other ranks may be rank 0's children: each rank counts only itself.
            include_children=trainer.world_size == 1,
            sync_reads=self.sync_reads,
            attribution=self.attribution,
        )
        self._windows = Windows(self.meter, self._meter_failed)
        self._measure_baseline()
        self._is_writer = trainer.is_global_zero
        if self._is_writer:
            if self.output_dir is None:
                self.output_dir = default_output_dir(trainer)
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.ledger.writer = RecordWriter(self.output_dir / RECORDS_FILE)
            self.ledger.summary_path = self.output_dir / SUMMARY_FILE
        description = self.meter.describe()
        # Once per monitor: a later stage (test) says it again only if it changed.
        if description != self._described:
            rank_zero_info(f"lightning-green EnergyMonitor: {description}")
            self._described = description

    def _measure_baseline(self) -> None:
        """Idle power per device, once per monitor, before anything of ours runs on it."""
        if self.baseline is not None or self.baseline_s == 0 or self.meter is None:
            return
        if not any(c.source.startswith("measured") for c in self.meter.channels):
            self.baseline = IdleBaseline(
                {}, "none needed: an estimate counts only the process's own CPU time"
            )
            return
        try:
            self.baseline = measure_idle(self.meter, self.baseline_s)
        except Exception as err:  # no baseline: dynamic energy unknown, training goes on
            self.meter.discard_window("idle_baseline")
            rank_zero_warn(
                f"lightning-green: the idle baseline could not be measured ({err!r}); no dynamic energy"
            )
            self.baseline = IdleBaseline({}, f"failed: {err!r}")
            return
        if self.baseline.busy:
            rank_zero_warn(
                "lightning-green: the devices may not have been idle while the idle baseline was measured ("
                + "; ".join(self.baseline.busy)
                + "), so dynamic energy may be understated; pass idle_w={...} or measure on an idle machine."
            )
        rank_zero_info(
            "lightning-green EnergyMonitor: idle baseline "
            + (", ".join(f"{k} {w:.1f} W" for k, w in self.baseline.watts.items()) or "none")
            + f" ({self.baseline.how})"
        )

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.meter is None:
            return
        self._close_open_windows(trainer, reason="teardown")
        self._write_summary(finished=self.ledger.ended_by is None)
        self._release()

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
        try:
            self._close_open_windows(trainer, reason=reason)
        finally:
            self._write_summary(finished=False)
            self._release()

    def _close_open_windows(self, trainer: pl.Trainer, reason: str) -> None:
        """Record windows still open (or paused) as interrupted records: their energy is not dropped."""
        for stage in list(self._segments):
            self._finish(trainer, stage, interrupted=reason)
        self._paused_train = False

    def _release(self) -> None:
        self.carbon.close()
        if self._is_writer:
            self._export(lambda e: e.close())
        if self.ledger.writer is not None:
            self.ledger.writer.close()
        meter, self.meter, self._windows = self.meter, None, None
        if meter is not None and meter is not self._user_meter:
            try:
                meter.close()
            except Exception as err:  # a meter that fails to close must not hide the real outcome
                rank_zero_warn(f"lightning-green: closing the meter failed ({err!r})")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    # ------------------------------------------------------------------ windows
    @property
    def _segments(self) -> dict[str, list[Reading]]:
        return self._windows.segments if self._windows is not None else {}

    def _begin(self, stage: str) -> None:
        if self._windows is not None:
            self._windows.begin(stage)

    def _meter_failed(self, stage: str, err: Exception) -> None:
        self._warn_once(
            "meter",
            f"lightning-green: the meter failed in the {stage} window ({err!r}); the window is recorded "
            "as incomplete with no figure and training goes on. Further meter failures are not warned about.",
        )

    def _finish(
        self, trainer: pl.Trainer, stage: str, interrupted: str | None = None, settle: bool = False
    ) -> Reading | None:
        """Close window ``stage``, merge ranks, record it; returns the merged reading.

        ``settle``: the last window of a fit (or a test run) waits for the counter sample after
        its end instead of extrapolating to it (background-sampled meters only).
        """
        if self._windows is None:
            return None
        reading = self._windows.finish(stage, self.baseline, self._world_size, settle=settle)
        if reading is not None:
            self._account(trainer, stage, reading, interrupted=interrupted)
        return reading

    def _account(
        self, trainer: pl.Trainer, stage: str, reading: Reading, interrupted: str | None = None
    ) -> None:
        if not reading.complete:
            unread = [d.key for d in reading.domains if not d.complete or d.joules is None]
            self._warn_once(
                "incomplete",
                f"lightning-green: the {stage} window at epoch {trainer.current_epoch} is incomplete "
                f"({unread}: a counter failed, or a shared counter's part could not be told); its record "
                "says complete=false and training goes on. Further incomplete windows are not warned about.",
            )
        record = self.ledger.record(
            stage,
            reading,
            epoch=trainer.current_epoch,
            global_step=trainer.global_step,
            world_size=self._world_size,
            interrupted=interrupted,
        )
        if self._is_writer:
            self._export(lambda e: e.export_window(record, self.ledger))
        if self._is_writer and self.ledger.summary_due():
            self._write_summary(finished=False)

    def _export(self, send: Callable[[Exporter], None]) -> None:
        """Hand a figure to every exporter; a failing one is warned about once and never ends training."""
        for exporter in self.exporters:
            try:
                send(exporter)
            except Exception as err:
                self._warn_once(
                    f"export:{id(exporter)}",
                    f"lightning-green: exporter {type(exporter).__name__} failed ({err!r}); training and the "
                    "records go on. Further failures of it are not warned about.",
                )

    def _write_summary(self, finished: bool) -> None:
        if not (self._is_writer and self.output_dir is not None):
            return
        summary = self.summary()
        if finished or self.ledger.ended_by is not None:
            self._export(lambda e: e.export_summary(summary, finished))
        self.ledger.write_summary(summary, finished=finished)
        if self.ledger.summary_error is not None:
            self._warn_once("summary", f"lightning-green: {self.ledger.summary_error}")

    def _log(self, trainer: pl.Trainer, metrics: dict[str, float], reading: Reading) -> None:
        if not self.log_metrics:
            return
        # The running total includes the training of the epoch so far (paused around validation),
        # so a tool reading it at validation end (Ray's callbacks, EarlyStopping) sees every joule.
        paused = self._segments.get(_TRAIN, ())
        pending = sum(r.joules for r in paused)
        total = self.ledger.spent_j(pending)
        intensity = self.carbon.current()
        metrics = {
            **metrics,
            "energy/total_j": total,
            "energy/total_kwh": self.carbon.kwh(total),
            "energy/co2e_g": self.ledger.co2e_g(pending, intensity),
            "carbon/intensity_g_per_kwh": intensity.g_per_kwh,
            "energy/complete": float(reading.complete),
        }
        dynamic = self.ledger.totals.dynamic_j
        if self.baseline is not None and dynamic is not None:
            metrics["energy/total_dynamic_j"] = dynamic + sum(r.dynamic_joules or 0.0 for r in paused)
        publish(trainer, metrics)

    def _train_j_now(self) -> float:
        if self._windows is None:
            return self.ledger.fit_train_j
        paused = sum(r.joules for r in self._windows.paused(_TRAIN))
        return self.ledger.fit_train_j + paused + self._windows.open_j(_TRAIN)

    # ------------------------------------------------------------------ train
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._schedule.start(trainer)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_val_j = 0.0
        self._begin(_TRAIN)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._schedule.batch_done(self._train_j_now):
            self._update_forecast(trainer, mid_epoch=True)

    def _update_forecast(self, trainer: pl.Trainer, mid_epoch: bool) -> None:
        led = self.ledger
        f = self._schedule.predict(
            trainer,
            spent_j=self.spent_j() if mid_epoch else led.totals.j,
            train_j=self._train_j_now() if mid_epoch else led.fit_train_j,
            val_runs=led.val_runs,
            val_run_j=led.val_run_j,
        )
        if f is None:
            return
        self.forecast = f
        self.ledger.forecast_fit_j = f.fit_j
        if mid_epoch and self.log_metrics:
            publish(trainer, _forecast_metrics(f))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        reading = self._finish(trainer, _TRAIN, settle=last_epoch(trainer))
        if reading is None:
            return
        self.ledger.close_epoch(reading.joules, self._epoch_val_j)
        self._update_forecast(trainer, mid_epoch=False)
        metrics = {
            "energy/train_epoch_j": reading.joules,
            "time/train_epoch_s": reading.seconds,
            "power/train_avg_w": reading.watts,
        }
        if self.baseline is not None and reading.dynamic_joules is not None:
            metrics["energy/train_epoch_dynamic_j"] = reading.dynamic_joules
        if self.forecast is not None:
            metrics.update(_forecast_metrics(self.forecast))
        self._log(trainer, metrics, reading)

    # ------------------------------------------------------------------ validation
    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._windows is not None and self._windows.is_open(_TRAIN):
            self._windows.pause(_TRAIN)
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
        reading = self._finish(trainer, _TEST, settle=True)
        if reading is not None:
            self._log(trainer, {"energy/test_j": reading.joules}, reading)

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._begin(_PRED)

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, _PRED, settle=True)

    # ------------------------------------------------------------------ checkpoints
    @override
    def state_dict(self) -> dict[str, Any]:
        return self.ledger.state_dict(pending=list(self._segments.get(_TRAIN, ())))

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._stage not in (None, "fit"):
            # trainer.test(ckpt_path=...) loads a checkpoint's weights; it does not resume the
            # run whose energy this monitor is counting, so its totals must not roll back.
            return
        self.ledger.load_state_dict(state_dict)


def _forecast_metrics(f: Forecast) -> dict[str, float]:
    return {
        "energy/forecast_fit_j": f.fit_j,
        "energy/forecast_fit_low_j": f.low_j,
        "energy/forecast_fit_high_j": f.high_j,
    }
