"""The study's hooks into Ray Tune: a progress line per finished trial, and the study-wide energy
budget. Module-level classes: Ray pickles what a Tuner holds to checkpoint a study."""

from __future__ import annotations

from typing import Any

from ray import tune


class TrialLines(tune.Callback):
    """Prints one line per finished trial: the study, the trial, its accuracy and joules, and the
    study's running total of trial energy.

    Args:
        label: What the line calls the study (``"efficient seed 0"``).
        accuracy, energy: The result keys of the trial's accuracy and energy.
    """

    def __init__(self, label: str, accuracy: str, energy: str) -> None:
        self.label, self.accuracy, self.energy = label, accuracy, energy
        self.total_j = 0.0
        self.done = 0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, "")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, " FAILED")

    def _line(self, trial: Any, status: str) -> None:
        r = trial.last_result or {}
        joules = r.get("total_j", r.get(self.energy))
        self.total_j += float(joules or 0.0)
        self.done += 1
        acc = r.get(self.accuracy)
        print(
            f"{self.label} trial {self.done} ({trial.trial_id}){status}: {self.accuracy} "
            f"{'-' if acc is None else f'{acc:.4f}'}, {'-' if joules is None else f'{joules:.1f}'} J "
            f"after {r.get('training_iteration', 0)} report(s); trials so far {self.total_j:.1f} J",
            flush=True,
        )


class EnergyBudgetStopper(tune.Stopper):
    """Ends the whole study once its trials together used ``budget_j`` joules (each trial's latest
    cumulative ``metric``)."""

    def __init__(self, budget_j: float, metric: str) -> None:
        self.budget_j, self.metric = float(budget_j), metric
        self.used: dict[str, float] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        if result.get(self.metric) is not None:
            self.used[trial_id] = float(result[self.metric])
        return False

    def stop_all(self) -> bool:
        return sum(self.used.values()) >= self.budget_j
