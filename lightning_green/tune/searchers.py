"""A searcher for the ``efficient`` strategy: least energy subject to a target accuracy.

Module-level (not local) classes and functions, because Ray pickles the searcher to checkpoint
a study.
"""

from __future__ import annotations

from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch


def constraint(accuracy: float | None, target: float) -> float:
    """Optuna's constraint value for a trial: <= 0 is feasible (accuracy at or above ``target``);
    a trial with no accuracy is infeasible."""
    if accuracy is None or accuracy != accuracy:
        return 1.0
    return target - float(accuracy)


def trial_constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    """``constraints_func`` for Optuna's samplers: the value stored when the trial completed."""
    return [trial.user_attrs.get("constraint", 1.0)]


class EnergyConstrainedSearch(OptunaSearch):
    """An OptunaSearch that minimises a trial's energy subject to its accuracy reaching a target.

    The target is ``target_accuracy``; when that is ``None``, ``target_fraction`` x the best
    accuracy any trial of the study has reached so far (each trial's constraint is fixed when it
    completes). Optuna's constrained TPE / GP samplers treat trials below the target as
    infeasible and model energy among the feasible ones, so the search moves to the cheapest
    configurations that still reach the target.
    """

    def __init__(
        self, *, accuracy_metric: str, energy_metric: str, sampler: optuna.samplers.BaseSampler,
        target_accuracy: float | None, target_fraction: float,
    ) -> None:  # fmt: skip
        super().__init__(metric=energy_metric, mode="min", sampler=sampler)
        self.accuracy_metric = accuracy_metric
        self.target_accuracy, self.target_fraction = target_accuracy, target_fraction
        self.best_accuracy = 0.0

    def target(self) -> float:
        if self.target_accuracy is not None:
            return float(self.target_accuracy)
        return self.target_fraction * self.best_accuracy

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        acc = (result or {}).get(self.accuracy_metric)
        if acc is not None and acc == acc:
            self.best_accuracy = max(self.best_accuracy, float(acc))
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and trial_id not in self._completed_trials:
            ot_trial.set_user_attr("accuracy", acc)
            ot_trial.set_user_attr("target", self.target())
            value = constraint(acc, self.target())
            ot_trial.set_user_attr("constraint", value)
            if hasattr(ot_trial, "set_constraint"):  # Optuna >= 5: the samplers read it from the trial
                ot_trial.set_constraint("accuracy_target", value)
        super().on_trial_complete(trial_id, result, error)


def energy_constrained_search(
    accuracy_metric: str, energy_metric: str, sampler_name: str, seed: int, startup: int,
    target_accuracy: float | None, target_fraction: float,
) -> Any:  # fmt: skip
    """An :class:`EnergyConstrainedSearch` with a constrained TPE (``"tpe"``) or GP (``"gp"``) sampler."""
    cls = optuna.samplers.GPSampler if sampler_name == "gp" else optuna.samplers.TPESampler
    # Optuna >= 5 takes constraints from Trial.set_constraint (constraints_func is deprecated there)
    legacy = not hasattr(optuna.trial.Trial, "set_constraint")
    sampler = cls(
        seed=seed, n_startup_trials=startup, **({"constraints_func": trial_constraints} if legacy else {})
    )
    return EnergyConstrainedSearch(
        accuracy_metric=accuracy_metric, energy_metric=energy_metric, sampler=sampler,
        target_accuracy=target_accuracy, target_fraction=target_fraction,
    )  # fmt: skip
