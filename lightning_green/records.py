"""The record schema, and its crash-safe writer and reader.

Callbacks write records; reports, the tuner and the tests read them. Nothing parses log text.

Files in a run's output directory:

* ``energy.jsonl``: one JSON object per line, appended, flushed and fsynced as each window ends,
  so a crash or kill loses at most the unfinished window. ``kind`` says what a line is:
  ``"window"`` (:class:`WindowRecord`), ``"layer"`` and ``"layer_type"`` (:class:`LayerRecord`).
* ``energy_summary.json``: totals, rewritten atomically after every window and at the end.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lightning_green.energy.reading import DomainEnergy, Reading

SCHEMA_VERSION = 1
RECORDS_FILE = "energy.jsonl"
SUMMARY_FILE = "energy_summary.json"


@dataclass
class WindowRecord:
    """Energy of one window: a train epoch, a validation run, a test run.

    ``energy_j`` is the sum of the domains that were read; ``complete`` is ``False`` when a
    counter failed in the window, in which case ``energy_j`` covers only the domains that worked.
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
class LayerRecord:
    """Energy of one layer (``kind="layer"``) or one layer type (``kind="layer_type"``)."""

    run_id: str
    kind: str
    name: str
    layer_type: str
    joules_per_step: float
    share: float
    source: str
    mode: str
    params: int = 0
    flops: int = 0
    forward_s: float = 0.0
    backward_s: float = 0.0
    joules_per_sample: float = 0.0
    calls: int = 0
    steps: int = 0
    schema: int = SCHEMA_VERSION


_KINDS = {"window": WindowRecord, "layer": LayerRecord, "layer_type": LayerRecord}


def to_json(record: WindowRecord | LayerRecord) -> str:
    return json.dumps(asdict(record), sort_keys=True, allow_nan=False)


class RecordWriter:
    """Appends records to a JSONL file, one fsynced line at a time.

    Example::

        writer = RecordWriter("runs/energy.jsonl")
        writer.write(record)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: WindowRecord | LayerRecord) -> None:
        self.write_many([record])

    def write_many(self, records: list[WindowRecord | LayerRecord]) -> None:
        if not records:
            return
        data = "".join(to_json(r) + "\n" for r in records)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_json_atomic(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Write JSON so that a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def iter_records(
    path: str | os.PathLike[str], kind: str | None = None
) -> Iterator[WindowRecord | LayerRecord]:
    """Read records back. A torn last line (the process was killed mid-write) is skipped with a warning.

    Raises:
        ValueError: If a line other than the last is not a valid record.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            cls = _KINDS[data["kind"]]
            record = cls(**data)
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            if i == len(lines) - 1:
                warnings.warn(f"{path}: skipping a torn last line ({err})", stacklevel=2)
                continue
            raise ValueError(f"{path}:{i + 1}: not a lightning-green record: {err}") from err
        if kind is None or record.kind == kind:
            yield record


def read_windows(path: str | os.PathLike[str]) -> list[WindowRecord]:
    """All window records of a run (``path``: the JSONL file or the directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORDS_FILE
    return [r for r in iter_records(path, "window") if isinstance(r, WindowRecord)]


def read_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / SUMMARY_FILE
    return json.loads(path.read_text(encoding="utf-8"))


def find_runs(root: str | os.PathLike[str]) -> list[Path]:
    """Directories under ``root`` (``root`` included) that hold an ``energy.jsonl``."""
    root = Path(root)
    return sorted({p.parent for p in root.rglob(RECORDS_FILE)})


RUN_FILE = "run.json"


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
    kind: str = "run"
    schema: int = SCHEMA_VERSION


def write_run(directory: str | os.PathLike[str], record: RunRecord) -> Path:
    path = Path(directory) / RUN_FILE
    write_json_atomic(path, asdict(record))
    return path


def read_run(directory: str | os.PathLike[str]) -> RunRecord:
    data = json.loads((Path(directory) / RUN_FILE).read_text(encoding="utf-8"))
    return RunRecord(**data)
