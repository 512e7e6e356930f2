"""Callbacks that make a Ray trial fail on purpose, mid-fit (importable by Ray workers).

``WaitToBeKilled``: the ``$LG_KILL_AT``-th trial attempt (1 unless set) to start its epoch 1 for
the first time writes its worker's pid to ``$LG_KILL_DIR/<pid>`` (the file holds the folder of its
energy records), then waits there for the test to kill it: epoch 0's windows are recorded, epoch
1's is open. A marker in the trial's working folder makes that trial's retry train normally.

``RaiseMidEpoch``: every attempt raises in epoch 0, after its second training batch, before any
epoch was reported to Ray.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import lightning.pytorch as pl


class WaitToBeKilled(pl.Callback):
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        marker = Path("reached_epoch_1")
        if trainer.current_epoch != 1 or marker.exists():
            return
        marker.write_text("1")
        folder = Path(os.environ["LG_KILL_DIR"])
        arrivals = folder / "arrivals"
        arrivals.mkdir(parents=True, exist_ok=True)
        (arrivals / uuid.uuid4().hex).touch()
        if len(list(arrivals.iterdir())) != int(os.environ.get("LG_KILL_AT", "1")):
            return
        tmp = folder / f".{os.getpid()}.tmp"
        tmp.write_text(str(trainer.default_root_dir))
        tmp.rename(folder / str(os.getpid()))
        time.sleep(600)


class RaiseMidEpoch(pl.Callback):
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx
    ) -> None:
        if trainer.current_epoch == 0 and batch_idx == 1:
            raise RuntimeError("RaiseMidEpoch: this trial fails mid-epoch")
