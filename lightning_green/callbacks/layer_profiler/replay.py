"""Replays one module's forward and backward as it ran in the step, long enough for a counter.

At the first profiled call of each module the hooks capture what the call saw: its positional
and keyword inputs (copies, with their dtypes, strides and ``requires_grad``), the autocast state
of the input's device (enabled, dtype), the grad mode, the module's train/eval mode, and the
gradients that reached its outputs. The replay runs a copy of the module under that context (so
a bf16-mixed step is replayed in bf16, not fp32), back-propagates the captured output gradients,
and measures a loop of about ``window_s`` seconds with the meter. A call it cannot reproduce
(an error, outputs of another shape or dtype than in the step: data-dependent control flow,
side effects) is skipped with the reason, never guessed.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from lightning_green.energy import Meter

_REPLAY_WINDOW = "layer_profiler/replay"


@dataclass
class Capture:
    """What one call of a module saw in the step."""

    args: tuple
    kwargs: dict
    device_type: str
    autocast: bool
    autocast_dtype: torch.dtype
    grad_enabled: bool
    training: bool
    grad_outs: list[torch.Tensor | None] | None = None  # per output that needed a gradient
    out_meta: list[tuple[tuple[int, ...], torch.dtype]] | None = None

    def signature(self, module: nn.Module) -> tuple:
        """Equal for calls a single replay stands for (same structure, inputs and context)."""

        def sig(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                return ("T", tuple(x.shape), x.dtype, x.stride(), x.requires_grad, x.device.type)
            return repr(x)[:200]

        params = tuple((n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in module.named_parameters())
        grads = tuple(g is not None for g in self.grad_outs or ())
        return (
            type(module).__qualname__, repr(module), params,
            tuple(sig(a) for a in tree_flatten(self.args)[0]),
            tuple(sorted((k, sig(v)) for k, v in self.kwargs.items())),
            self.device_type, self.autocast, self.autocast_dtype, self.grad_enabled, self.training, grads,
        )  # fmt: skip


def _copy(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        y = x.detach().clone()  # clone keeps the memory format (strides)
        y.requires_grad_(x.requires_grad and (x.is_floating_point() or x.is_complex()))
        return y
    return x


def capture_call(module: nn.Module, args: tuple, kwargs: dict) -> Capture:
    first = next((t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)), None)
    if first is None:
        first = next(module.parameters(), None)
    device_type = first.device.type if first is not None else "cpu"
    if device_type not in ("cuda", "cpu", "xpu", "mps", "hpu"):
        device_type = "cpu"
    return Capture(
        args=tree_map(_copy, args),
        kwargs=tree_map(_copy, kwargs),
        device_type=device_type,
        autocast=torch.is_autocast_enabled(device_type),
        autocast_dtype=torch.get_autocast_dtype(device_type),
        grad_enabled=torch.is_grad_enabled(),
        training=module.training,
    )


def capture_grads(capture: Capture | None, index: int, grad: torch.Tensor) -> None:
    if capture is not None and capture.grad_outs is not None and capture.grad_outs[index] is None:
        capture.grad_outs[index] = grad.detach().clone()


@dataclass
class ReplayResult:
    joules_per_call: float | None
    seconds_per_call: float | None
    note: str = ""
    shared_with: str = ""  # the module whose replay this one reuses (same structure, inputs, context)


def replay(module: nn.Module, cap: Capture, meter: Meter, sync: Any, window_s: float) -> ReplayResult:
    """Joules and seconds of one forward+backward of ``module`` as captured, from a loop of about
    ``window_s`` seconds. ``sync`` waits for the device (``torch.cuda.synchronize`` or a no-op)."""
    m = copy.deepcopy(module)  # the real module's weights, gradients and statistics stay untouched
    m.train(cap.training)
    for sub in m.modules():
        if getattr(sub, "inplace", False) is True:
            sub.inplace = False
    args, kwargs = tree_map(_copy, cap.args), tree_map(_copy, cap.kwargs)
    leaves = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and t.requires_grad]
    params = [p for p in m.parameters() if p.requires_grad]
    grads = cap.grad_outs or []

    def once() -> list[torch.Tensor]:
        for t in leaves:
            t.grad = None
        for p in params:
            p.grad = None
        with (
            torch.set_grad_enabled(cap.grad_enabled),
            torch.autocast(cap.device_type, dtype=cap.autocast_dtype, enabled=cap.autocast),
        ):
            out = m(*args, **kwargs)
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        pairs = [
            (o, g) for o, g in zip([o for o in outs if o.requires_grad], grads, strict=False) if g is not None
        ]
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        return outs

    try:
        outs = once()
    except Exception as err:
        return ReplayResult(
            None, None, f"not replayable on its captured inputs ({type(err).__name__}: {err})"[:300]
        )
    meta = [(tuple(o.shape), o.dtype) for o in outs]
    if cap.out_meta is not None and meta != cap.out_meta:
        return ReplayResult(
            None, None, f"the replay's outputs {meta} differ from the step's {cap.out_meta} "
            "(data-dependent control flow or side effects): skipped"
        )  # fmt: skip
    sync()
    t0, n = time.perf_counter(), 0
    while n < 3 or time.perf_counter() - t0 < min(0.05, window_s / 4):
        once()
        n += 1
    sync()
    per_iter = (time.perf_counter() - t0) / n
    iters = max(3, math.ceil(window_s / max(per_iter, 1e-9)))
    try:
        meter.begin_window(_REPLAY_WINDOW)
        for _ in range(iters):
            once()
        reading = meter.end_window(_REPLAY_WINDOW)
    except Exception as err:  # a measurement failure never ends training
        meter.discard_window(_REPLAY_WINDOW)
        return ReplayResult(None, None, f"the meter failed in replay ({err!r})")
    if not reading.complete or not reading.joules > 0:
        return ReplayResult(
            None, reading.seconds / iters, "the replay loop measured 0 J (the counter did not advance)"
        )
    return ReplayResult(reading.joules / iters, reading.seconds / iters)
