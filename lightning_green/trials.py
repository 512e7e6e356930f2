"""A tuning study's results table, ``trials.csv``: its columns, how it is written and read.

One row per trial, in the order the searcher created them. :mod:`lightning_green.tune` writes it
(:func:`write_trials`) and :mod:`lightning_green.report` reads it (:func:`read_trials`); both go
through :data:`COLUMNS`, so a column is added, renamed or typed in one place. No Ray, Hydra or
Lightning here: a notebook reads a study with pandas alone.

Example::

    >>> import tempfile
    >>> import pandas as pd
    >>> folder = tempfile.mkdtemp()
    >>> row = {"trial_id": "0007", "param.optimizer.lr": 0.01, "accuracy": 0.9, "energy_j": 12.5}
    >>> _ = write_trials(pd.DataFrame([row]), folder)
    >>> t = read_trials(folder)
    >>> t.loc[0, "trial_id"], list(t.columns[:4])  # an id made of digits stays text
    ('0007', ['trial_id', 'param.optimizer.lr', 'accuracy', 'energy_j'])
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lightning_green.records import TRIALS_FILE

#: A searched parameter's column: this prefix and its dotted config key (``param.optimizer.lr``).
PARAM_PREFIX = "param."


@dataclass(frozen=True)
class Column:
    """One column of ``trials.csv``: its name, its type (``str``, ``float``, ``int``, ``bool``)
    and what it holds."""

    name: str
    type: str
    meaning: str


#: Every column but the searched parameters, in the file's order (``trial_id``, then one
#: ``param.<key>`` per searched parameter, then these). A study with no trial has the header alone.
COLUMNS: tuple[Column, ...] = (
    Column("trial_id", "str", "Ray's trial id"),
    Column("accuracy", "float", "the trial's last tune.accuracy_metric"),
    Column("energy_j", "float", "its last tune.energy_metric, in joules (the fit's energy so far)"),
    Column("dynamic_j", "float", "the fit's energy above the idle baseline, in joules"),
    Column("test_acc", "float", "test accuracy (empty without a final report)"),
    Column("total_j", "float", "the run's energy, test included, in joules"),
    Column("epochs", "float", "epochs trained"),
    Column("iterations", "float", "reports Ray received"),
    Column("finished", "bool", "whether the trial sent its final report"),
    Column("status", "str", "TERMINATED or ERROR"),
    Column("error", "str", "the error of a failed trial, cut to 300 characters"),
    Column("source", "str", "domain=source of its energy (measured:rapl, estimated:cpu-time)"),
    Column("node_id", "str", "the Ray node it ran on"),
    Column("path", "str", "its trial folder (its energy records)"),
    Column("order", "float", "the order the searcher created it in (Ray's creation counter)"),
    Column("stopped_early", "bool", "ended before its last epoch (a scheduler, a stopper, StopAtTarget)"),
    Column("energy_saved_estimate_j", "float", "energy per epoch so far x the epochs it did not run"),
    Column("other_attempts_j", "float", "the recorded energy of its other attempts (crashed, killed, cut)"),
    Column("other_attempts_dynamic_j", "float", "the same above the idle baseline"),
    Column("total_dynamic_j", "float", "its last attempt's energy above the idle baseline, test included"),
    Column("energy_from", "str", "final report, records, last report or none"),
    Column("train_s", "float", "seconds in its energy windows (training, validation, test)"),
)
_BY_NAME = {c.name: c for c in COLUMNS}
#: What :func:`read_trials` reads each text column as (a trial id of digits alone stays text).
TEXT_DTYPES = {c.name: str for c in COLUMNS if c.type == "str"}


def ordered_columns(columns: list[str]) -> list[str]:
    """``columns`` in the file's order: ``trial_id``, the parameters as given, then the schema's.

    Raises:
        ValueError: On a column that is neither a parameter nor in :data:`COLUMNS`.
    """
    unknown = [c for c in columns if c not in _BY_NAME and not c.startswith(PARAM_PREFIX)]
    if unknown:
        raise ValueError(f"{TRIALS_FILE}: columns {unknown} are not in lightning_green.trials.COLUMNS")
    present = set(columns)
    first = [c.name for c in COLUMNS[:1] if c.name in present]
    params = [c for c in columns if c.startswith(PARAM_PREFIX)]
    return [*first, *params, *(c.name for c in COLUMNS[1:] if c.name in present)]


def write_trials(trials: pd.DataFrame, folder: str | os.PathLike[str]) -> Path:
    """Write ``folder/trials.csv`` in the schema's column order; returns its path."""
    path = Path(folder) / TRIALS_FILE
    table = trials if not trials.empty else pd.DataFrame(columns=[c.name for c in COLUMNS])
    table[ordered_columns(list(table.columns))].to_csv(path, index=False)
    return path


def read_trials(folder: str | os.PathLike[str]) -> pd.DataFrame:
    """``folder/trials.csv`` as a DataFrame, text columns as text; an empty one without the file."""
    path = Path(folder) / TRIALS_FILE
    if not path.is_file():
        return pd.DataFrame()
    return pd.read_csv(path, dtype=TEXT_DTYPES)
