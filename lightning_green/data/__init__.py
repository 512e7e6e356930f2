"""DataModules: the embedded digits default, torchvision datasets, synthetic data."""

from lightning_green.data.datamodules import (
    DatasetNotFoundError,
    DigitsDataModule,
    SyntheticDataModule,
    TorchvisionDataModule,
)

__all__ = ["DatasetNotFoundError", "DigitsDataModule", "SyntheticDataModule", "TorchvisionDataModule"]
