"""FLOPs of a forward pass, counted by PyTorch's own ``torch.utils.flop_counter``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def forward_flops(module: nn.Module, *inputs: Any, **kwargs: Any) -> int | None:
    """FLOPs of one forward pass of ``module`` on ``inputs`` (eval mode, no grad, so BatchNorm
    statistics and gradients stay untouched; the training mode is restored). ``None`` when the
    module cannot run on these inputs alone (it needs more arguments than were captured)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*inputs, **kwargs)
    except Exception:
        return None
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())
