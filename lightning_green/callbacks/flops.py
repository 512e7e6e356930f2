"""FLOPs, counted by PyTorch's own ``torch.utils.flop_counter`` formulas.

- :func:`forward_flops`: one forward pass of a whole model on a sample input (for run summaries
  and the tuner's cost prior, before or outside training).
- :class:`OpFlops`: counts the FLOPs of the operations that run while it is active, without
  running anything itself. LayerEnergyProfiler turns it on inside a real training step's forward,
  so counting never calls the user's modules again (their hooks fire once per real forward).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode


def forward_flops(module: nn.Module, *inputs: Any, **kwargs: Any) -> int | None:
    """FLOPs of one forward pass of ``module`` on ``inputs`` (eval mode, no grad, so BatchNorm
    statistics and gradients stay untouched; the training mode is restored). ``None`` when the
    module cannot run on these inputs alone (it needs more arguments than were captured).

    This runs ``module`` once more, with its hooks: call it on a model before training, not on the
    modules of a model in training (LayerEnergyProfiler uses :class:`OpFlops` in the real step)."""
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


def _formulas() -> dict[Any, Callable[..., int]]:
    from torch.utils.flop_counter import flop_registry, sdpa_flop  # sdpa_flop takes tensors (shape-wrapped)

    out = dict(flop_registry)
    # The CPU kernel of scaled_dot_product_attention has no formula upstream (FlopCounterMode
    # decomposes it instead, which would change how the step computes).
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None and cpu_sdpa not in out:
        out[cpu_sdpa] = sdpa_flop
    return out


class OpFlops(TorchDispatchMode):
    """Counts the FLOPs of every operation run while active, and hands each count to ``sink``.

    Operations run exactly as they would without it (nothing is decomposed or run twice); only
    those with a formula in ``torch.utils.flop_counter`` (matrix products, convolutions,
    attention) count, as in ``FlopCounterMode``. ``spent`` receives the seconds (of ``clock``)
    the counting itself took after each operation, so a profiler can remove them from its
    intervals.

    Example::

        >>> import torch
        >>> counts = []
        >>> with OpFlops(counts.append):
        ...     _ = torch.ones(2, 3) @ torch.ones(3, 4)
        >>> counts
        [48]
    """

    def __init__(
        self,
        sink: Callable[[int], None],
        spent: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__()
        self.sink, self.spent, self.clock = sink, spent, clock
        self.formulas = _formulas()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        t_in = self.clock()
        formula = self.formulas.get(getattr(func, "_overloadpacket", None))
        if formula is not None:
            # a formula that does not fit these arguments: no count, never a failed step
            with contextlib.suppress(Exception):
                self.sink(int(formula(*args, **kwargs, out_val=out)))
        if self.spent is not None:
            self.spent(self.clock() - t_in)
        return out
