"""Times every module of the tree in profiled training steps: forward, backward, optimizer.

Each call of a module is an interval between two marks (CUDA events on a GPU, so nothing
synchronises inside a step; a monotonic clock on CPU). Calls nest: a call's *total* time is its
interval, its *self* time is the total minus the totals of the calls made inside it (its
children, found at run time, so a module shared between parents is subtracted from the parent
that called it). Backward intervals run from the first gradient of a call's outputs to the
moment its own contribution to its inputs' gradients is ready (an identity view on each input
isolates that contribution from other users of the same tensor), or, for a call whose inputs need
no gradient, to the last accumulation of a parameter gradient below it.

On CPU the hooks' own time is measured and removed from every interval it fell into, so a
parent's self time is not the overhead of its children's hooks.

The clock (CUDA events, the wall clock or CPU time) is chosen in :mod:`.clocks`.

**Gradient checkpointing.** A module whose forward runs again during backward (``torch.utils.
checkpoint``) is not called again by the step: the recomputation is counted apart
(``recomputed_calls``), its time is that module's forward time and is removed from the backward
interval it ran in, and its FLOPs are not counted twice. With the reentrant variant
(``use_reentrant=True``), the children's backward runs inside the checkpoint's backward and is
their parent's own time.

**FLOPs** are counted inside one real profiled step (:class:`~lightning_green.callbacks.flops.OpFlops`
active during the forward of the top-level modules, each operation credited to the innermost module
call running it): nothing runs twice, so a user's own hooks see only the real forwards.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten
from torch.utils.hooks import RemovableHandle

from lightning_green.callbacks.flops import OpFlops
from lightning_green.callbacks.layer_profiler.clocks import Clock
from lightning_green.callbacks.layer_profiler.replay import capture_call, capture_grads
from lightning_green.callbacks.layer_profiler.tree import Node


def _in_backward() -> bool:
    """Whether the autograd engine is running a backward pass now (a checkpoint's recomputation)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


def _in_backward() -> bool:
    """Whether the autograd engine is running a backward pass now (a checkpoint's recomputation)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


class _Call:
    """One call of a module in the step in flight: marks (with the hook-overhead counter at each)."""

    __slots__ = ("b0", "b1", "f0", "f1", "flops", "input_grads", "kids", "node", "parent", "paused",
                 "recompute", "recomputes")  # fmt: skip

    def __init__(self, node: Node, parent: _Call | None, recompute: bool = False) -> None:
        self.node, self.parent, self.recompute = node, parent, recompute
        self.f0: tuple[Any, float] | None = None
        self.f1: tuple[Any, float] | None = None
        self.b0: tuple[Any, float] | None = None
        self.b1: tuple[Any, float] | None = None
        self.kids: list[_Call] = []
        self.recomputes: list[_Call] = []  # recomputations that ran inside its backward interval
        self.input_grads = False
        self.flops = 0
        self.paused = False  # FLOP counting paused around it (a compiled module)


class StepTimer:
    """Attaches hooks to every node, records one step's calls and adds them up at its end."""

    def __init__(self, nodes: dict[str, Node], clock: Clock, capture: bool) -> None:
        self.nodes, self.clock, self.capture = nodes, clock, capture
        self.active = False
        self._handles: list[RemovableHandle] = []
        self._inplace: list[nn.Module] = []
        self._stack: list[_Call] = []
        self._calls: list[_Call] = []
        self._latest_bwd: dict[str, _Call] = {}
        self._bwd_started: list[_Call] = []  # calls in the order their backward began
        self._ov = 0.0  # seconds spent inside the hooks in this step (CPU clocks only)
        self._opt0: tuple[Any, float] | None = None
        self._opt1: tuple[Any, float] | None = None
        self._sdpa: Any = None
        self._flop_mode: OpFlops | None = None
        self._counting = False
        # summed over the profiled steps
        self.steps = 0
        self.step_s = 0.0
        self.optimizer_s = 0.0
        self.overhead_s = 0.0
        self.flop_steps = 0  # steps whose FLOPs were counted

    @property
    def cpu(self) -> bool:
        """Whether marks are read on the host (the hooks' own time is then measured and removed)."""
        return not self.clock.cuda

    # ---------------------------------------------------------------- attach / detach
    def attach(self, optimizers: list[torch.optim.Optimizer]) -> None:
        for node in self.nodes.values():
            m = node.module
            self._handles.append(m.register_forward_pre_hook(self._pre(node), with_kwargs=True))
            self._handles.append(m.register_forward_hook(self._post(node), with_kwargs=True))
            for p in m.parameters(recurse=False):
                if p.requires_grad:
                    self._handles.append(p.register_post_accumulate_grad_hook(self._accumulated(node)))
            if getattr(m, "inplace", False) is True:  # hooks must see the input before it is overwritten
                m.inplace = False
                self._inplace.append(m)
        for opt in optimizers:
            self._handles.append(opt.register_step_post_hook(self._optimizer_done))
        self._patch_attention()

    def detach(self) -> None:
        self._stop_counting()
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for m in self._inplace:
            m.inplace = True
        self._inplace.clear()
        self._unpatch_attention()
        self.active = False

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def _patch_attention(self) -> None:
        """Count ``F.scaled_dot_product_attention`` calls per calling module (attention cores written
        as a function call inside a parent's forward)."""
        F = torch.nn.functional
        original = F.scaled_dot_product_attention
        if getattr(original, "_lg_counting", False):
            return

        def counting(*args: Any, **kwargs: Any) -> Any:
            if self.active and self._stack:
                self._stack[-1].node.attention_calls += 1
            return original(*args, **kwargs)

        counting._lg_counting = True  # type: ignore[attr-defined]
        self._sdpa = original
        F.scaled_dot_product_attention = counting

    def _unpatch_attention(self) -> None:
        if self._sdpa is not None:
            torch.nn.functional.scaled_dot_product_attention = self._sdpa
            self._sdpa = None

    # ---------------------------------------------------------------- marks
    def _mark(self) -> tuple[Any, float]:
        return (self.clock.mark(), self._ov)

    def _now(self) -> float:
        return self.clock.now() if self.cpu else 0.0

    def _spent(self, t_in: float) -> None:
        if self.cpu:
            self._ov += self.clock.now() - t_in

    def _add_overhead(self, seconds: float) -> None:
        if self.cpu:
            self._ov += seconds

    # ---------------------------------------------------------------- FLOP counting
    def _count(self, flops: int) -> None:
        if self._stack:
            self._stack[-1].flops += flops

    def _start_counting(self) -> None:
        if self._flop_mode is None:
            self._flop_mode = OpFlops(
                self._count, self._add_overhead, self.clock.now if self.cpu else time.perf_counter
            )
            self._flop_mode.__enter__()

    def _stop_counting(self) -> None:
        if self._flop_mode is not None:
            mode, self._flop_mode = self._flop_mode, None
            with contextlib.suppress(Exception):  # another mode left above it (a forward that raised)
                mode.__exit__(None, None, None)

    # ---------------------------------------------------------------- the step
    def begin_step(self, count_flops: bool = False) -> None:
        """Start a profiled step; with ``count_flops`` its forward's FLOPs are counted too."""
        self._stack.clear()
        self._calls.clear()
        self._latest_bwd.clear()
        self._bwd_started.clear()
        self._ov = 0.0
        self._opt0 = self._opt1 = None
        self._counting = count_flops
        self.active = True
        self._step0 = self._mark()

    def backward_done(self) -> None:
        """The optimizer's work starts here (gradients are complete; clipping and the update follow)."""
        if self.active:
            self._opt0 = self._mark()

    def _optimizer_done(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.active:
            self._opt1 = self._mark()

    def end_step(self) -> None:
        """Close the step: synchronise once, turn the marks into seconds, add them to the nodes."""
        if not self.active:
            return
        step1 = self._mark()
        self.active = False
        self._stop_counting()
        self.clock.sync()
        self._add_calls(self.clock.seconds)
        self.step_s += _span(self.clock.seconds, self._step0, step1)
        self.optimizer_s += _span(self.clock.seconds, self._opt0, self._opt1)
        self.overhead_s += self._ov
        self.steps += 1
        if self._counting:
            self.flop_steps += 1
            self._counting = False
        self._calls.clear()
        self._stack.clear()
        self._latest_bwd.clear()
        self._bwd_started.clear()

    def _add_calls(self, sec: Callable[[Any, Any], float]) -> None:
        totals = {id(c): (_span(sec, c.f0, c.f1), _span(sec, c.b0, c.b1)) for c in self._calls}
        inclusive_flops: dict[int, int] = {}
        for call in reversed(self._calls):  # children before their callers
            inclusive_flops[id(call)] = call.flops + sum(inclusive_flops[id(k)] for k in call.kids)
        for call in self._calls:
            f, b = totals[id(call)]
            kf = sum(totals[id(k)][0] for k in call.kids)
            kb = sum(totals[id(k)][1] for k in call.kids) + sum(totals[id(r)][0] for r in call.recomputes)
            n = call.node
            n.self_fwd_s += max(0.0, f - kf)
            n.total_fwd_s += f
            if call.recompute:  # forward work done again: its time, not another call of the step
                n.recomputed_calls += 1
                continue
            n.calls += 1
            n.total_bwd_s += b
            n.self_bwd_s += max(0.0, b - kb)
            n.child_calls.update(k.node.name for k in call.kids)
            if self._counting:
                n.own_flops += call.flops
                n.total_flops += inclusive_flops[id(call)]

    # ---------------------------------------------------------------- hooks
    def _pre(self, node: Node):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if not self.active:
                return None
            t_in = self._now()
            parent = self._stack[-1] if self._stack else None
            call = _Call(node, parent, recompute=_in_backward())
            if parent is not None:
                parent.kids.append(call)
            elif call.recompute:
                host = next((c for c in reversed(self._bwd_started) if c.b1 is None), None)
                if host is not None:
                    host.recomputes.append(call)
            self._calls.append(call)
            self._stack.append(call)
            new_args, hooked = args, False
            if not call.recompute:
                if self.capture and node.capture is None:
                    node.capture = capture_call(module, args, kwargs)
                # An identity view on each input that needs a gradient: its gradient hook fires when
                # this call's own contribution is ready, whoever else uses the tensor.
                if torch.is_grad_enabled():
                    new_args, hooked = _views(args, self._input_grad(call))
                if self._counting and parent is None and not node.compiled:
                    self._start_counting()
                elif node.compiled and self._flop_mode is not None:
                    self._stop_counting()  # a dispatch mode would stop torch.compile's graph
                    call.paused = True
            call.input_grads = hooked
            self._spent(t_in)
            call.f0 = self._mark()
            return (new_args, kwargs) if hooked else None

        return hook

    def _post(self, node: Node):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if not self.active or not self._stack:
                return
            mark = self._mark()
            t_in = self._now()
            while self._stack:  # the matching call (an exception may have skipped a post hook)
                call = self._stack.pop()
                if call.node is node:
                    break
            else:
                self._spent(t_in)
                return
            call.f1 = mark
            if call.paused:
                self._start_counting()
            elif call.parent is None:
                self._stop_counting()
            if not call.recompute:
                self._watch_outputs(call, output)
            self._spent(t_in)

        return hook

    def _watch_outputs(self, call: _Call, output: Any) -> None:
        node = call.node
        flat = [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
        if self.capture and node.capture is not None and node.capture.out_meta is None:
            node.capture.out_meta = [(tuple(t.shape), t.dtype) for t in flat]
        outs = [t for t in flat if t.requires_grad]
        if outs:
            want_grads = self.capture and node.capture is not None and node.capture.grad_outs is None
            if want_grads:
                node.capture.grad_outs = [None] * len(outs)  # type: ignore[union-attr]
            for i, out in enumerate(outs):
                out.register_hook(self._output_grad(call, i if want_grads else None))

    def _output_grad(self, call: _Call, index: int | None):
        def hook(grad: torch.Tensor) -> None:
            if not self.active:
                return
            t_in = self._now()
            if call.b0 is None:
                call.b0 = self._mark()
                self._latest_bwd[call.node.name] = call
                self._bwd_started.append(call)
            if index is not None:
                capture_grads(call.node.capture, index, grad)
            self._spent(t_in)

        return hook

    def _input_grad(self, call: _Call):
        def hook(grad: torch.Tensor) -> None:
            if self.active and call.b0 is not None:
                call.b1 = self._mark()

        return hook

    def _accumulated(self, node: Node):
        def hook(param: torch.Tensor) -> None:
            if not self.active:
                return
            call = self._latest_bwd.get(node.name)
            mark = None
            while call is not None:  # this call and its callers whose inputs need no gradient
                if call.b0 is not None and not call.input_grads:
                    mark = mark or self._mark()
                    call.b1 = mark
                call = call.parent

        return hook


def _span(
    sec: Callable[[Any, Any], float], a: tuple[Any, float] | None, b: tuple[Any, float] | None
) -> float:
    """Seconds between two marks, less the hooks' own time between them."""
    if a is None or b is None:
        return 0.0
    return max(0.0, sec(a[0], b[0]) - (b[1] - a[1]))


def _views(args: tuple, hook: Any) -> tuple[tuple, bool]:
    out, hooked = [], False
    for a in args:
        if isinstance(a, torch.Tensor) and a.requires_grad:
            v = a.view_as(a)
            v.register_hook(hook)
            out.append(v)
            hooked = True
        else:
            out.append(a)
    return tuple(out), hooked
