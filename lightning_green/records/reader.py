"""Reading records back: torn lines skipped with a warning, a value no run writes refused by name."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightning_green.records.schema import (
    KINDS,
    RECORDS_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    SUPPORTED_SCHEMAS,
    LayerRecord,
    RecordError,
    RunRecord,
    WindowRecord,
)


def iter_records(
    path: str | os.PathLike[str], kind: str | None = None
) -> Iterator[WindowRecord | LayerRecord]:
    """Read records back.

    A line that is not JSON (torn by a kill or a full disk, anywhere in the file) is skipped with a
    warning; the rest of the file is read.

    Raises:
        RecordError: If a line is JSON but not a valid record: an unknown ``kind`` or ``schema``,
            a missing or misspelt field, an energy that is not a finite number >= 0. The message
            names the file, the line and the field.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    torn = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            torn.append(i + 1)
            continue
        record = _record(data, f"{path}:{i + 1}")
        if kind is None or record.kind == kind:
            yield record
    if torn:
        shown = ", ".join(map(str, torn[:5])) + (", ..." if len(torn) > 5 else "")
        warnings.warn(
            f"{path}: skipped {len(torn)} torn line(s) that are not JSON (line {shown}); "
            "a kill or a full disk cut them",
            stacklevel=2,
        )


def _record(data: Any, where: str) -> WindowRecord | LayerRecord:
    if not isinstance(data, dict):
        raise RecordError(f"{where}: not a lightning-green record (a JSON {type(data).__name__})")
    schema = data.get("schema")
    if isinstance(schema, bool) or schema not in SUPPORTED_SCHEMAS:
        raise RecordError(
            f"{where}: schema {schema!r} is not one this lightning-green reads ({', '.join(map(str, SUPPORTED_SCHEMAS))})"
            "; a newer lightning-green wrote it: upgrade"
        )
    cls = KINDS.get(data.get("kind"))  # type: ignore[arg-type]
    if cls is None:
        raise RecordError(f"{where}: kind {data.get('kind')!r} is not one of {', '.join(KINDS)}")
    try:
        record = cls(**data)
    except TypeError as err:
        raise RecordError(f"{where}: not a valid {data['kind']} record ({err})") from None
    if isinstance(record, WindowRecord):
        _check_joules(where, "energy_j", record.energy_j)
        _check_joules(where, "seconds", record.seconds)
        if record.dynamic_j is not None:
            _check_joules(where, "dynamic_j", record.dynamic_j)
        for n, d in enumerate(record.domains):
            if not isinstance(d, dict) or "joules" not in d:
                raise RecordError(f"{where}: field domains[{n}] is not a domain reading")
            if d["joules"] is not None:
                _check_joules(where, f"domains[{n}].joules", d["joules"])
        if not isinstance(record.complete, bool):
            raise RecordError(f"{where}: field complete must be true or false, got {record.complete!r}")
    else:
        for name in ("joules_per_step", "share", "total_j", "optimizer_j"):
            v = getattr(record, name)
            if v is not None and not _finite(v):
                raise RecordError(f"{where}: field {name} must be a finite number or null, got {v!r}")
    return record


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_joules(where: str, name: str, v: Any) -> None:
    if not _finite(v) or v < 0:
        raise RecordError(f"{where}: field {name} must be a finite number >= 0, got {v!r}")


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
    return read_json(path)


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON object from ``path``; a truncated or damaged file is a :class:`RecordError` naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RecordError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}); the file is truncated or damaged"
        ) from None
    if not isinstance(data, dict):
        raise RecordError(f"{path}: not a lightning-green file (a JSON {type(data).__name__})")
    return data


def find_runs(root: str | os.PathLike[str]) -> list[Path]:
    """Directories under ``root`` (``root`` included) that hold an ``energy.jsonl``."""
    root = Path(root)
    return sorted({p.parent for p in root.rglob(RECORDS_FILE)})


def trial_energy_j(trials: Any) -> Any:
    """Energy each trial of a ``trials.csv`` table spent, in joules (a pandas Series): its run's
    total (training, validation and test: ``total_j``), else its training energy so far
    (``energy_j``, for a trial that never finished), plus the finished windows of its other
    attempts (``other_attempts_j``: crashes retried, attempts cut by an interrupted study). 0 where
    a trial reported nothing."""
    spent = trials["total_j"].astype(float).fillna(trials["energy_j"].astype(float)).fillna(0.0)
    if "other_attempts_j" in trials:
        spent = spent + trials["other_attempts_j"].astype(float).fillna(0.0)
    return spent


def read_run(directory: str | os.PathLike[str]) -> RunRecord:
    path = Path(directory) / RUN_FILE
    data = read_json(path)
    try:
        return RunRecord(**data)
    except TypeError as err:
        raise RecordError(f"{path}: not a valid run record ({err})") from None
