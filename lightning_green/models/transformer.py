"""A nanoGPT-style transformer classifier of configurable depth and width.

Written the way users write transformers: the attention core is a call to
``torch.nn.functional.scaled_dot_product_attention`` inside ``SelfAttention.forward`` (a module
with children), and each block adds its residuals in its own ``forward``. Each image row of
``patch`` pixels (or each ``patch x patch`` square) becomes one token, so it trains on digits,
MNIST or CIFAR-sized inputs unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lightning_green._checks import check_int as _check_int


class SelfAttention(nn.Module):
    """Multi-head self-attention: a fused q/k/v projection, SDPA, an output projection."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width must be a multiple of heads ({heads}); got {width}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).contiguous().view(b, t, c))


class MLP(nn.Module):
    def __init__(self, width: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc = nn.Linear(width, 4 * width)
        self.act = nn.GELU()
        self.proj = nn.Linear(4 * width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block; the residual additions are this module's own work."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = MLP(width, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TransformerClassifier(nn.Module):
    """Tokens from image patches, ``depth`` transformer blocks, mean pooling, a linear head.

    Args:
        depth: Number of blocks (>= 1).
        width: Embedding width (a multiple of ``heads``).
        heads: Attention heads.
        patch: Patch side in pixels; ``0`` makes each image row one token.
        dropout: Dropout in attention and MLP.
        in_channels, image_size, num_classes: The data's shape.

    Raises:
        ValueError: Naming the argument.
    """

    def __init__(
        self,
        depth: int = 4,
        width: int = 64,
        heads: int = 4,
        patch: int = 0,
        dropout: float = 0.0,
        in_channels: int = 1,
        image_size: int = 8,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        for name, value, lo in (("depth", depth, 1), ("width", width, 1), ("heads", heads, 1),
                                ("patch", patch, 0), ("in_channels", in_channels, 1),
                                ("image_size", image_size, 1), ("num_classes", num_classes, 2)):  # fmt: skip
            _check_int(name, value, lo)
        if patch and image_size % patch:
            raise ValueError(f"patch must divide image_size ({image_size}); got {patch}")
        self.patch = patch
        tokens = image_size if not patch else (image_size // patch) ** 2
        token_dim = in_channels * (image_size if not patch else patch * patch)
        self.embed = nn.Linear(token_dim, width)
        self.pos = nn.Embedding(tokens, width)
        self.blocks = nn.Sequential(*(Block(width, heads, dropout) for _ in range(depth)))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if not self.patch:
            return x.permute(0, 2, 1, 3).reshape(b, h, c * w)
        p = self.patch
        x = x.unfold(2, p, p).unfold(3, p, p)  # b, c, h/p, w/p, p, p
        return x.permute(0, 2, 3, 1, 4, 5).reshape(b, (h // p) * (w // p), c * p * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tokens(x)
        h = self.embed(t) + self.pos(torch.arange(t.shape[1], device=x.device))
        return self.head(self.ln(self.blocks(h)).mean(dim=1))
