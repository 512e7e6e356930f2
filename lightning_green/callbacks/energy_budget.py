"""Stop or warn when a fit's energy reaches a budget, or is forecast to.

Carbontracker's "predict and stop", done inside Lightning with EnergyMonitor's measurements.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_deprecation, rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_green._checks import check_bool, check_int, check_number
from lightning_green.callbacks.energy_monitor import EnergyMonitor
from lightning_green.callbacks.publish import publish
from lightning_green.carbon import JOULES_PER_KWH

ON_EXCEED = ("stop", "warn")
CHECKS = ("spent", "forecast")


class EnergyBudget(Callback):
    r"""Stop the fit (or warn) when its energy reaches a budget, or as soon as the forecast says it will.

    Reads the energy of the linked :class:`~lightning_green.EnergyMonitor` (its run's total, open
    windows included, so a fit resumed from a checkpoint counts what the checkpoint's run spent).
    ``check="spent"`` acts when the energy spent reaches the budget; ``check="forecast"`` acts as
    soon as ``energy/forecast_fit_j`` (measured after warm-up, see EnergyMonitor) exceeds it, and
    also when the spent energy reaches it. Stopping sets ``trainer.should_stop``: Lightning ends
    the fit cleanly after the current step, with the usual end-of-fit checkpointing. The monitor's
    summary says why (``stopped_by``), and so does the log.

    Logged through the Trainer's loggers and ``trainer.callback_metrics`` at each check:

    - ``energy/budget_used``: energy spent / budget (a fraction; 1.0 = the budget).

    Args:
        max_j: Budget in joules.
        max_kwh: Budget in kilowatt-hours.
        max_co2e_g: Budget in grams of CO2e (through the monitor's carbon intensity and PUE).
            Give at least one of the three; the tightest applies.
        on_exceed: ``"stop"`` (default) or ``"warn"`` (once).
        check: ``"spent"`` (default) or ``"forecast"``.
        check_every_n_steps: Check every this many training batches (and at every epoch end and
            validation end); a check costs a counter peek (microseconds).
        energy_monitor: The EnergyMonitor to read (default: the Trainer's, see
            :meth:`EnergyMonitor.of <lightning_green.EnergyMonitor.of>`).
        monitor: Deprecated name of ``energy_monitor`` (in Lightning, ``monitor`` names a metric).
        verbose: Log a line when the budget stops the fit.

    Raises:
        ValueError: On no budget, a budget that is not a finite number > 0, an unknown
            ``on_exceed`` or ``check``.
        MisconfigurationException: In ``setup`` when the Trainer has no EnergyMonitor.

    Example::

        >>> from lightning import Trainer
        >>> from lightning_green import EnergyBudget, EnergyMonitor
        >>> from lightning_green.data import DigitsDataModule
        >>> from lightning_green.models import LitClassifier, SimpleCNN
        >>> import tempfile
        >>> monitor = EnergyMonitor(output_dir=tempfile.mkdtemp())
        >>> trainer = Trainer(max_epochs=50, logger=False, enable_progress_bar=False,
        ...                   enable_checkpointing=False, enable_model_summary=False,
        ...                   callbacks=[monitor, EnergyBudget(max_j=1.0, check_every_n_steps=1)])
        >>> trainer.fit(LitClassifier(SimpleCNN(conv_layers=1)), datamodule=DigitsDataModule())
        >>> trainer.current_epoch < 50 and monitor.summary()["stopped_by"].startswith("EnergyBudget")
        True
    """

    def __init__(
        self,
        max_j: float | None = None,
        max_kwh: float | None = None,
        max_co2e_g: float | None = None,
        on_exceed: str = "stop",
        check: str = "spent",
        check_every_n_steps: int = 10,
        energy_monitor: EnergyMonitor | None = None,
        verbose: bool = True,
        monitor: EnergyMonitor | None = None,
    ) -> None:
        if monitor is not None:
            if energy_monitor is not None:
                raise ValueError("give energy_monitor or its old name monitor, not both")
            rank_zero_deprecation("EnergyBudget(monitor=) is now energy_monitor=")
            energy_monitor = monitor
        if max_j is None and max_kwh is None and max_co2e_g is None:
            raise ValueError(
                "EnergyBudget needs a budget: max_j, max_kwh or max_co2e_g (a finite number > 0)"
            )
        for name, value in (("max_j", max_j), ("max_kwh", max_kwh), ("max_co2e_g", max_co2e_g)):
            if value is not None:
                check_number(name, value, above=0.0)
        if on_exceed not in ON_EXCEED:
            raise ValueError(f"on_exceed must be one of {', '.join(ON_EXCEED)}; got {on_exceed!r}")
        if check not in CHECKS:
            raise ValueError(f"check must be one of {', '.join(CHECKS)}; got {check!r}")
        check_int("check_every_n_steps", check_every_n_steps, 1)
        if energy_monitor is not None and not isinstance(energy_monitor, EnergyMonitor):
            raise ValueError(f"energy_monitor must be an EnergyMonitor or None; got {energy_monitor!r}")
        self.max_j, self.max_kwh, self.max_co2e_g = max_j, max_kwh, max_co2e_g
        self.on_exceed, self.check = on_exceed, check
        self.check_every_n_steps = check_every_n_steps
        self.verbose = check_bool("verbose", verbose)
        self.energy_monitor = energy_monitor
        self.budget_j = math.inf
        self.stopped = False
        self.reason: str | None = None
        self._warned = False
        self._batches = 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            max_j=self.max_j, max_kwh=self.max_kwh, max_co2e_g=self.max_co2e_g, check=self.check
        )

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.energy_monitor is None:
            self.energy_monitor = EnergyMonitor.of(trainer, "EnergyBudget")
        carbon = self.energy_monitor.carbon
        limits = [math.inf]
        if self.max_j is not None:
            limits.append(float(self.max_j))
        if self.max_kwh is not None:
            limits.append(float(self.max_kwh) * JOULES_PER_KWH)
        if self.max_co2e_g is not None:
            g_per_j = carbon.co2e_g(1.0)
            limits.append(float(self.max_co2e_g) / g_per_j if g_per_j > 0 else math.inf)
        self.budget_j = min(limits)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batches += 1
        if self._batches % self.check_every_n_steps == 0:
            self._check(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        assert self.energy_monitor is not None
        spent = self.energy_monitor.spent_j()
        used = spent / self.budget_j if self.budget_j > 0 else math.inf
        publish(trainer, {"energy/budget_used": used})
        reason = None
        if spent >= self.budget_j:
            reason = f"EnergyBudget: spent {spent:.4g} J, the budget is {self.budget_j:.4g} J"
        elif self.check == "forecast" and self.energy_monitor.forecast is not None:
            f = self.energy_monitor.forecast.fit_j
            if f > self.budget_j:
                reason = f"EnergyBudget: the fit is forecast to use {f:.4g} J, over the budget of {self.budget_j:.4g} J"
        exceed = trainer.strategy.reduce_boolean_decision(reason is not None, all=False)
        if not exceed:
            return
        reason = reason or "EnergyBudget: another rank's energy reached the budget"
        if self.on_exceed == "warn":
            if not self._warned:
                self._warned = True
                rank_zero_warn(f"{reason}; training goes on (on_exceed='warn')")
            return
        trainer.should_stop = True
        if self.energy_monitor.stopped_by is None:
            self.energy_monitor.note_stop(reason)
            if self.verbose:
                rank_zero_info(f"{reason}: stopping at step {trainer.global_step}")
        self.stopped, self.reason = True, self.reason or reason

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"stopped": self.stopped, "reason": self.reason, "warned": self._warned}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stopped = bool(state_dict.get("stopped", False))
        self.reason = state_dict.get("reason")
        self._warned = bool(state_dict.get("warned", False))
