"""Where a callback's process measures and writes: its own GPU, and the default output folder."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

#: Default records folder. Not ``./lightning_green``: run from a source checkout, that is the package.
DEFAULT_OUTPUT_DIR = "lightning_green_logs"


def own_gpus(trainer: pl.Trainer) -> list[int]:
    """The CUDA index of this rank's device (``[]`` off the GPU): each DDP rank measures its own."""
    device = trainer.strategy.root_device
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def default_output_dir(trainer: pl.Trainer) -> Path:
    """The first logger's log dir, else ``./lightning_green_logs``."""
    if trainer.loggers:
        log_dir = getattr(trainer.loggers[0], "log_dir", None)
        if log_dir:
            return Path(log_dir)
    return Path(DEFAULT_OUTPUT_DIR)
