"""The energy ledger of a run: readings in, records and totals out. No Lightning here.

:class:`~lightning_green.EnergyMonitor` decides *when* a window opens and closes (Lightning's
hooks); the ledger decides *what a closed window adds up to*: it writes the window's record,
adds it to the run's totals by stage, keeps the forecast's inputs, the checkpoint state, and
builds the typed summary (:class:`~lightning_green.records.EnergySummary`). Every per-window
total lives in :class:`Totals`: a new one (say ``gpu_j``) is a field there and a line in
:meth:`Totals.add`, and the summary schema.

Other callbacks and ``experiment.py`` read a run's energy through the monitor's one accessor,
:meth:`EnergyMonitor.of(trainer) <lightning_green.EnergyMonitor.of>`, never by reading its fields.

Example::

    >>> from lightning_green.energy.reading import DomainEnergy, Reading
    >>> from lightning_green.carbon import CarbonModel
    >>> ledger = EnergyLedger(CarbonModel(400.0))
    >>> r = Reading(0.0, 2.0, 2.0, (DomainEnergy("cpu", "process", 30.0, "estimated:cpu-time", dynamic_joules=30.0),))
    >>> _ = ledger.record("train", r, epoch=0, global_step=10)
    >>> ledger.totals.j, ledger.stages["train"].s, round(ledger.totals.co2e_g, 6)
    (30.0, 2.0, 0.003333)
"""

from __future__ import annotations

import math
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from lightning_green.carbon import CarbonModel, Intensity
from lightning_green.carbon.co2e import COVERS
from lightning_green.energy.reading import Reading
from lightning_green.records import SUMMARY_FILE, EnergySummary, RecordWriter, WindowRecord, write_json_atomic

#: The least time between two rewrites of the summary while a run goes on, in seconds.
SUMMARY_EVERY_S = 30.0
TRAIN, VAL, TEST, PREDICT, SANITY = "train", "validate", "test", "predict", "sanity_check"


class Exporter(Protocol):
    """Sends a run's figures somewhere else as they happen (a metrics endpoint, a push gateway).

    ``EnergyMonitor(exporters=[...])`` calls, on global rank zero: :meth:`export_window` after each
    window is recorded (with the ledger, for the running totals), :meth:`export_summary` when the
    run ends (``finished=False`` after a crash), and :meth:`close` when the monitor releases its meter.
    """

    def export_window(self, record: WindowRecord, ledger: EnergyLedger) -> None: ...

    def export_summary(self, summary: EnergySummary, finished: bool) -> None: ...

    def close(self) -> None: ...


@dataclass
class Totals:
    """What closed windows add up to (a stage's, or the run's).

    Attributes:
        j: Joules (the job's, where a shared counter was split).
        s: Seconds in windows.
        dynamic_j: Joules above the idle baseline; ``None`` once a window's is unknown.
        node_j: The devices' whole figures, before a shared counter was split among jobs.
        co2e_g: Grams of CO2e, each window at the intensity in force when it closed.
        windows: Windows closed.
    """

    j: float = 0.0
    s: float = 0.0
    dynamic_j: float | None = 0.0
    node_j: float = 0.0
    co2e_g: float = 0.0
    windows: int = 0

    def add(self, reading: Reading, co2e_g: float) -> None:
        dyn = reading.dynamic_joules
        self.j += reading.joules
        self.s += reading.seconds
        self.dynamic_j = None if dyn is None or self.dynamic_j is None else self.dynamic_j + dyn
        self.node_j += reading.node_joules
        self.co2e_g += co2e_g
        self.windows += 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Totals:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class RunLineage:
    """Which run this is, and whose energy its totals carry (checkpoint resumes, repeated fits)."""

    run_id: str = field(default_factory=new_run_id)
    resumed_from: list[str] = field(default_factory=list)
    previous_run_id: str | None = None


