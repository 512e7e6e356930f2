"""Tables and plots from records (never from log text), and loaders for notebooks.

Example::

    from lightning_green.report import load_compare, load_records, load_runs, load_study

    runs = load_runs("lightning_green_runs/multirun/<date>")       # one row per run
    windows = load_records("lightning_green_runs/<date>")           # one row per epoch window
    meta, trials = load_study("lightning_green_runs/tune/<date>")   # a study's trials
"""

from lightning_green.report.pareto import hypervolume_2d, pareto_mask
from lightning_green.report.runs import load_records, load_runs, main_effects, report_runs
from lightning_green.report.studies import load_compare, load_study

__all__ = [
    "hypervolume_2d", "load_compare", "load_records", "load_runs", "load_study", "main_effects", "pareto_mask",
    "report_runs",
]  # fmt: skip
