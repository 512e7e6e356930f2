"""Stop training once a metric reaches a target, or once it can no longer reach it in time.

When the goal is a model at a target accuracy, epochs past the target buy nothing, and a run
that cannot get there in the epochs it has left is energy spent on a model nobody will use. The
efficient tuning strategy puts this callback in every trial.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_green._checks import check_int, check_number
from lightning_green.callbacks.energy_monitor import EnergyMonitor


class StopAtTarget(Callback):
    r"""Stop the fit at the first validation where ``monitor`` reaches ``target``, or where even
    its latest gain per epoch, kept up for every epoch left, would not reach it.

    The second test is an optimistic linear extrapolation of the learning curve: at epoch ``e``
    (from ``min_epochs`` on) with value ``v_e``, it stops when ``v_e + g x epochs left < target``,
    ``g`` the larger of the last two per-epoch gains (a one-epoch plateau of a noisy metric does
    not stop a run). Learning curves flatten, so the extrapolation rarely stops a run that would
    have got there; a curve that starts flat and then jumps is the exception (raise
    ``min_epochs`` for those). Ranks agree through Lightning's ``should_stop`` reduction.
    The linked :class:`~lightning_green.EnergyMonitor`'s summary says why (``stopped_by``).

    Logs nothing; sets ``trainer.should_stop``.

    Args:
        monitor: A metric to maximise (``"val_acc"``), read at each validation end.
        target: The value to reach.
        min_epochs: Validations before the out-of-reach test may stop a run (>= 2: it needs a gain).

    Example::

        >>> from lightning import Trainer
        >>> from lightning_green import EnergyMonitor, StopAtTarget
        >>> from lightning_green.data import DigitsDataModule
        >>> from lightning_green.models import LitClassifier, SimpleCNN
        >>> import tempfile
        >>> stop = StopAtTarget("val_acc", target=0.5)
        >>> trainer = Trainer(max_epochs=20, callbacks=[EnergyMonitor(output_dir=tempfile.mkdtemp()), stop],
        ...                   logger=False, enable_progress_bar=False, enable_checkpointing=False,
        ...                   enable_model_summary=False)
        >>> trainer.fit(LitClassifier(SimpleCNN(), lr=0.01), datamodule=DigitsDataModule())
        >>> trainer.current_epoch < 20 and stop.stopped_by.startswith(("val_acc reached", "val_acc cannot"))
        True
    """

    def __init__(self, monitor: str, target: float, min_epochs: int = 2) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"monitor must be a metric name such as 'val_acc', got {monitor!r}")
        self.monitor = monitor
        self.target = check_number("target", target)
        self.min_epochs = check_int("min_epochs", min_epochs, 2)
        self.history: list[float] = []
        self.stopped_by: str | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, target=self.target)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        v = float(value)
        if not math.isfinite(v):
            return
        self.history.append(v)
        reason = None
        left = (
            max(trainer.max_epochs - (trainer.current_epoch + 1), 0) if trainer.max_epochs > 0 else math.inf
        )
        if v >= self.target:
            reason = (
                f"{self.monitor} reached {v:.4g} >= target {self.target:g} at epoch {trainer.current_epoch}"
            )
        elif len(self.history) >= self.min_epochs:
            recent = self.history[-3:]
            gain = max([b - a for a, b in itertools.pairwise(recent)] + [0.0])
            if v + gain * left < self.target:
                reason = (f"{self.monitor} cannot reach {self.target:g} in the {left} epochs left "
                          f"({v:.4g} now, +{gain:.3g} per epoch)")  # fmt: skip
        if reason is None:
            return
        trainer.should_stop = True
        self.stopped_by = reason
        rank_zero_info(f"lightning-green StopAtTarget: {reason}")
        monitor = next((c for c in trainer.callbacks if isinstance(c, EnergyMonitor)), None)  # type: ignore[attr-defined]
        if monitor is not None:
            monitor.note_stop(f"StopAtTarget: {reason}")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
