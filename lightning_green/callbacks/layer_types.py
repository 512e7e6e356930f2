"""Which kind of layer a module is, in the user's words (Conv, Linear, ReLU, ...)."""

from __future__ import annotations

from torch import nn

LAYER_TYPES = ("Conv", "Linear", "ReLU", "Activation", "BatchNorm", "Norm", "Pooling", "Dropout", "Other")

_ACTIVATIONS = (
    nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Softmax,
    nn.LogSoftmax, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.PReLU, nn.Softplus,
)  # fmt: skip
_POOLS = (
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
)  # fmt: skip


def layer_type(module: nn.Module) -> str:
    """One of :data:`LAYER_TYPES`."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return "Conv"
    if isinstance(module, (nn.Linear, nn.Bilinear)):
        return "Linear"
    if isinstance(module, (nn.ReLU, nn.ReLU6)):
        return "ReLU"
    if isinstance(module, _ACTIVATIONS):
        return "Activation"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "BatchNorm"
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)):
        return "Norm"
    if isinstance(module, _POOLS):
        return "Pooling"
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return "Dropout"
    return "Other"
