"""When EnergyMonitor forecasts a fit, and from which of the Trainer's counts.

:class:`~lightning_green.callbacks.forecast.FitForecaster` does the arithmetic; this module reads
the Trainer (batches per epoch, epochs, steps, validation cadence) and decides when warm-up ends
and when a forecast is due.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning.pytorch as pl

from lightning_green.callbacks.forecast import FitForecaster, Forecast
from lightning_green.callbacks.recorder import EnergyRecorder


class ForecastSchedule:
    """Warm-up and forecasting cadence of one fit.

    Args:
        warmup_steps: Training batches left out of the rate (at most a quarter of an epoch).
        every_n_steps: Forecast every this many batches (``None``: once inside the first epoch).
    """

    def __init__(self, warmup_steps: int, every_n_steps: int | None) -> None:
        self.warmup_steps, self.every_n_steps = warmup_steps, every_n_steps
        self.forecaster = FitForecaster()
        self.batches = 0  # training batches in this fit
        self.batch_offset = 0  # batches of the epochs a resumed fit skipped
        self.warm_at: int | None = None

    def start(self, trainer: pl.Trainer) -> None:
        nb = trainer.num_training_batches
        finite = isinstance(nb, int) or (isinstance(nb, float) and math.isfinite(nb))
        self.batch_offset = trainer.current_epoch * int(nb) if finite else 0
        w = self.warmup_steps
        self.warm_at = min(w, max(1, int(nb) // 4)) if finite else w
        if self.warm_at == 0:
            self.forecaster.warm(self.batch_offset, 0.0)

    def batch_done(self, train_j_now: Callable[[], float]) -> bool:
        """Count a training batch; whether a mid-epoch forecast is due now."""
        self.batches += 1
        if not self.forecaster.is_warm:
            if self.batches >= (self.warm_at or 0):
                self.forecaster.warm(self.batch_offset + self.batches, train_j_now())
            return False
        n = self.every_n_steps
        warm_at = self.warm_at or 0
        if n is not None:
            return (self.batches - warm_at) % n == 0
        return self.batches == 2 * warm_at  # one forecast inside the first epoch

    def predict(
        self, trainer: pl.Trainer, spent_j: float, train_j: float, val_runs: int, val_run_j: float
    ) -> Forecast | None:
        return self.forecaster.predict(
            spent_j=spent_j,
            batches=self.batch_offset + self.batches,
            train_j=train_j,
            total_batches=total_batches(trainer),
            val_j_per_run=val_run_j / val_runs if val_runs else None,
            val_runs_left=self._val_runs_left(trainer, val_runs),
            val_batches_per_run=val_batches(trainer),
        )

    def update(self, trainer: pl.Trainer, recorder: EnergyRecorder, mid_epoch: bool) -> Forecast | None:
        """Forecast the fit now and hand the forecast to ``recorder`` and its ledger; ``None`` when
        there is none (before warm-up, or a fit with no end). Mid-epoch, the energy so far includes
        the open windows; at an epoch's end, the closed windows are all there is."""
        led = recorder.ledger
        f = self.predict(
            trainer,
            spent_j=recorder.spent_j() if mid_epoch else led.totals.j,
            train_j=recorder.train_j_now() if mid_epoch else led.fit_train_j,
            val_runs=led.val_runs,
            val_run_j=led.val_run_j,
        )
        if f is not None:
            recorder.forecast = f
            led.forecast_fit_j = f.fit_j
        return f

    def _val_runs_left(self, trainer: pl.Trainer, val_runs: int) -> float:
        nb = trainer.num_training_batches
        total = total_batches(trainer)
        if not val_batches(trainer) or not math.isfinite(total) or not nb or not math.isfinite(nb):
            return 0.0
        per_epoch = max(1, int(nb) // max(1, int(trainer.val_check_batch or nb))) / (
            trainer.check_val_every_n_epoch or 1
        )
        done = val_runs + (self.batch_offset / nb) * per_epoch
        return max(0.0, per_epoch * total / nb - done)


def total_batches(trainer: pl.Trainer) -> float:
    """Training batches the whole fit runs (``inf`` when it has no known end)."""
    nb = trainer.num_training_batches
    out: list[float] = []
    if trainer.max_epochs is not None and trainer.max_epochs >= 0 and nb and math.isfinite(nb):
        out.append(trainer.max_epochs * nb)
    if trainer.max_steps is not None and trainer.max_steps > 0:
        out.append(trainer.max_steps * trainer.accumulate_grad_batches)
    return min(out) if out else math.inf


def val_batches(trainer: pl.Trainer) -> float:
    n = sum(b for b in trainer.num_val_batches if math.isfinite(b)) if trainer.num_val_batches else 0
    return float(n) if trainer.enable_validation else 0.0


def last_epoch(trainer: pl.Trainer) -> bool:
    """Whether the epoch now ending is the fit's last (so its window waits for the settling sample)."""
    ends = (
        trainer.max_epochs is not None
        and trainer.max_epochs >= 0
        and trainer.current_epoch + 1 >= trainer.max_epochs
    )
    steps = trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step
    return bool(ends or steps or trainer.should_stop)
