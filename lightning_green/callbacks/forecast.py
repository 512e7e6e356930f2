"""Forecasting a fit's energy from its measured rate after warm-up (pure arithmetic, no Lightning).

The first steps of a fit cost more than the rest (CUDA context, cuDNN/cuBLAS autotuning,
``torch.compile``, allocator growth, cold caches), so the rate is measured from the end of a
warm-up of a few training batches on:

    forecast = energy spent so far
             + training energy per batch (after warm-up) x training batches left
             + energy per validation run x validation runs left

Before the first validation run has been measured, a validation batch is taken to cost a third of
a training batch (a forward pass of the three passes of a training step), and that share of the
forecast is labelled as assumed. The interval (``low``, ``high``) uses the lowest and highest
per-batch rates of the chunks measured since warm-up (each update closes a chunk).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: Assumed cost of a validation batch relative to a training batch, before one is measured.
VAL_BATCH_SHARE = 1 / 3


@dataclass(frozen=True)
class Forecast:
    """Predicted energy of the whole fit, in joules, with an interval."""

    fit_j: float
    low_j: float
    high_j: float
    #: Training energy per batch after warm-up, in joules.
    train_j_per_batch: float
    batches_left: float
    val_runs_left: float
    #: Whether the validation share rests on the assumed cost (no validation measured yet).
    val_assumed: bool


@dataclass
class FitForecaster:
    """Tracks training energy against batches and predicts the fit's total.

    Call :meth:`warm` once, when warm-up ends, with the batches done and the training energy spent
    so far; then :meth:`predict` at any later moment.

    Example:

        >>> f = FitForecaster()
        >>> f.warm(batches=5, train_j=20.0)  # the first 5 batches cost 4 J each (warm-up)
        >>> p = f.predict(spent_j=70.0, batches=30, train_j=70.0, total_batches=100,
        ...               val_j_per_run=3.0, val_runs_left=4)
        >>> round(p.fit_j, 3)  # 70 J + 2 J/batch x 70 batches + 3 J x 4 validations
        222.0
    """

    warm_batches: int | None = None
    warm_train_j: float = 0.0
    _last: tuple[int, float] | None = None
    _chunk_rates: list[float] = field(default_factory=list)

    def warm(self, batches: int, train_j: float) -> None:
        """Warm-up ends here: later rates count from this point."""
        self.warm_batches, self.warm_train_j = batches, train_j
        self._last = (batches, train_j)
        self._chunk_rates.clear()

    @property
    def is_warm(self) -> bool:
        return self.warm_batches is not None

    def predict(
        self,
        spent_j: float,
        batches: int,
        train_j: float,
        total_batches: float,
        val_j_per_run: float | None,
        val_runs_left: float,
        val_batches_per_run: float = 0.0,
    ) -> Forecast | None:
        """The forecast, or ``None`` before warm-up ended or when the fit has no known end.

        Args:
            spent_j: Energy of the fit so far (every window, training and validation).
            batches: Training batches done.
            train_j: Training energy so far (of the ``batches``).
            total_batches: Training batches the fit will run in all (``inf``: no known end).
            val_j_per_run: Mean energy of a validation run so far (``None``: none measured).
            val_runs_left: Validation runs still to come.
            val_batches_per_run: Batches per validation run (for the assumed cost).
        """
        if self.warm_batches is None or not math.isfinite(total_batches) or batches <= self.warm_batches:
            return None
        rate = (train_j - self.warm_train_j) / (batches - self.warm_batches)
        assert self._last is not None
        if batches > self._last[0]:
            self._chunk_rates.append((train_j - self._last[1]) / (batches - self._last[0]))
            self._last = (batches, train_j)
        rates = self._chunk_rates[-5:] or [rate]
        left = max(0.0, total_batches - batches)
        assumed = val_j_per_run is None
        per_val = rate * val_batches_per_run * VAL_BATCH_SHARE if assumed else float(val_j_per_run)
        val_j = per_val * max(0.0, val_runs_left)

        def total(r: float) -> float:
            return spent_j + r * left + val_j

        return Forecast(
            fit_j=total(rate),
            low_j=total(min(min(rates), rate)),
            high_j=total(max(max(rates), rate)),
            train_j_per_batch=rate,
            batches_left=left,
            val_runs_left=max(0.0, val_runs_left),
            val_assumed=assumed,
        )
