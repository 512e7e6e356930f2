"""The LightningModule that trains any of the networks with the paper's Adam settings."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from typing_extensions import override

from lightning_green._checks import check_number


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


class LitClassifier(pl.LightningModule):
    """Image classification with cross-entropy and Adam.

    Logs ``train_loss``, ``val_loss``, ``val_acc``, ``test_loss`` and ``test_acc`` (accuracy in [0, 1]).

    Args:
        net: The network.
        lr, beta1, beta2, eps, weight_decay: Adam's settings (the paper tuned lr, beta1, beta2).

    Raises:
        ValueError: Naming the argument, for values outside Adam's valid ranges.
    """

    def __init__(
        self,
        net: nn.Module,
        lr: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value, hi in (
            ("lr", lr, None),
            ("beta1", beta1, 1.0),
            ("beta2", beta2, 1.0),
            ("eps", eps, None),
        ):
            check_number(name, value, above=0.0)
            if hi is not None and not value < hi:
                raise ValueError(f"{name} must be a finite number in (0, {hi:g}), got {value!r}")
        check_number("weight_decay", weight_decay, minimum=0.0)
        self.save_hyperparameters(ignore=["net"])
        self.net = net

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=not on_step, prog_bar=stage != "train")
        if stage != "train":
            acc = (logits.argmax(dim=1) == y).float().mean()
            self.log(f"{stage}_acc", acc, on_epoch=True, prog_bar=True)
        return loss

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    @override
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        h = self.hparams
        return torch.optim.Adam(
            self.parameters(), lr=h.lr, betas=(h.beta1, h.beta2), eps=h.eps, weight_decay=h.weight_decay
        )
