"""DataModules: scikit-learn's embedded digits (the default, no network), torchvision datasets, synthetic."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset, random_split

from lightning_green._checks import UserInputError, check_int


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")


class _Base(pl.LightningDataModule):
    #: Shape facts the model config interpolates.
    num_classes = 10
    in_channels = 1
    image_size = 28

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        check_int("batch_size", batch_size, 1)
        check_int("num_workers", num_workers, 0)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _loader(self, ds: Dataset | None, shuffle: bool) -> DataLoader:
        if ds is None:
            raise RuntimeError("call setup() first")
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            generator=g if shuffle else None,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)


class DigitsDataModule(_Base):
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), embedded: no download.

    A fixed split (by ``seed``) into train / val / test; pixels scaled to [0, 1].

    Args:
        batch_size: Batch size.
        val_fraction, test_fraction: Shares of the 1,797 images held out.
        seed: Seed of the split and of shuffling.
    """

    image_size = 8

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        _check_fraction("val_fraction", val_fraction)
        _check_fraction("test_fraction", test_fraction)
        if val_fraction + test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1")
        self.val_fraction, self.test_fraction = val_fraction, test_fraction

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))
        n_val, n_test = int(len(y) * self.val_fraction), int(len(y) * self.test_fraction)
        val, test, train = perm[:n_val], perm[n_val : n_val + n_test], perm[n_val + n_test :]
        self.train_set = TensorDataset(x[train], y[train])
        self.val_set = TensorDataset(x[val], y[val])
        self.test_set = TensorDataset(x[test], y[test])


class SyntheticDataModule(_Base):
    """Random images whose label is a fixed random linear function of the pixels (learnable, no files).

    Args:
        samples: Number of images (split 70/15/15).
        in_channels, image_size, num_classes: Their shape.
    """

    def __init__(
        self,
        samples: int = 1024,
        in_channels: int = 1,
        image_size: int = 8,
        num_classes: int = 10,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        for name, value, lo in (
            ("samples", samples, 10),
            ("in_channels", in_channels, 1),
            ("image_size", image_size, 1),
            ("num_classes", num_classes, 2),
        ):
            check_int(name, value, lo)
        self.samples = samples
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        g = torch.Generator().manual_seed(self.seed)
        x = torch.rand(self.samples, self.in_channels, self.image_size, self.image_size, generator=g)
        w = torch.randn(self.in_channels * self.image_size**2, self.num_classes, generator=g)
        y = (x.flatten(1) @ w).argmax(dim=1)
        ds = TensorDataset(x, y)
        n_val = n_test = int(0.15 * self.samples)
        self.train_set, self.val_set, self.test_set = random_split(
            ds, [self.samples - n_val - n_test, n_val, n_test], generator=g
        )


class DatasetNotFoundError(FileNotFoundError, UserInputError):
    """A torchvision dataset is not on disk and could not be downloaded (the commands print one line)."""


class TorchvisionDataModule(_Base):
    """MNIST, Fashion-MNIST or CIFAR-10 through torchvision's own loaders.

    The validation set is a fixed ``val_fraction`` of the training files; the test set is the
    official test split.

    Args:
        name: ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
        data_dir: Where the dataset lives (torchvision's layout under it).
        download: Let torchvision download it if missing (needs network).

    Raises:
        ValueError: For an unknown ``name``.
        DatasetNotFoundError: In ``setup`` when the files are missing, saying where it looked.
    """

    _SPECS = {
        "mnist": ("MNIST", 1, 28, (0.1307,), (0.3081,), "MNIST/raw"),
        "fashion_mnist": ("FashionMNIST", 1, 28, (0.2860,), (0.3530,), "FashionMNIST/raw"),
        "cifar10": (
            "CIFAR10",
            3,
            32,
            (0.4914, 0.4822, 0.4465),
            (0.2470, 0.2435, 0.2616),
            "cifar-10-batches-py",
        ),
    }

    def __init__(
        self,
        name: str = "mnist",
        data_dir: str | os.PathLike[str] = "data",
        download: bool = False,
        val_fraction: float = 0.1,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        if name not in self._SPECS:
            raise ValueError(f"name must be one of {', '.join(self._SPECS)}; got {name!r}")
        _check_fraction("val_fraction", val_fraction)
        self.name, self.data_dir, self.download, self.val_fraction = (
            name,
            Path(data_dir),
            download,
            val_fraction,
        )
        _, self.in_channels, self.image_size, _, _, _ = self._SPECS[name]

    def _dataset(self, train: bool) -> Dataset:
        import torchvision
        from torchvision import transforms

        cls_name, _, _, mean, std, sub = self._SPECS[self.name]
        tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
        try:
            return getattr(torchvision.datasets, cls_name)(
                root=str(self.data_dir), train=train, download=self.download, transform=tf
            )
        except (RuntimeError, OSError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise DatasetNotFoundError(
                f"data={self.name}: dataset not found or unreadable in {(self.data_dir / sub).resolve()} "
                f"({first}); get it with data.download=true on a machine with network "
                f"(torchvision.datasets.{cls_name}), copy its files there, or set data.data_dir"
            ) from err

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        full = self._dataset(train=True)
        n_val = max(1, int(len(full) * self.val_fraction))
        perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(self.seed)).tolist()
        self.val_set, self.train_set = Subset(full, perm[:n_val]), Subset(full, perm[n_val:])
        self.test_set = self._dataset(train=False)
