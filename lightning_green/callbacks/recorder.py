"""What EnergyMonitor does with a window, without Lightning: open and close it on the meter, account
for it in the ledger, and publish the figures (records, exporters, the summary, the logged metrics).

:class:`~lightning_green.EnergyMonitor` is a thin layer over it: its hooks say *when* a window
opens and closes, and pass what they read off the Trainer (epoch, step, world size, rank).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from lightning_green.callbacks.forecast import Forecast
from lightning_green.callbacks.monitor_settings import MonitorSettings, measure_baseline
from lightning_green.callbacks.windows import Windows
from lightning_green.energy import Meter, Reading
from lightning_green.energy.baseline import IdleBaseline
from lightning_green.ledger import TRAIN, EnergyLedger, Exporter
from lightning_green.records import RECORDS_FILE, SUMMARY_FILE, EnergySummary, RecordWriter


class EnergyRecorder:
    """The open windows of a run and where their figures go.

    A failing meter, exporter or summary write is warned about once (through ``warn``) and never
    ends training.

    Args:
        settings: The monitor's checked arguments: the carbon model, the attribution, the idle
            baseline given (else it is measured at set-up), the output folder (else the Trainer's
            default, found at set-up).
        exporters: Where each closed window and the final summary also go (from the writer only).
        warn: Warns the user (EnergyMonitor passes Lightning's rank-zero warning).
    """

    def __init__(
        self, settings: MonitorSettings, exporters: list[Exporter], warn: Callable[[str], None]
    ) -> None:
        #: The run's totals, records and checkpoint state.
        self.ledger = EnergyLedger(settings.carbon)
        self.exporters = exporters
        self.attribution = settings.attribution
        self.baseline: IdleBaseline | None = settings.idle_baseline
        self.output_dir: Path | None = settings.output_dir
        self._warn = warn
        self.meter: Meter | None = None
        self.windows: Windows | None = None
        self.world_size = 1
        #: Whether this process writes the records and exports (global rank zero).
        self.is_writer = False
        self.paused_train = False
        self.new_fit()

    def new_fit(self) -> None:
        """A new fit: no forecast yet, and its warnings and the meter said again."""
        #: The latest forecast of the fit's energy (set by whoever forecasts: the monitor).
        self.forecast: Forecast | None = None
        self.warned: set[str] = set()
        self._described = ""

    # ------------------------------------------------------------------ set-up and release
    def start(
        self,
        meter: Meter,
        world_size: int,
        writer_dir: Path | None,
        baseline_s: float,
        info: Callable[[str], None],
    ) -> None:
        """Measure with ``meter`` from now on, in a process of ``world_size``.

        Args:
            writer_dir: Where this process writes the records and exports (global rank zero);
                ``None`` on the other ranks.
            baseline_s: Seconds of idle measurement when no baseline is known yet (once per
                monitor, before anything of the run's runs on the devices); 0: none.
            info: Tells the user the meter and the baseline measured.
        """
        self.meter, self.world_size = meter, world_size
        self.windows = Windows(meter, self._meter_failed)
        if self.baseline is None and baseline_s > 0:
            self.baseline = measure_baseline(meter, baseline_s, self._warn, info)
        self.is_writer = writer_dir is not None
        if writer_dir is not None:
            self.output_dir = writer_dir
            writer_dir.mkdir(parents=True, exist_ok=True)
            self.ledger.writer = RecordWriter(writer_dir / RECORDS_FILE)
            self.ledger.summary_path = writer_dir / SUMMARY_FILE
        description = meter.describe()
        # Once per fit: a later stage (test) says it again only if it changed.
        if description != self._described:
            info(f"lightning-green EnergyMonitor: {description}")
            self._described = description

    def end(
        self, reason: str, finished: bool, keep: Meter | None, position: Callable[[], tuple[int, int]]
    ) -> None:
        """Close the open windows (as interrupted by ``reason``), rewrite the summary, release the
        meter unless it is ``keep``; ``position`` gives the epoch and step the windows close at."""
        try:
            self.close_open(reason, position)
        finally:
            self.write_summary(finished=finished)
            self.release(keep)

    def release(self, keep: Meter | None = None) -> None:
        """Close the exporters, the record writer and the meter (unless it is ``keep``, the user's)."""
        self.ledger.carbon.close()
        if self.is_writer:
            self.export(lambda e: e.close())
        if self.ledger.writer is not None:
            self.ledger.writer.close()
        meter, self.meter, self.windows = self.meter, None, None
        if meter is not None and meter is not keep:
            try:
                meter.close()
            except Exception as err:  # a meter that fails to close must not hide the real outcome
                self._warn(f"lightning-green: closing the meter failed ({err!r})")

    def warn_once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            self._warn(message)

    # ------------------------------------------------------------------ windows
    @property
    def segments(self) -> dict[str, list[Reading]]:
        """Finished segments of the windows not closed yet, by stage."""
        return self.windows.segments if self.windows is not None else {}

    def begin(self, stage: str) -> None:
        if self.windows is not None:
            self.windows.begin(stage)

    def pause_train(self) -> None:
        """Pause the train window around a validation run (which is measured on its own)."""
        if self.windows is not None and self.windows.is_open(TRAIN):
            self.windows.pause(TRAIN)
            self.paused_train = True

    def resume_train(self) -> None:
        if self.paused_train:
            self.paused_train = False
            self.begin(TRAIN)

    def finish(
        self,
        stage: str,
        *,
        epoch: int,
        global_step: int,
        interrupted: str | None = None,
        settle: bool = False,
    ) -> Reading | None:
        """Close window ``stage``, merge ranks, record it; returns the merged reading.

        ``settle``: the last window of a fit (or a test run) waits for the counter sample after
        its end instead of extrapolating to it (background-sampled meters only).
        """
        if self.windows is None:
            return None
        reading = self.windows.finish(stage, self.baseline, self.world_size, settle=settle)
        if reading is not None:
            self._account(stage, reading, epoch, global_step, interrupted)
        return reading

    def close_open(self, reason: str, position: Callable[[], tuple[int, int]]) -> None:
        """Record windows still open (or paused) as interrupted records: their energy is not dropped.

        ``position`` gives the epoch and step they close at; it is asked only when a window is open.
        """
        for stage in list(self.segments):
            epoch, global_step = position()
            self.finish(stage, epoch=epoch, global_step=global_step, interrupted=reason)
        self.paused_train = False

    def train_j_now(self) -> float:
        """Training energy of this fit so far, the open train window included, in joules."""
        if self.windows is None:
            return self.ledger.fit_train_j
        paused = sum(r.joules for r in self.windows.paused(TRAIN))
        return self.ledger.fit_train_j + paused + self.windows.open_j(TRAIN)

    def spent_j(self) -> float:
        """Energy of the run so far, open windows included, in joules."""
        return self.ledger.spent_j(self.windows.pending_j() if self.windows is not None else 0.0)

    def _meter_failed(self, stage: str, err: Exception) -> None:
        self.warn_once(
            "meter",
            f"lightning-green: the meter failed in the {stage} window ({err!r}); the window is recorded "
            "as incomplete with no figure and training goes on. Further meter failures are not warned about.",
        )

    def _account(
        self, stage: str, reading: Reading, epoch: int, global_step: int, interrupted: str | None
    ) -> None:
        if not reading.complete:
            unread = [d.key for d in reading.domains if not d.complete or d.joules is None]
            self.warn_once(
                "incomplete",
                f"lightning-green: the {stage} window at epoch {epoch} is incomplete "
                f"({unread}: a counter failed, or a shared counter's part could not be told); its record "
                "says complete=false and training goes on. Further incomplete windows are not warned about.",
            )
        record = self.ledger.record(
            stage,
            reading,
            epoch=epoch,
            global_step=global_step,
            world_size=self.world_size,
            interrupted=interrupted,
        )
        if self.is_writer:
            self.export(lambda e: e.export_window(record, self.ledger))
        if self.is_writer and self.ledger.summary_due():
            self.write_summary(finished=False)

    # ------------------------------------------------------------------ publishing
    def train_metrics(self, reading: Reading) -> dict[str, float]:
        """What a closed train epoch logs besides the running figures (see :meth:`metrics`)."""
        out = {
            "energy/train_epoch_j": reading.joules,
            "time/train_epoch_s": reading.seconds,
            "power/train_avg_w": reading.watts,
        }
        if self.baseline is not None and reading.dynamic_joules is not None:
            out["energy/train_epoch_dynamic_j"] = reading.dynamic_joules
        if self.forecast is not None:
            out.update(forecast_metrics(self.forecast))
        return out

    def metrics(self, metrics: dict[str, float], reading: Reading) -> dict[str, float]:
        """``metrics`` and the run's running figures, as logged when window ``reading`` closes.

        The running total includes the training of the epoch so far (paused around validation),
        so a tool reading it at validation end (Ray's callbacks, EarlyStopping) sees every joule.
        """
        paused = self.segments.get(TRAIN, ())
        pending = sum(r.joules for r in paused)
        total = self.ledger.spent_j(pending)
        carbon = self.ledger.carbon
        intensity = carbon.current()
        out = {
            **metrics,
            "energy/total_j": total,
            "energy/total_kwh": carbon.kwh(total),
            "energy/co2e_g": self.ledger.co2e_g(pending, intensity),
            "carbon/intensity_g_per_kwh": intensity.g_per_kwh,
            "energy/complete": float(reading.complete),
        }
        dynamic = self.ledger.totals.dynamic_j
        if self.baseline is not None and dynamic is not None:
            out["energy/total_dynamic_j"] = dynamic + sum(r.dynamic_joules or 0.0 for r in paused)
        return out

    def summary(self) -> EnergySummary:
        """The totals, as written to ``energy_summary.json``."""
        meter = self.meter
        return self.ledger.summary(
            meter=meter.describe() if meter is not None else None,
            assumptions=meter.assumptions if meter is not None else {},
            world_size=self.world_size,
            attribution=self.attribution,
            baseline=self.baseline.to_dict() if self.baseline is not None else None,
            forecast=asdict(self.forecast) if self.forecast is not None else None,
        )

    def write_summary(self, finished: bool) -> None:
        """Rewrite ``energy_summary.json`` (the writer only); the final one also goes to the exporters."""
        if not (self.is_writer and self.output_dir is not None):
            return
        summary = self.summary()
        if finished or self.ledger.ended_by is not None:
            self.export(lambda e: e.export_summary(summary, finished))
        self.ledger.write_summary(summary, finished=finished)
        if self.ledger.summary_error is not None:
            self.warn_once("summary", f"lightning-green: {self.ledger.summary_error}")

    def export(self, send: Callable[[Exporter], None]) -> None:
        """Hand a figure to every exporter; a failing one is warned about once and never ends training."""
        for exporter in self.exporters:
            try:
                send(exporter)
            except Exception as err:
                self.warn_once(
                    f"export:{id(exporter)}",
                    f"lightning-green: exporter {type(exporter).__name__} failed ({err!r}); training and the "
                    "records go on. Further failures of it are not warned about.",
                )


def forecast_metrics(f: Forecast) -> dict[str, float]:
    """The logged keys of a forecast of the fit's energy."""
    return {
        "energy/forecast_fit_j": f.fit_j,
        "energy/forecast_fit_low_j": f.low_j,
        "energy/forecast_fit_high_j": f.high_j,
    }
