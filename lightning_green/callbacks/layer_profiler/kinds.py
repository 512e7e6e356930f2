"""Which kind of layer a module is, in the user's words (Conv, Linear, Attention, ...)."""

from __future__ import annotations

from torch import nn

LAYER_TYPES = (
    "Conv", "Linear", "Attention", "Embedding", "ReLU", "Activation", "BatchNorm", "Norm", "Pooling",
    "Dropout", "Composite", "Compiled", "Other",
)  # fmt: skip
#: What each type holds, for the docs and the tables' legends.
LAYER_TYPE_HELP = {
    "Attention": "nn.MultiheadAttention, and modules whose own forward calls scaled_dot_product_attention",
    "Composite": "the own work of modules with children (residual additions, reshapes, functional ops "
    "between child calls; about zero for containers such as nn.Sequential)",
    "Compiled": "a torch.compile'd module, timed as one unit (the modules inside it are not attributable)",
    "Other": "leaf modules of no known kind (nn.Flatten, user layers without children)",
}

_ACTIVATIONS = (
    nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Softmax,
    nn.LogSoftmax, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.PReLU, nn.Softplus,
)  # fmt: skip
_POOLS = (
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
)  # fmt: skip
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, *(
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
))  # fmt: skip


def layer_type(module: nn.Module, calls_attention: bool = False) -> str:
    """One of :data:`LAYER_TYPES`; ``calls_attention``: its own forward called scaled_dot_product_attention."""
    if type(module).__name__ == "OptimizedModule":
        return "Compiled"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "Conv"
    if isinstance(module, (nn.Linear, nn.Bilinear)):
        return "Linear"
    if isinstance(module, nn.MultiheadAttention) or calls_attention:
        return "Attention"
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "Embedding"
    if isinstance(module, (nn.ReLU, nn.ReLU6)):
        return "ReLU"
    if isinstance(module, _ACTIVATIONS):
        return "Activation"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "BatchNorm"
    if isinstance(module, _NORMS):
        return "Norm"
    if isinstance(module, _POOLS):
        return "Pooling"
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return "Dropout"
    if next(module.children(), None) is not None:
        return "Composite"
    return "Other"
