"""Networks of configurable depth and width: the paper's simple CNN, its two dense nets, torchvision.

The CNN follows Yarally et al. (CAIN 2023): block ``d`` (0-based) is a 3x3 convolution to
``3**(d+1) * base_channels`` channels, BatchNorm, ReLU and 2x2 max-pooling, then ``linear_layers``
fully connected layers. Pooling stops once the feature map is 1x1, so deep nets fit small images.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_green._checks import check_int as _check_int

ACTIVATIONS = ("relu", "none")


def _act(activation: str) -> list[nn.Module]:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")
    return [nn.ReLU()] if activation == "relu" else []


def _head(
    in_features: int, linear_layers: int, hidden_units: int, num_classes: int, activation: str
) -> list[nn.Module]:
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(linear_layers - 1):
        layers += [nn.Linear(width, hidden_units), *_act(activation)]
        width = hidden_units
    layers.append(nn.Linear(width, num_classes))
    return layers


class SimpleCNN(nn.Sequential):
    """The paper's simple CNN.

    Args:
        conv_layers: Number of conv blocks (>= 1).
        linear_layers: Number of fully connected layers, the output layer included (>= 1).
        base_channels: ``C`` in ``3**(d+1) * C`` output channels of block ``d`` (default: the input channels).
        hidden_units: Width of the hidden linear layers.
        activation: ``"relu"`` or ``"none"`` (no activation anywhere).
        batchnorm: BatchNorm after each convolution.
        pooling: 2x2 max-pooling after each block while the map is larger than 1x1.
        in_channels, image_size, num_classes: The data's shape.

    Raises:
        ValueError: Naming the argument, for a depth below 1, an unknown activation, ...
    """

    def __init__(
        self,
        conv_layers: int = 2,
        linear_layers: int = 2,
        base_channels: int | None = None,
        hidden_units: int = 64,
        activation: str = "relu",
        batchnorm: bool = True,
        pooling: bool = True,
        in_channels: int = 1,
        image_size: int = 8,
        num_classes: int = 10,
    ) -> None:
        _check_int("conv_layers", conv_layers, 1)
        _check_int("linear_layers", linear_layers, 1)
        _check_int("hidden_units", hidden_units, 1)
        _check_int("in_channels", in_channels, 1)
        _check_int("image_size", image_size, 1)
        _check_int("num_classes", num_classes, 2)
        base = in_channels if base_channels is None else _check_int("base_channels", base_channels, 1)
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for d in range(conv_layers):
            out = 3 ** (d + 1) * base
            layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1))
            if batchnorm:
                layers.append(nn.BatchNorm2d(out))
            layers += _act(activation)
            if pooling and size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels = out
        layers.append(nn.Flatten())
        layers += _head(channels * size * size, linear_layers, hidden_units, num_classes, activation)
        super().__init__(*layers)


class DenseNet(nn.Sequential):
    """A fully connected net whose hidden widths shrink from ``width`` towards the classes.

    ``shape="linear"`` (the paper's ``dense_linear``) shrinks widths linearly; ``shape="poly"``
    (``dense_poly``) halves them layer by layer (a geometric, polynomially decaying profile).

    Raises:
        ValueError: Naming the argument, for bad depth, width, shape or activation.
    """

    def __init__(
        self,
        hidden_layers: int = 2,
        width: int = 256,
        shape: str = "linear",
        activation: str = "relu",
        in_channels: int = 1,
        image_size: int = 8,
        num_classes: int = 10,
    ) -> None:
        _check_int("hidden_layers", hidden_layers, 0)
        _check_int("width", width, 1)
        if shape not in ("linear", "poly"):
            raise ValueError(f"shape must be one of linear, poly; got {shape!r}")
        widths = []
        for i in range(hidden_layers):
            if shape == "linear":
                w = width - (width - num_classes) * i // max(1, hidden_layers)
            else:
                w = width // (2**i)
            widths.append(max(w, num_classes))
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_channels * image_size * image_size
        for w in widths:
            layers += [nn.Linear(prev, w), *_act(activation)]
            prev = w
        layers.append(nn.Linear(prev, num_classes))
        super().__init__(*layers)


TORCHVISION_MODELS = ("resnet18", "resnet34", "mobilenet_v3_small", "vgg11")


def torchvision_model(
    name: str = "resnet18", in_channels: int = 3, num_classes: int = 10, image_size: int = 32
) -> nn.Module:
    """A torchvision architecture with random weights (nothing is downloaded).

    A 1-channel input is repeated to 3 channels, and inputs smaller than 32 pixels are upsampled,
    so the stock architecture runs unchanged on digits or MNIST.
    """
    import torchvision

    if name not in TORCHVISION_MODELS:
        raise ValueError(f"name must be one of {', '.join(TORCHVISION_MODELS)}; got {name!r}")
    net = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    if in_channels == 3 and image_size >= 32:
        return net
    return nn.Sequential(_Adapt(in_channels, max(image_size, 32)), net)


class _Adapt(nn.Module):
    def __init__(self, in_channels: int, size: int) -> None:
        super().__init__()
        self.in_channels, self.size = in_channels, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] < self.size:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="nearest")
        return x
