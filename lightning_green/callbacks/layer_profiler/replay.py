"""Replays one module's forward and backward as it ran in the step, long enough for a counter.

At the first profiled call of each module the hooks capture what the call saw: its positional
and keyword inputs (copies, with their dtypes, strides and ``requires_grad``), the autocast state
of the input's device (enabled, dtype), the grad mode, the module's train/eval mode, and the
gradients that reached its outputs. The replay runs a copy of the module under that context (so
a bf16-mixed step is replayed in bf16, not fp32), back-propagates the captured output gradients,
and measures a loop of about ``window_s`` seconds with the meter. A call it cannot reproduce
(an error, outputs of another shape or dtype than in the step: data-dependent control flow,
side effects) is skipped with the reason, never guessed.

The copy runs without the module's hooks (a user's forward hooks fire for the real forwards only;
global hooks, ``nn.modules.module.register_module_forward_hook``, still fire). Each replay call
carries a fixed cost the step does not have (the loop, the module call, starting a backward): an
empty replay measures it, and it is subtracted from every module's figure. Modules are replayed
round-robin in a few passes, so a change in the machine's load hits them all alike.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from lightning_green.energy import Meter

if TYPE_CHECKING:
    from lightning_green.callbacks.layer_profiler.tree import Node

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
    raw: tuple[float, float] | None = None  # joules and seconds per call with the fixed cost of a call

    @property
    def raw_watts(self) -> float | None:
        """Power of a call with the replay's fixed cost: what stands in where a call is no longer
        than that cost and has no net power to speak of."""
        return self.raw[0] / self.raw[1] if self.raw and self.raw[1] > 0 else None


_HOOK_DICTS = (
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks",
)  # fmt: skip


def _hookless_copy(module: nn.Module, training: bool) -> nn.Module:
    """A copy (the real module's weights, gradients and statistics stay untouched) without hooks."""
    m = copy.deepcopy(module)
    m.train(training)
    for sub in m.modules():
        for name in _HOOK_DICTS:
            hooks = getattr(sub, name, None)
            if hooks is not None:
                hooks.clear()
        if getattr(sub, "inplace", False) is True:
            sub.inplace = False
    return m


class Replayer:
    """One module's captured call, ready to run again: :meth:`once` is a forward and backward."""

    def __init__(self, module: nn.Module, cap: Capture) -> None:
        self.cap = cap
        self.m = _hookless_copy(module, cap.training)
        self.args, self.kwargs = tree_map(_copy, cap.args), tree_map(_copy, cap.kwargs)
        flat = tree_flatten((self.args, self.kwargs))[0]
        self.leaves = [t for t in flat if isinstance(t, torch.Tensor) and t.requires_grad]
        self.params = [p for p in self.m.parameters() if p.requires_grad]
        self.grads = cap.grad_outs or []

    def once(self) -> list[torch.Tensor]:
        cap = self.cap
        for t in self.leaves:
            t.grad = None
        for p in self.params:
            p.grad = None
        with (
            torch.set_grad_enabled(cap.grad_enabled),
            torch.autocast(cap.device_type, dtype=cap.autocast_dtype, enabled=cap.autocast),
        ):
            out = self.m(*self.args, **self.kwargs)
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        pairs = [
            (o, g)
            for o, g in zip([o for o in outs if o.requires_grad], self.grads, strict=False)
            if g is not None
        ]
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        return outs

    def check(self) -> str:
        """Run once: an empty string, or why this call cannot be replayed faithfully."""
        try:
            outs = self.once()
        except Exception as err:
            return f"not replayable on its captured inputs ({type(err).__name__}: {err})"[:300]
        meta = [(tuple(o.shape), o.dtype) for o in outs]
        if self.cap.out_meta is not None and meta != self.cap.out_meta:
            return (
                f"the replay's outputs {meta} differ from the step's {self.cap.out_meta} "
                "(data-dependent control flow or side effects): skipped"
            )
        return ""

    def seconds_per_call(self, sync: Any, budget_s: float) -> float:
        """Wall seconds of one call, from at least 3 calls over up to ``budget_s``."""
        sync()
        t0, n = time.perf_counter(), 0
        while n < 3 or time.perf_counter() - t0 < budget_s:
            self.once()
            n += 1
        sync()
        return (time.perf_counter() - t0) / n


class _Empty(nn.Module):
    """A module that does nothing: its replay is the fixed cost of a replay call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)


def empty_capture(like: Capture) -> Capture:
    """A call of :class:`_Empty` on one element, under ``like``'s device and context."""
    device = next((t.device for t in tree_flatten(like.args)[0] if isinstance(t, torch.Tensor)), None)
    x = torch.zeros(1, device=device, requires_grad=True)
    return Capture(
        args=(x,), kwargs={}, device_type=like.device_type, autocast=like.autocast,
        autocast_dtype=like.autocast_dtype, grad_enabled=True, training=like.training,
        grad_outs=[torch.ones(1, device=device)], out_meta=[((1,), torch.float32)],
    )  # fmt: skip


#: Passes over the modules at most; each is a meter window per module.
MAX_PASSES = 4


class Loop:
    """One module's replays, measured over passes: joules, seconds and calls add up across them.

    Each pass makes a fresh copy (one module's copy is alive at a time), runs it once unmeasured,
    then ``iters`` calls inside a meter window. Seconds are the meter's (wall) or, with ``now``, the
    clock's (CPU time, where the profiler times by CPU time).
    """

    def __init__(self, module: nn.Module, cap: Capture, sync: Any, now: Any = None) -> None:
        self.module, self.cap, self.sync, self.now = module, cap, sync, now
        self.note = ""
        self.iters = 0
        self.joules = self.seconds = 0.0
        self.calls = 0

    def run(self, meter: Meter, pass_s: float) -> None:
        if self.note:
            return
        r = Replayer(self.module, self.cap)
        if not self.iters:
            self.note = r.check()
            if self.note:
                return
            per_call = r.seconds_per_call(self.sync, min(0.05, pass_s / 4))
            self.iters = max(3, math.ceil(pass_s / max(per_call, 1e-9)))
        else:
            r.once()  # warm: the copy's first call allocates
        self.sync()
        try:
            meter.begin_window(_REPLAY_WINDOW)
            c0 = self.now() if self.now else 0.0
            for _ in range(self.iters):
                r.once()
            self.sync()
            c1 = self.now() if self.now else 0.0
            reading = meter.end_window(_REPLAY_WINDOW)
        except Exception as err:  # a measurement failure never ends training
            meter.discard_window(_REPLAY_WINDOW)
            self.note = f"the meter failed in replay ({err!r})"
            return
        if not reading.complete or not reading.joules > 0:
            self.note = "the replay loop measured 0 J (the counter did not advance)"
            return
        self.joules += reading.joules
        self.seconds += (c1 - c0) if self.now else reading.seconds
        self.calls += self.iters

    def per_call(self) -> tuple[float, float] | None:
        if self.note or not self.calls:
            return None
        return self.joules / self.calls, self.seconds / self.calls

    def result(self, overhead: tuple[float, float] | None) -> ReplayResult:
        """Joules and seconds per call, less the empty replay's (``overhead``), at least 0."""
        got = self.per_call()
        if got is None:
            return ReplayResult(None, None, self.note or "not replayed")
        j, s = got
        if overhead is not None:
            j, s = max(0.0, j - overhead[0]), max(0.0, s - overhead[1])
        return ReplayResult(j, s, raw=got)


def replay_modules(
    nodes: list[Node], meter: Meter, sync: Any, window_s: float, min_pass_s: float,
    now: Any = None, say: Any = print,
) -> tuple[dict[str, ReplayResult], tuple[float, float] | None]:  # fmt: skip
    """Replay every module that ran and was captured, about ``window_s`` seconds each, in up to
    :data:`MAX_PASSES` round-robin passes of at least ``min_pass_s`` (a counter's shortest useful
    window). Modules with the same structure, inputs and context share one replay. Returns each
    module's result by name (with why, where it has none) and the empty replay's joules and
    seconds per call, which every result already has subtracted."""
    todo = [n for n in nodes if n.calls and n.capture is not None]
    groups: dict[Any, list[Node]] = {}
    for node in todo:
        try:
            key = node.capture.signature(node.module)  # type: ignore[union-attr]
        except Exception:
            key = ("unique", node.name)
        groups.setdefault(key, []).append(node)
    passes = max(1, min(MAX_PASSES, int(window_s // min_pass_s)))
    say(
        f"LayerEnergyProfiler: replaying {len(groups)} distinct module(s) of {len(todo)} in {passes} "
        f"pass(es), about {(len(groups) + 1) * window_s:.0f} s"
    )
    loops = {
        members[0].name: Loop(members[0].module, members[0].capture, sync, now)  # type: ignore[arg-type]
        for members in groups.values()
        if not members[0].compiled
    }
    empty = Loop(_Empty(), empty_capture(todo[0].capture), sync, now) if todo else None  # type: ignore[arg-type]
    for i in range(passes):
        say(f"LayerEnergyProfiler: replay pass {i + 1}/{passes}")
        for loop in ([empty] if empty else []) + list(loops.values()):
            loop.run(meter, window_s / passes)
    overhead = empty.per_call() if empty else None
    out: dict[str, ReplayResult] = {}
    for members in groups.values():
        first = members[0]
        loop = loops.get(first.name)
        result = (
            loop.result(overhead)
            if loop
            else ReplayResult(None, None, "torch.compile'd modules are not replayed")
        )
        out[first.name] = result
        for node in members[1:]:
            out[node.name] = replace(result, shared_with=first.name)
    for node in nodes:
        if node.name not in out:
            why = "never called in the profiled steps" if not node.calls else "no input was captured"
            out[node.name] = ReplayResult(None, None, why)
    return out, overhead
