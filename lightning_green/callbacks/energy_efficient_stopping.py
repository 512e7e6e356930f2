"""Stop training when a metric's improvement per kilojoule falls below a threshold.

The paper behind lightning-green found diminishing returns in accuracy for energy: this stops
where the next joules buy too little.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from lightning_green._checks import check_bool, check_int, check_number
from lightning_green.callbacks.energy_monitor import EnergyMonitor
from lightning_green.callbacks.publish import publish

MODES = ("max", "min")


class EnergyEfficientStopping(Callback):
    r"""Stop when the monitored metric improves by less than ``min_gain_per_kj`` per kilojoule.

    At each validation end (sanity check excluded) it takes the best value of ``monitor`` so far
    and the energy of the run so far (from the linked :class:`~lightning_green.EnergyMonitor`,
    the paused training of the current epoch included), and computes the gain per kJ over the
    last ``window`` validations::

        gain_per_kj = (best now - best window validations ago) / (energy since then / 1000)

    (for ``mode="min"`` the decrease). A validation whose gain is below ``min_gain_per_kj``
    counts against ``patience``; one at or above it resets the count. When the count reaches
    ``patience``, ``trainer.should_stop`` is set and the monitor's summary says why
    (``stopped_by``). Conventions follow Lightning's ``EarlyStopping``: state in ``state_dict``
    (so a resumed fit continues the count), ``state_key`` built from the arguments, ``verbose``,
    and the decision reduced across ranks.

    Logged through the Trainer's loggers and ``trainer.callback_metrics``:

    - ``energy/gain_per_kj``: the metric's improvement per kilojoule over the last ``window``
      validations (metric units per kJ).

    Args:
        monitor: The metric to watch (in ``trainer.callback_metrics``), e.g. ``"val_acc"``.
        mode: ``"max"`` (accuracy) or ``"min"`` (loss).
        min_gain_per_kj: Least improvement per kJ worth paying for (a finite number >= 0).
        patience: Validations in a row below the threshold before stopping (>= 1).
        window: Validations the gain is measured over (>= 1).
        energy_monitor: The EnergyMonitor to read (default: the one in the Trainer's callbacks).
        strict: Raise when ``monitor`` is missing from the metrics (else skip the check).
        verbose: Log each check.

    Raises:
        ValueError: On a bad argument, naming it.
        MisconfigurationException: In ``setup`` without an EnergyMonitor; at a check, when
            ``monitor`` is not a logged metric and ``strict``.

    Example::

        >>> from lightning import Trainer
        >>> from lightning_green import EnergyEfficientStopping, EnergyMonitor
        >>> from lightning_green.data import DigitsDataModule
        >>> from lightning_green.models import LitClassifier, SimpleCNN
        >>> import tempfile
        >>> stop = EnergyEfficientStopping(monitor="val_acc", min_gain_per_kj=1e9, patience=2)
        >>> trainer = Trainer(max_epochs=30, logger=False, enable_progress_bar=False,
        ...                   enable_checkpointing=False, enable_model_summary=False,
        ...                   callbacks=[EnergyMonitor(output_dir=tempfile.mkdtemp()), stop])
        >>> trainer.fit(LitClassifier(SimpleCNN(conv_layers=1)), datamodule=DigitsDataModule())
        >>> trainer.current_epoch  # two validations buying less than 1e9 per kJ
        3
    """

    def __init__(
        self,
        monitor: str = "val_acc",
        mode: str = "max",
        min_gain_per_kj: float = 0.01,
        patience: int = 3,
        window: int = 1,
        energy_monitor: EnergyMonitor | None = None,
        strict: bool = True,
        verbose: bool = False,
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"monitor must be the name of a logged metric, e.g. 'val_acc'; got {monitor!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        self.min_gain_per_kj = check_number(
            "min_gain_per_kj", min_gain_per_kj, minimum=0.0, unit="metric per kJ"
        )
        self.patience = check_int("patience", patience, 1)
        self.window = check_int("window", window, 1)
        if energy_monitor is not None and not isinstance(energy_monitor, EnergyMonitor):
            raise ValueError(f"energy_monitor must be an EnergyMonitor or None; got {energy_monitor!r}")
        self.monitor, self.mode = monitor, mode
        self.strict = check_bool("strict", strict)
        self.verbose = check_bool("verbose", verbose)
        self.energy_monitor = energy_monitor
        self.history: list[tuple[float, float]] = []  # (energy so far in J, best metric so far)
        self.wait_count = 0
        self.stopped_epoch = 0
        self.last_gain_per_kj: float | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            monitor=self.monitor, mode=self.mode, min_gain_per_kj=self.min_gain_per_kj
        )

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.energy_monitor is None:
            self.energy_monitor = EnergyMonitor.of(trainer, "EnergyEfficientStopping")

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if self.strict:
                available = ", ".join(sorted(trainer.callback_metrics)) or "none"
                raise MisconfigurationException(
                    f"EnergyEfficientStopping: monitor={self.monitor!r} is not a logged metric (available: {available})"
                )
            return
        assert self.energy_monitor is not None
        v = float(value)
        best = v if not self.history or self._better(v, self.history[-1][1]) else self.history[-1][1]
        self.history.append((self.energy_monitor.spent_j(), best))
        if len(self.history) <= self.window:
            return
        e0, b0 = self.history[-1 - self.window]
        e1, b1 = self.history[-1]
        kj = (e1 - e0) / 1000.0
        gain = (b1 - b0) * (1 if self.mode == "max" else -1)
        per_kj = gain / kj if kj > 0 else float("inf") if gain > 0 else 0.0
        self.last_gain_per_kj = per_kj
        publish(trainer, {"energy/gain_per_kj": per_kj})
        self.wait_count = self.wait_count + 1 if per_kj < self.min_gain_per_kj else 0
        if self.verbose:
            rank_zero_info(
                f"EnergyEfficientStopping: {self.monitor} gained {per_kj:.4g} per kJ "
                f"(threshold {self.min_gain_per_kj:g}; {self.wait_count}/{self.patience})"
            )
        should_stop = trainer.strategy.reduce_boolean_decision(self.wait_count >= self.patience, all=False)
        if should_stop:
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch
            reason = (
                f"EnergyEfficientStopping: {self.monitor} gained {per_kj:.4g} per kJ over the last "
                f"{self.window} validation(s), below min_gain_per_kj={self.min_gain_per_kj:g} for "
                f"{self.patience} check(s) in a row (best {b1:.4g} after {e1:.4g} J)"
            )
            if self.energy_monitor.stopped_by is None:
                self.energy_monitor.note_stop(reason)
            rank_zero_info(reason)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [list(h) for h in self.history],
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [(float(e), float(b)) for e, b in state_dict.get("history", [])]
        self.wait_count = int(state_dict.get("wait_count", 0))
        self.stopped_epoch = int(state_dict.get("stopped_epoch", 0))
