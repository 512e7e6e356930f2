"""Tables and plots from records (never from log text)."""

from lightning_green.report.pareto import hypervolume_2d, pareto_mask
from lightning_green.report.runs import load_runs, main_effects, report_runs

__all__ = ["hypervolume_2d", "load_runs", "main_effects", "pareto_mask", "report_runs"]
