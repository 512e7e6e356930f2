"""Per-epoch energy of training, validation and testing, logged and written to disk.

Monitors the energy of every train epoch, validation run and test run of a Lightning Trainer.
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_deprecation, rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_green._checks import check_bool, check_int, check_number
from lightning_green.callbacks.forecast import FitForecaster, Forecast
from lightning_green.callbacks.placement import default_output_dir, own_gpus
from lightning_green.callbacks.publish import publish
from lightning_green.energy import DEFAULT_WATTS_PER_CORE, Meter, Reading, make_meter
from lightning_green.energy.attribution import check_attribution
from lightning_green.energy.baseline import IdleBaseline, apply_baseline, given_baseline, measure_idle
from lightning_green.energy.carbon import COVERS, DEFAULT_CARBON_INTENSITY, DEFAULT_PUE, CarbonModel
from lightning_green.energy.grid import IntensityProvider
from lightning_green.energy.rapl import DEFAULT_ROOT
from lightning_green.energy.reading import DomainEnergy, merge_parallel, merge_readings
from lightning_green.energy.select import check_backend
from lightning_green.records import (
    RECORDS_FILE,
    SUMMARY_FILE,
    RecordWriter,
    WindowRecord,
    write_json_atomic,
)

_TRAIN, _VAL, _TEST, _PRED, _SANITY = "train", "validate", "test", "predict", "sanity_check"
SUMMARY_EVERY_S = 30.0


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
        self.rapl_root = rapl_root
        self.log_metrics = log
        self.run_id = uuid.uuid4().hex[:12]
        self.resumed_from: list[str] = []  # run ids whose energy this run's totals carry (checkpoints)
        self.previous_run_id: str | None = None  # the run of this monitor's previous fit
        self._fits = 0
        self.ended_by: str | None = None
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
        self._warned_summary = False
        self._stage: str | None = None

    def _reset_totals(self) -> None:
        self.total_j = 0.0
        self.total_co2e_g = 0.0
        self.stage_j: dict[str, float] = {}
        self.stage_s: dict[str, float] = {}
        self.sources: dict[str, str] = {}
        self.windows = 0
        self.incomplete_windows = 0
        self.epoch_j: list[float] = []  # train + its validation, per completed epoch
        self.interrupted_windows = 0
        self.total_dynamic_j: float | None = 0.0  # None once a window's dynamic energy is unknown
        self.total_node_j = 0.0  # the devices' whole figures over this run's windows (before any split)
        self.stage_dynamic_j: dict[str, float | None] = {}
        self.carried_j = 0.0  # energy carried over from a checkpoint's run(s)
        self.forecast: Forecast | None = None
        self.stopped_by: str | None = None
        self._forecaster = FitForecaster()
        self._batches = 0  # training batches in this fit
        self._batch_offset = 0  # batches of the epochs a resumed fit skipped
        self._warm_at: int | None = None
        self._fit_train_j = 0.0  # training energy of this fit's closed train windows
        self._val_runs = 0
        self._val_run_j = 0.0
        self._failed_stages: set[str] = set()
        self._warned_meter = False
        self._described = ""

    # ------------------------------------------------------------------ set-up
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stage = stage
        if stage == "fit":
            if self._fits:
                # A second fit with the same monitor is a new run: its own run_id and totals, never
                # a mix of two fits' epochs. ``previous_run_id`` links them.
                self.previous_run_id, self.run_id = self.run_id, uuid.uuid4().hex[:12]
                self.resumed_from = []
                self._reset_totals()
            self._fits += 1
            self.ended_by = None
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
        self._measure_baseline()
        self._is_writer = trainer.is_global_zero
        if self._is_writer:
            if self.output_dir is None:
                self.output_dir = default_output_dir(trainer)
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._writer = RecordWriter(self.output_dir / RECORDS_FILE)
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
        self._write_summary(finished=self.ended_by is None)
        self._release()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """A crash or Ctrl-C: record the open windows as interrupted, rewrite the summary, free the meter.

        Lightning calls no ``teardown`` after an exception, so this is where nothing may be lost.
        """
        reason = f"{type(exception).__name__}: {exception}"[:300]
        self.ended_by = reason
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
        self._segments.clear()
        self._paused_train = False

    def _release(self) -> None:
        self.carbon.close()
        if self._writer is not None:
            self._writer.close()
        meter, self.meter = self.meter, None
        if meter is not None and meter is not self._user_meter:
            try:
                meter.close()
            except Exception as err:  # a meter that fails to close must not hide the real outcome
                rank_zero_warn(f"lightning-green: closing the meter failed ({err!r})")

    # ------------------------------------------------------------------ windows
    def _begin(self, stage: str) -> None:
        if self.meter is None:
            return
        self._segments.setdefault(stage, [])
        try:
            self.meter.begin_window(stage)
        except Exception as err:  # a failing meter never ends training: the window is recorded as failed
            self._meter_failed(stage, err)

    def _pause(self, stage: str) -> None:
        assert self.meter is not None
        reading = self._end_segment(stage)
        if reading is not None:
            self._segments[stage].append(reading)

    def _end_segment(self, stage: str, settle: bool = False) -> Reading | None:
        assert self.meter is not None
        if not self.meter.is_open(stage):
            return None
        try:
            return self.meter.end_window(stage, settle=settle)
        except Exception as err:
            self._meter_failed(stage, err)
            return None

    def _meter_failed(self, stage: str, err: Exception) -> None:
        self._failed_stages.add(stage)
        if not self._warned_meter:
            self._warned_meter = True
            rank_zero_warn(
                f"lightning-green: the meter failed in the {stage} window ({err!r}); the window is recorded "
                "as incomplete with no figure and training goes on. Further meter failures are not warned about."
            )
        if self.meter is not None:
            self.meter.discard_window(stage)  # leave no half-open window behind

    def _finish(
        self, trainer: pl.Trainer, stage: str, interrupted: str | None = None, settle: bool = False
    ) -> Reading | None:
        """Close window ``stage``, merge ranks, record it; returns the merged reading.

        ``settle``: the last window of a fit (or a test run) waits for the counter sample after
        its end instead of extrapolating to it (background-sampled meters only).
        """
        if self.meter is None or stage not in self._segments:
            return None
        segments = self._segments.pop(stage)
        last = self._end_segment(stage, settle=settle)
        if last is not None:
            segments.append(last)
        failed = stage in self._failed_stages
        self._failed_stages.discard(stage)
        if failed or not segments:
            # No usable reading: an explicit incomplete window with no figure (never a silent zero).
            now = time.time()
            start = segments[0].start_time if segments else now
            failed_domains = tuple(
                DomainEnergy(c.domain, c.device, None, c.source, complete=False) for c in self.meter.channels
            )
            failed_domains = failed_domains or (DomainEnergy("unknown", "-", None, "failed", False),)
            segments = [*segments, Reading(start, now, 0.0, failed_domains)]
        local = merge_readings(segments)
        if self.baseline is not None:
            local = apply_baseline(local, self.baseline)
        reading = self._gather(trainer, local)
        self._account(trainer, stage, reading, interrupted=interrupted)
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
                DomainEnergy(
                    d.domain, f"rank{rank}/{d.device}", d.joules, d.source, d.complete, d.dynamic_joules
                )
                for d in r.domains
            )
            per_rank.append(Reading(r.start_time, r.end_time, r.seconds, domains, r.assumptions))
        return merge_parallel(per_rank)

    def _account(
        self, trainer: pl.Trainer, stage: str, reading: Reading, interrupted: str | None = None
    ) -> None:
        j = reading.joules
        self.total_j += j
        self.total_node_j += reading.node_joules
        intensity = self.carbon.current()  # in force as the window closes
        co2e_g = self.carbon.co2e_g(j, intensity)
        self.total_co2e_g += co2e_g
        if stage == _TRAIN:
            self._fit_train_j += j
        elif stage == _VAL:
            self._val_runs += 1
            self._val_run_j += j
        self.stage_j[stage] = self.stage_j.get(stage, 0.0) + j
        dyn = reading.dynamic_joules
        prev_dyn = self.stage_dynamic_j.get(stage, 0.0)
        self.stage_dynamic_j[stage] = None if dyn is None or prev_dyn is None else prev_dyn + dyn
        self.total_dynamic_j = (
            None if dyn is None or self.total_dynamic_j is None else self.total_dynamic_j + dyn
        )
        self.stage_s[stage] = self.stage_s.get(stage, 0.0) + reading.seconds
        self.windows += 1
        for domain, source in reading.sources.items():
            if domain != "unknown":
                self.sources[domain] = source
        if interrupted is not None:
            self.interrupted_windows += 1
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
            record = WindowRecord.from_reading(
                reading,
                run_id=self.run_id,
                stage=stage,
                epoch=trainer.current_epoch,
                global_step=trainer.global_step,
                world_size=self._world_size,
            )
            record.co2e_g = co2e_g
            record.carbon = {k: getattr(intensity, k) for k in ("g_per_kwh", "place", "method", "at")}
            if interrupted is not None:
                record.complete = False
                record.interrupted = interrupted
            self._writer.write(record)
            # energy.jsonl is the crash-safe record; the summary (derivable from it) is refreshed
            # at most every SUMMARY_EVERY_S so that short epochs do not pay for a second fsync.
            if time.monotonic() - self._summary_at >= SUMMARY_EVERY_S:
                self._write_summary(finished=False)

    def _log(self, trainer: pl.Trainer, metrics: dict[str, float], reading: Reading) -> None:
        if not self.log_metrics:
            return
        # The running total includes the training of the epoch so far (paused around validation),
        # so a tool reading it at validation end (Ray's callbacks, EarlyStopping) sees every joule.
        pending = self._paused_train_j()
        total = self.total_j + pending
        intensity = self.carbon.current()
        metrics = {
            **metrics,
            "energy/total_j": total,
            "energy/total_kwh": self.carbon.kwh(total),
            "energy/co2e_g": self.total_co2e_g + self.carbon.co2e_g(pending, intensity),
            "carbon/intensity_g_per_kwh": intensity.g_per_kwh,
            "energy/complete": float(reading.complete),
        }
        if self.baseline is not None and self.total_dynamic_j is not None:
            metrics["energy/total_dynamic_j"] = self.total_dynamic_j + sum(
                r.dynamic_joules or 0.0 for r in self._segments.get(_TRAIN, ())
            )
        publish(trainer, metrics)

    # ------------------------------------------------------------------ running figures
    def _paused_train_j(self) -> float:
        return sum(r.joules for r in self._segments.get(_TRAIN, ()))

    def _open_j(self, stage: str) -> float:
        """Energy of the open segment of window ``stage`` so far (0 when closed or unreadable)."""
        if self.meter is None or not self.meter.is_open(stage):
            return 0.0
        try:
            r = self.meter.peek(stage)
        except Exception:
            return 0.0
        return r.joules if r is not None else 0.0

    @property
    def forecast_fit_j(self) -> float | None:
        """The latest forecast of the fit's energy, in joules (``None`` before there is one)."""
        return self.forecast.fit_j if self.forecast is not None else None

    def spent_j(self) -> float:
        """Energy of this run so far, open windows included, in joules (cheap: no device sync).

        Rank-local under DDP until the window closes and the ranks' readings are merged.
        """
        pending = sum(r.joules for segs in self._segments.values() for r in segs)
        return self.total_j + pending + sum(self._open_j(stage) for stage in list(self._segments))

    def note_stop(self, reason: str) -> None:
        """Record why a callback asked the fit to stop (written to the summary as ``stopped_by``)."""
        self.stopped_by = reason

    # ------------------------------------------------------------------ train
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        nb = trainer.num_training_batches
        finite = isinstance(nb, int) or (isinstance(nb, float) and math.isfinite(nb))
        self._batch_offset = trainer.current_epoch * int(nb) if finite else 0
        w = self.forecast_warmup_steps
        self._warm_at = min(w, max(1, int(nb) // 4)) if finite else w
        if self._warm_at == 0:
            self._forecaster.warm(self._batch_offset, 0.0)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_val_j = 0.0
        self._begin(_TRAIN)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batches += 1
        if not self._forecaster.is_warm:
            if self._batches >= (self._warm_at or 0):
                self._forecaster.warm(self._batch_offset + self._batches, self._train_j_now())
            return
        n = self.forecast_every_n_steps
        due = (
            (self._batches - self._warm_at) % n == 0
            if n is not None
            else self._batches == 2 * self._warm_at  # one forecast inside the first epoch
        )
        if due:
            self._update_forecast(trainer, mid_epoch=True)

    def _train_j_now(self) -> float:
        return self._fit_train_j + self._paused_train_j() + self._open_j(_TRAIN)

    def _update_forecast(self, trainer: pl.Trainer, mid_epoch: bool) -> None:
        f = self._forecaster.predict(
            spent_j=self.spent_j() if mid_epoch else self.total_j,
            batches=self._batch_offset + self._batches,
            train_j=self._train_j_now() if mid_epoch else self._fit_train_j,
            total_batches=_total_batches(trainer),
            val_j_per_run=self._val_run_j / self._val_runs if self._val_runs else None,
            val_runs_left=self._val_runs_left(trainer),
            val_batches_per_run=_val_batches(trainer),
        )
        if f is None:
            return
        self.forecast = f
        if mid_epoch and self.log_metrics:
            publish(
                trainer,
                {
                    "energy/forecast_fit_j": f.fit_j,
                    "energy/forecast_fit_low_j": f.low_j,
                    "energy/forecast_fit_high_j": f.high_j,
                },
            )

    def _val_runs_left(self, trainer: pl.Trainer) -> float:
        nb = trainer.num_training_batches
        total = _total_batches(trainer)
        if not _val_batches(trainer) or not math.isfinite(total) or not nb or not math.isfinite(nb):
            return 0.0
        per_epoch = max(1, int(nb) // max(1, int(trainer.val_check_batch or nb))) / (
            trainer.check_val_every_n_epoch or 1
        )
        done = self._val_runs + (self._batch_offset / nb) * per_epoch
        return max(0.0, per_epoch * total / nb - done)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        reading = self._finish(trainer, _TRAIN, settle=_last_epoch(trainer))
        if reading is None:
            return
        self.epoch_j.append(reading.joules + self._epoch_val_j)
        self._update_forecast(trainer, mid_epoch=False)
        metrics = {
            "energy/train_epoch_j": reading.joules,
            "time/train_epoch_s": reading.seconds,
            "power/train_avg_w": reading.watts,
        }
        if self.baseline is not None and reading.dynamic_joules is not None:
            metrics["energy/train_epoch_dynamic_j"] = reading.dynamic_joules
        if self.forecast is not None:
            metrics["energy/forecast_fit_j"] = self.forecast.fit_j
            metrics["energy/forecast_fit_low_j"] = self.forecast.low_j
            metrics["energy/forecast_fit_high_j"] = self.forecast.high_j
        self._log(trainer, metrics, reading)

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
        reading = self._finish(trainer, _TEST, settle=True)
        if reading is not None:
            self._log(trainer, {"energy/test_j": reading.joules}, reading)

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._begin(_PRED)

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, _PRED, settle=True)

    # ------------------------------------------------------------------ files and state
    def summary(self) -> dict[str, Any]:
        """The totals, as written to ``energy_summary.json``."""
        meter = self.meter
        writer = self._writer
        records_lost = writer is not None and bool(writer.pending)
        return {
            "schema": 1,
            "run_id": self.run_id,
            "resumed_from": list(self.resumed_from),
            "previous_run_id": self.previous_run_id,
            "carried_over_j": self.carried_j,
            "host": socket.gethostname(),
            "world_size": self._world_size,
            "meter": meter.describe() if meter is not None else None,
            "assumptions": meter.assumptions if meter is not None else {},
            "total_j": self.total_j,
            "total_node_j": self.total_node_j,
            "attribution": self.attribution,
            "node_covers": "the devices' whole figures over this run's windows, before shared counters "
            "were split among jobs (equal to total_j where nothing was split)",
            "total_kwh": self.carbon.kwh(self.total_j),
            "co2e_g": self.total_co2e_g,
            "carbon_intensity_g_per_kwh": self._effective_intensity(),
            "carbon": {**self.carbon.current().to_dict(), "covers": COVERS},
            "pue": self.carbon.pue,
            "stage_j": dict(self.stage_j),
            "stage_s": dict(self.stage_s),
            "idle_baseline": self.baseline.to_dict() if self.baseline is not None else None,
            "total_dynamic_j": self.total_dynamic_j if self.baseline is not None else None,
            "stage_dynamic_j": dict(self.stage_dynamic_j) if self.baseline is not None else {},
            "dynamic_covers": (
                "energy above the idle baseline (energy - idle watts x seconds, per device); "
                "estimated:cpu-time figures are dynamic already and are not reduced"
                if self.baseline is not None
                else "no idle baseline (baseline_s=0 and no idle_w): dynamic energy not computed"
            ),
            "sources": dict(self.sources),
            "windows": self.windows,
            "incomplete_windows": self.incomplete_windows,
            "interrupted_windows": self.interrupted_windows,
            "records_unwritten": len(writer.pending) if writer is not None else 0,
            "complete": self.incomplete_windows == 0 and self.interrupted_windows == 0 and not records_lost,
            "epochs": len(self.epoch_j),
            "forecast_fit_j": self.forecast_fit_j,
            "forecast": asdict(self.forecast) if self.forecast is not None else None,
            "ended_by": self.ended_by,
            "stopped_by": self.stopped_by,
            "total_covers": "sum of the measured windows (sanity check, train epochs, validation, test, predict)"
            + (
                f" of this run and of the run(s) it resumed from ({', '.join(self.resumed_from)})"
                if self.resumed_from
                else ""
            ),
        }

    def _effective_intensity(self) -> float:
        """The energy-weighted intensity of the run: ``co2e / (kWh x PUE)`` (the current one before any energy)."""
        kwh = self.carbon.kwh(self.total_j) * self.carbon.pue
        return self.total_co2e_g / kwh if kwh > 0 else self.carbon.intensity_g_per_kwh

    def _write_summary(self, finished: bool) -> None:
        if not (self._is_writer and self.output_dir is not None):
            return
        self._summary_at = time.monotonic()
        try:
            write_json_atomic(self.output_dir / SUMMARY_FILE, {**self.summary(), "finished": finished})
        except (OSError, ValueError) as err:  # the last good summary stays; energy.jsonl has the records
            if not self._warned_summary:
                self._warned_summary = True
                rank_zero_warn(
                    f"lightning-green: cannot rewrite {SUMMARY_FILE} ({err}); the last good one stays"
                )

    @override
    def state_dict(self) -> dict[str, Any]:
        pending = 0.0
        if _TRAIN in self._segments:
            # A checkpoint saved after validation but before the train epoch closes (monitoring a
            # val metric) must still carry that epoch's training energy.
            pending = sum(r.joules for r in self._segments[_TRAIN])
        return {
            "run_id": self.run_id,
            "resumed_from": list(self.resumed_from),
            "total_j": self.total_j + pending,
            "total_co2e_g": self.total_co2e_g + self.carbon.co2e_g(pending),
            "stage_j": {**self.stage_j, _TRAIN: self.stage_j.get(_TRAIN, 0.0) + pending},
            "stage_s": dict(self.stage_s),
            "sources": dict(self.sources),
            "windows": self.windows,
            "incomplete_windows": self.incomplete_windows,
            "epoch_j": list(self.epoch_j),
            "total_dynamic_j": self.total_dynamic_j,
            "total_node_j": self.total_node_j + sum(r.node_joules for r in self._segments.get(_TRAIN, ())),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._stage not in (None, "fit"):
            # trainer.test(ckpt_path=...) loads a checkpoint's weights; it does not resume the
            # run whose energy this monitor is counting, so its totals must not roll back.
            return
        old = state_dict.get("run_id")
        lineage = [*state_dict.get("resumed_from", []), *([old] if old else [])]
        self.resumed_from = [r for r in lineage if r != self.run_id]
        self.carried_j = float(state_dict["total_j"])
        self.total_j = float(state_dict["total_j"])
        # Checkpoints from before per-window carbon carry no CO2e: their energy at today's intensity.
        self.total_co2e_g = float(state_dict.get("total_co2e_g", self.carbon.co2e_g(self.total_j)))
        self.stage_j = dict(state_dict["stage_j"])
        self.stage_s = dict(state_dict["stage_s"])
        self.sources = dict(state_dict["sources"])
        self.windows = int(state_dict["windows"])
        self.incomplete_windows = int(state_dict["incomplete_windows"])
        self.epoch_j = list(state_dict["epoch_j"])
        carried_dynamic = state_dict.get("total_dynamic_j")
        self.total_dynamic_j = float(carried_dynamic) if carried_dynamic is not None else None
        self.total_node_j = float(state_dict.get("total_node_j", self.total_j))


def _total_batches(trainer: pl.Trainer) -> float:
    """Training batches the whole fit runs (``inf`` when it has no known end)."""
    nb = trainer.num_training_batches
    out: list[float] = []
    if trainer.max_epochs is not None and trainer.max_epochs >= 0 and nb and math.isfinite(nb):
        out.append(trainer.max_epochs * nb)
    if trainer.max_steps is not None and trainer.max_steps > 0:
        out.append(trainer.max_steps * trainer.accumulate_grad_batches)
    return min(out) if out else math.inf


def _val_batches(trainer: pl.Trainer) -> float:
    n = sum(b for b in trainer.num_val_batches if math.isfinite(b)) if trainer.num_val_batches else 0
    return float(n) if trainer.enable_validation else 0.0


def _last_epoch(trainer: pl.Trainer) -> bool:
    ends = (
        trainer.max_epochs is not None
        and trainer.max_epochs >= 0
        and trainer.current_epoch + 1 >= trainer.max_epochs
    )
    steps = trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step
    return bool(ends or steps or trainer.should_stop)