class EnergyLedger:
    """Turns a run's window readings into records on disk and totals in memory.

    Args:
        carbon: Converts joules to kWh and CO2e at the intensity in force.
        writer: Where window records go (``None``: totals only, e.g. a DDP rank other than zero).
        summary_path: Where :meth:`write_summary` writes (``None``: nowhere).
    """

    def __init__(
        self, carbon: CarbonModel, writer: RecordWriter | None = None, summary_path: Path | None = None
    ) -> None:
        self.carbon = carbon
        self.writer = writer
        self.summary_path = summary_path
        self.lineage = RunLineage()
        self._summary_at = -math.inf
        self.summary_error: str | None = None
        self.reset()

    def reset(self) -> None:
        """Start the totals of a new run (a new fit of the same monitor)."""
        self.totals = Totals()
        self.stages: dict[str, Totals] = {}
        self.sources: dict[str, str] = {}
        self.attributions: dict[str, str] = {}
        self.incomplete_windows = 0
        self.interrupted_windows = 0
        self.epoch_j: list[float] = []  # train + its validation, per completed epoch
        self.carried_j = 0.0
        self.stopped_by: str | None = None
        self.ended_by: str | None = None
        #: The latest forecast of the fit's energy, in joules (set by whoever forecasts: the monitor).
        self.forecast_fit_j: float | None = None
        # Forecast inputs: training energy of this fit's closed train windows, validation runs.
        self.fit_train_j = 0.0
        self.val_runs = 0
        self.val_run_j = 0.0

    def new_run(self) -> None:
        """A second fit with the same monitor is a new run: its own id and totals, linked to the last."""
        self.lineage = RunLineage(previous_run_id=self.lineage.run_id)
        self.reset()

    # ------------------------------------------------------------------ windows
    def record(
        self,
        stage: str,
        reading: Reading,
        *,
        epoch: int,
        global_step: int,
        world_size: int = 1,
        interrupted: str | None = None,
    ) -> WindowRecord:
        """Add a closed window to the totals and write its record (if this ledger writes)."""
        intensity = self.carbon.current()  # in force as the window closes
        co2e_g = self.carbon.co2e_g(reading.joules, intensity)
        self.totals.add(reading, co2e_g)
        self.stages.setdefault(stage, Totals()).add(reading, co2e_g)
        if stage == TRAIN:
            self.fit_train_j += reading.joules
        elif stage == VAL:
            self.val_runs += 1
            self.val_run_j += reading.joules
        for domain, source in reading.sources.items():
            if domain != "unknown":
                self.sources[domain] = source
        self.attributions.update(reading.attributions)
        if interrupted is not None:
            self.interrupted_windows += 1
        if not reading.complete:
            self.incomplete_windows += 1
        record = WindowRecord.from_reading(
            reading,
            run_id=self.run_id,
            stage=stage,
            epoch=epoch,
            global_step=global_step,
            world_size=world_size,
        )
        record.co2e_g = co2e_g
        record.carbon = _carbon_fields(intensity)
        if interrupted is not None:
            record.complete = False
            record.interrupted = interrupted
        if self.writer is not None:
            self.writer.write(record)
        return record

    def summary_due(self) -> bool:
        """Whether the summary should be rewritten now: energy.jsonl is the crash-safe record, and
        the summary (derivable from it) is refreshed at most every SUMMARY_EVERY_S, so that short
        epochs do not pay for a second fsync."""
        return time.monotonic() - self._summary_at >= SUMMARY_EVERY_S

    def close_epoch(self, train_j: float, val_j: float) -> None:
        self.epoch_j.append(train_j + val_j)

    # ------------------------------------------------------------------ figures
    @property
    def run_id(self) -> str:
        return self.lineage.run_id

    def spent_j(self, pending_j: float = 0.0) -> float:
        """Energy of the run so far: closed windows plus ``pending_j`` (open ones), in joules."""
        return self.totals.j + pending_j

    def co2e_g(self, pending_j: float = 0.0, intensity: Intensity | None = None) -> float:
        return self.totals.co2e_g + self.carbon.co2e_g(pending_j, intensity)

    def effective_intensity(self) -> float:
        """The energy-weighted intensity of the run: ``co2e / (kWh x PUE)`` (the current one before any energy)."""
        kwh = self.carbon.kwh(self.totals.j) * self.carbon.pue
        return self.totals.co2e_g / kwh if kwh > 0 else self.carbon.intensity_g_per_kwh

    def note_stop(self, reason: str) -> None:
        """Why a callback asked the fit to stop (the first reason is kept)."""
        if self.stopped_by is None:
            self.stopped_by = reason

    def summary(
        self,
        *,
        meter: str | None,
        assumptions: dict[str, Any],
        world_size: int,
        attribution: str,
        baseline: dict[str, Any] | None,
        forecast: dict[str, Any] | None,
    ) -> EnergySummary:
        """The run's totals as the typed record written to ``energy_summary.json``."""
        records_lost = self.writer is not None and bool(self.writer.pending)
        has_baseline = baseline is not None
        lineage = self.lineage
        return EnergySummary(
            run_id=lineage.run_id,
            resumed_from=list(lineage.resumed_from),
            previous_run_id=lineage.previous_run_id,
            carried_over_j=self.carried_j,
            host=socket.gethostname(),
            world_size=world_size,
            meter=meter,
            assumptions=assumptions,
            total_j=self.totals.j,
            total_node_j=self.totals.node_j,
            attribution=attribution,
            attributions=dict(self.attributions),
            total_kwh=self.carbon.kwh(self.totals.j),
            co2e_g=self.totals.co2e_g,
            carbon_intensity_g_per_kwh=self.effective_intensity(),
            carbon={**self.carbon.current().to_dict(), "covers": COVERS},
            pue=self.carbon.pue,
            stage_j={k: t.j for k, t in self.stages.items()},
            stage_s={k: t.s for k, t in self.stages.items()},
            idle_baseline=baseline,
            total_dynamic_j=self.totals.dynamic_j if has_baseline else None,
            stage_dynamic_j={k: t.dynamic_j for k, t in self.stages.items()} if has_baseline else {},
            dynamic_covers=(
                "energy above the idle baseline (energy - idle watts x seconds, per device); "
                "estimated:cpu-time figures are dynamic already and are not reduced"
                if has_baseline
                else "no idle baseline (baseline_s=0 and no idle_w): dynamic energy not computed"
            ),
            sources=dict(self.sources),
            windows=self.totals.windows,
            incomplete_windows=self.incomplete_windows,
            interrupted_windows=self.interrupted_windows,
            records_unwritten=len(self.writer.pending) if self.writer is not None else 0,
            complete=self.incomplete_windows == 0 and self.interrupted_windows == 0 and not records_lost,
            epochs=len(self.epoch_j),
            forecast_fit_j=forecast["fit_j"] if forecast else None,
            forecast=forecast,
            ended_by=self.ended_by,
            stopped_by=self.stopped_by,
            total_covers="sum of the measured windows (sanity check, train epochs, validation, test, predict)"
            + (
                f" of this run and of the run(s) it resumed from ({', '.join(lineage.resumed_from)})"
                if lineage.resumed_from
                else ""
            ),
        )

    def write_summary(self, summary: EnergySummary | None = None, finished: bool = False) -> None:
        """Rewrite ``energy_summary.json`` atomically; a failure keeps the last good one (and is kept
        in :attr:`summary_error` for the caller to warn about once)."""
        self._summary_at = time.monotonic()
        if self.summary_path is None or summary is None:
            return
        try:
            write_json_atomic(self.summary_path, {**summary.to_dict(), "finished": finished})
        except (OSError, ValueError) as err:
            self.summary_error = f"cannot rewrite {SUMMARY_FILE} ({err}); the last good one stays"

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, pending: list[Reading]) -> dict[str, Any]:
        """What a checkpoint carries; ``pending``: segments of a train window still open (a checkpoint
        saved after validation but before the train epoch closes must carry that epoch's energy)."""
        train = Totals(**asdict(self.stages.get(TRAIN, Totals())))
        total = Totals(**asdict(self.totals))
        for r in pending:
            co2e = self.carbon.co2e_g(r.joules)
            train.add(r, co2e)
            total.add(r, co2e)
        stages = {**self.stages, TRAIN: train} if pending else dict(self.stages)
        return {
            "run_id": self.run_id,
            "resumed_from": list(self.lineage.resumed_from),
            "totals": asdict(total),
            "stages": {k: asdict(t) for k, t in stages.items()},
            "sources": dict(self.sources),
            "incomplete_windows": self.incomplete_windows,
            "epoch_j": list(self.epoch_j),
            # Read by checkpoints' older readers and by people: the headline figures by name.
            "total_j": total.j,
            "total_dynamic_j": total.dynamic_j,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Carry a checkpoint's run: its energy is in this run's totals from now on."""
        old = state.get("run_id")
        lineage = [*state.get("resumed_from", []), *([old] if old else [])]
        self.lineage.resumed_from = [r for r in lineage if r != self.run_id]
        if "totals" in state:
            self.totals = Totals.from_dict(state["totals"])
            self.stages = {k: Totals.from_dict(v) for k, v in state["stages"].items()}
        else:  # a checkpoint with the headline figures only (no ``totals``): the totals rebuilt from them
            self.totals = Totals(
                j=float(state["total_j"]),
                s=sum(state["stage_s"].values()),
                dynamic_j=state.get("total_dynamic_j"),
                node_j=float(state.get("total_node_j", state["total_j"])),
                co2e_g=float(state.get("total_co2e_g", self.carbon.co2e_g(float(state["total_j"])))),
                windows=int(state["windows"]),
            )
            self.stages = {
                k: Totals(j=float(j), s=float(state["stage_s"].get(k, 0.0)), dynamic_j=None)
                for k, j in state["stage_j"].items()
            }
        self.carried_j = self.totals.j
        self.sources = dict(state["sources"])
        self.incomplete_windows = int(state["incomplete_windows"])
        self.epoch_j = list(state["epoch_j"])


def _carbon_fields(intensity: Intensity) -> dict[str, Any]:
    return {k: getattr(intensity, k) for k in ("g_per_kwh", "place", "method", "at")}
