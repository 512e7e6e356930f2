"""The records: what a window, a layer, a run and a run's totals hold, and the files they go in.

Every record names its ``kind`` and ``schema``; :mod:`lightning_green.records.reader` refuses a
schema it does not know rather than misread it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from lightning_green._checks import UserInputError
from lightning_green.energy.reading import DomainEnergy, Reading

SCHEMA_VERSION = 1
#: Schema versions this reader understands.
SUPPORTED_SCHEMAS = (1,)


class RecordError(UserInputError):
    """A record file holds a value no lightning-green run writes (the message names file, line, field)."""


RECORDS_FILE = "energy.jsonl"
SUMMARY_FILE = "energy_summary.json"

RUN_FILE = "run.json"
#: A tuning study's folder: what was searched (``study.json``), one row per trial (``trials.csv``),
#: the trials no other trial beats on both accuracy and energy (``pareto.csv``).
STUDY_FILE = "study.json"
TRIALS_FILE = "trials.csv"
PARETO_FILE = "pareto.csv"


@dataclass
class WindowRecord:
    """Energy of one window: a train epoch, a validation run, a test run.

    ``energy_j`` is the sum of the domains that were read; ``complete`` is ``False`` when a
    counter failed in the window, in which case ``energy_j`` covers only the domains that worked,
    or when the window was cut short (``interrupted`` says by what; ``energy_j`` is then the
    energy measured up to that moment).
    """

    run_id: str
    stage: str
    epoch: int
    global_step: int
    start_time: float
    end_time: float
    seconds: float
    energy_j: float
    domains: list[dict[str, Any]]
    sources: dict[str, str]
    complete: bool
    assumptions: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1
    #: Why the window ended early (an exception, Ctrl-C); ``None`` for a window that ran to its end.
    interrupted: str | None = None
    #: Energy above the devices' idle baseline, in joules; ``None`` when no baseline applies.
    dynamic_j: float | None = None
    #: Grams of CO2e of this window: kWh x PUE x the intensity in ``carbon`` (``None`` where no
    #: carbon model priced it).
    co2e_g: float | None = None
    #: The grid intensity in force when the window closed: ``g_per_kwh``, ``place``, ``method``, ``at``.
    carbon: dict[str, Any] | None = None
    #: The devices' whole figure where a shared counter was split among jobs (``energy_j`` is this
    #: job's part); ``None`` when nothing was split.
    node_j: float | None = None
    #: How each split domain was attributed (``{"cpu": "attributed:cpu-time-share"}``); empty if none.
    attribution: dict[str, str] = field(default_factory=dict)
    kind: str = "window"
    schema: int = SCHEMA_VERSION

    @classmethod
    def from_reading(
        cls, reading: Reading, *, run_id: str, stage: str, epoch: int, global_step: int, world_size: int = 1
    ) -> WindowRecord:
        return cls(
            run_id=run_id,
            stage=stage,
            epoch=epoch,
            global_step=global_step,
            start_time=reading.start_time,
            end_time=reading.end_time,
            seconds=reading.seconds,
            energy_j=reading.joules,
            domains=[d.to_dict() for d in reading.domains],
            sources=reading.sources,
            complete=reading.complete,
            assumptions=reading.assumptions,
            world_size=world_size,
            dynamic_j=reading.dynamic_joules,
            node_j=reading.node_joules if reading.attributions else None,
            attribution=reading.attributions,
        )

    def reading(self) -> Reading:
        return Reading(
            start_time=self.start_time,
            end_time=self.end_time,
            seconds=self.seconds,
            domains=tuple(DomainEnergy.from_dict(d) for d in self.domains),
            assumptions=self.assumptions,
        )


@dataclass
class EnergySummary:
    """A run's totals, as ``energy_summary.json`` holds them (plus ``finished``).

    Built by :class:`lightning_green.ledger.EnergyLedger`; ``EnergyMonitor.summary()`` returns one.
    Indexing by name (``summary["total_j"]``) reads the field of that name.
    """

    run_id: str
    resumed_from: list[str]
    previous_run_id: str | None
    carried_over_j: float
    host: str
    world_size: int
    meter: str | None
    assumptions: dict[str, Any]
    #: The job's energy: every window's ``energy_j`` (a split counter's part of it), in joules.
    total_j: float
    #: The devices' whole figures over the same windows, before any split among jobs.
    total_node_j: float
    #: ``EnergyMonitor(attribution=...)``; ``attributions`` says how each split domain was split.
    attribution: str
    attributions: dict[str, str]
    total_kwh: float
    co2e_g: float
    carbon_intensity_g_per_kwh: float
    carbon: dict[str, Any]
    pue: float
    stage_j: dict[str, float]
    stage_s: dict[str, float]
    idle_baseline: dict[str, Any] | None
    total_dynamic_j: float | None
    stage_dynamic_j: dict[str, float | None]
    dynamic_covers: str
    sources: dict[str, str]
    windows: int
    incomplete_windows: int
    interrupted_windows: int
    records_unwritten: int
    complete: bool
    epochs: int
    forecast_fit_j: float | None
    forecast: dict[str, Any] | None
    ended_by: str | None
    stopped_by: str | None
    total_covers: str
    node_covers: str = (
        "the devices' whole figures over this run's windows, before shared counters were split among "
        "jobs (equal to total_j where nothing was split)"
    )
    schema: int = SCHEMA_VERSION

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LayerRecord:
    """Energy of one module (``kind="layer"``) or one layer type (``kind="layer_type"``).

    ``joules_per_step`` is the module's own work (its children excluded, so rows add up to the
    step), ``total_j`` the module with its children. ``joules_per_step`` and ``share`` are ``None`` when there is no figure (the profiling window
    measured 0 J, or its counter failed); ``complete`` is then ``False`` and ``note`` says why.
    """

    run_id: str
    kind: str
    name: str
    layer_type: str
    joules_per_step: float | None
    share: float | None
    source: str
    mode: str
    params: int = 0
    flops: int = 0
    forward_s: float = 0.0
    backward_s: float = 0.0
    joules_per_sample: float | None = 0.0
    calls: int = 0
    steps: int = 0
    complete: bool = True
    note: str = ""
    parent: str | None = None  # the enclosing module's name (None: a top-level module)
    depth: int = 1
    total_j: float | None = None  # the module and its children, joules per step
    optimizer_j: float | None = None  # its share of the optimizer step (by its own parameters)
    rank: int = 0  # the rank whose device these figures are (each rank profiles its own)
    world_size: int = 1
    #: What timed the modules: ``process-cpu`` (the energy is CPU time), ``cuda-events``, ``wall``.
    clock: str = ""
    schema: int = SCHEMA_VERSION


#: The record class of each ``kind``.
KINDS = {"window": WindowRecord, "layer": LayerRecord, "layer_type": LayerRecord}


@dataclass
class RunRecord:
    """One training run: what was trained, how it scored, what it cost (``run.json``).

    ``energy_j`` is the training energy (train epochs, validation, sanity check); ``total_j`` adds
    the test run. ``sources`` says per domain whether the figures are measured or estimated.
    """

    run_id: str
    overrides: list[str]
    choices: dict[str, str]
    config: dict[str, Any]
    test_acc: float | None
    val_acc: float | None
    energy_j: float
    total_j: float
    total_kwh: float
    co2e_g: float
    seconds: float
    train_seconds: float
    params: int
    flops_per_sample: int
    sources: dict[str, str]
    complete: bool
    epochs: int
    #: Earlier runs (checkpoints) whose energy this run's totals include.
    resumed_from: list[str] = field(default_factory=list)
    #: Training energy above the devices' idle baseline (``energy_j`` minus idle power x time).
    dynamic_j: float | None = None
    #: Where and how it computed: host, threads, cpus, load average at start and end, other_load.
    machine: dict[str, Any] = field(default_factory=dict)
    #: The grid intensity used for ``co2e_g``: place, name, source, year, scope, method, covers.
    carbon: dict[str, Any] = field(default_factory=dict)
    kind: str = "run"
    schema: int = SCHEMA_VERSION


def to_json(record: WindowRecord | LayerRecord) -> str:
    """One line of ``energy.jsonl`` (a NaN or infinity is refused: strict JSON readers would choke on it)."""
    return json.dumps(asdict(record), sort_keys=True, allow_nan=False)
