"""One way for every callback to hand metrics to the user's loggers and ``trainer.callback_metrics``."""

from __future__ import annotations

import lightning.pytorch as pl
import torch


def publish(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Log ``metrics`` through every logger of ``trainer`` (one call each, float64) and put them in
    ``trainer.callback_metrics``, where EarlyStopping, ModelCheckpoint and Ray's callbacks read them.

    Straight to the loggers rather than ``LightningModule.log``, whose per-key bookkeeping costs
    more than the measurement itself on short epochs.
    """
    if not metrics:
        return
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
    trainer.callback_metrics.update({k: torch.tensor(v, dtype=torch.float64) for k, v in metrics.items()})
