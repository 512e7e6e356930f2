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
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten
from torch.utils.hooks import RemovableHandle

from lightning_green.callbacks.layer_profiler.kinds import layer_type
from lightning_green.callbacks.layer_profiler.replay import Capture, capture_call, capture_grads


class Clock:
    """Marks points in time: CUDA events on a GPU (no sync per mark), a monotonic clock on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def seconds(self, a: Any, b: Any) -> float:
        return a.elapsed_time(b) / 1000.0 if self.cuda else b - a

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


@dataclass(eq=False)
class Node:
    """One module of the tree and what its calls cost, summed over the profiled steps."""

    name: str
    module: nn.Module
    parent: str | None
    depth: int
    params: int  # its own parameters (not its children's)
    trainable: int  # its own parameters that the optimizer updates
    children: list[str] = field(default_factory=list)
    calls: int = 0
    total_fwd_s: float = 0.0
    self_fwd_s: float = 0.0
    total_bwd_s: float = 0.0
    self_bwd_s: float = 0.0
    attention_calls: int = 0  # scaled_dot_product_attention calls made by its own forward
    child_calls: Counter = field(default_factory=Counter)  # calls of each child made from its forward
    capture: Capture | None = None
    flops_per_call: int | None = None  # inclusive forward FLOPs

    @property
    def layer_type(self) -> str:
        return layer_type(self.module, calls_attention=self.attention_calls > 0)

    @property
    def module_type(self) -> str:
        return type(self.module).__name__


def build_tree(root: nn.Module) -> tuple[dict[str, Node], list[str]]:
    """Every module under ``root`` (root and torchmetrics excluded) as a :class:`Node`, in
    ``named_modules`` order; modules inside a ``torch.compile``'d module are left out (it is timed
    as one unit). Also returns the names left out that way (for the notes)."""
    try:
        from torchmetrics import Metric
    except ImportError:  # pragma: no cover
        Metric = ()
    nodes: dict[str, Node] = {}
    inside_compiled: list[str] = []
    compiled: list[str] = []
    seen: set[int] = set()
    for name, m in root.named_modules():
        if m is root or isinstance(m, Metric) or any(name.startswith(c + ".") for c in compiled):
            if any(name.startswith(c + ".") for c in compiled):
                inside_compiled.append(name)
            continue
        if id(m) in seen:  # named_modules yields each module once; stay safe with remove_duplicate
            continue
        seen.add(id(m))
        parent = name.rpartition(".")[0] or None
        while parent is not None and parent not in nodes:  # a Metric's or an excluded parent
            parent = parent.rpartition(".")[0] or None
        own = list(m.parameters(recurse=False))
        nodes[name] = Node(
            name=name,
            module=m,
            parent=parent,
            depth=name.count(".") + 1,
            params=sum(p.numel() for p in own),
            trainable=sum(p.numel() for p in own if p.requires_grad),
        )
        if parent is not None:
            nodes[parent].children.append(name)
        if type(m).__name__ == "OptimizedModule":
            compiled.append(name)
    return nodes, inside_compiled


class _Call:
    """One call of a module in the step in flight: marks (with the hook-overhead counter at each)."""

    __slots__ = ("b0", "b1", "f0", "f1", "input_grads", "kids", "node", "parent")

    def __init__(self, node: Node, parent: _Call | None) -> None:
        self.node, self.parent = node, parent
        self.f0: tuple[Any, float] | None = None
        self.f1: tuple[Any, float] | None = None
        self.b0: tuple[Any, float] | None = None
        self.b1: tuple[Any, float] | None = None
        self.kids: list[_Call] = []
        self.input_grads = False


class StepTimer:
    """Attaches hooks to every node, records one step's calls and adds them up at its end."""

    def __init__(self, nodes: dict[str, Node], clock: Clock, capture: bool) -> None:
        self.nodes, self.clock, self.capture = nodes, clock, capture
        self.cpu = not clock.cuda
        self.active = False
        self._handles: list[RemovableHandle] = []
        self._inplace: list[nn.Module] = []
        self._stack: list[_Call] = []
        self._calls: list[_Call] = []
        self._latest_bwd: dict[str, _Call] = {}
        self._ov = 0.0  # seconds spent inside the hooks in this step (CPU only)
        self._opt0: tuple[Any, float] | None = None
        self._opt1: tuple[Any, float] | None = None
        self._sdpa: Any = None
        # summed over the profiled steps
        self.steps = 0
        self.step_s = 0.0
        self.optimizer_s = 0.0
        self.overhead_s = 0.0

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

    def _spent(self, t_in: float) -> None:
        if self.cpu:
            self._ov += time.perf_counter() - t_in

    # ---------------------------------------------------------------- the step
    def begin_step(self) -> None:
        self._stack.clear()
        self._calls.clear()
        self._latest_bwd.clear()
        self._ov = 0.0
        self._opt0 = self._opt1 = None
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
        self.clock.sync()
        sec = self.clock.seconds

        def span(a: tuple[Any, float] | None, b: tuple[Any, float] | None) -> float:
            if a is None or b is None:
                return 0.0
            return max(0.0, sec(a[0], b[0]) - (b[1] - a[1]))

        totals: dict[int, tuple[float, float]] = {}
        for call in self._calls:
            totals[id(call)] = (span(call.f0, call.f1), span(call.b0, call.b1))
        for call in self._calls:
            f, b = totals[id(call)]
            kf = sum(totals[id(k)][0] for k in call.kids)
            kb = sum(totals[id(k)][1] for k in call.kids)
            n = call.node
            n.calls += 1
            n.total_fwd_s += f
            n.total_bwd_s += b
            n.self_fwd_s += max(0.0, f - kf)
            n.self_bwd_s += max(0.0, b - kb)
            n.child_calls.update(k.node.name for k in call.kids)
        self.step_s += span(self._step0, step1)
        self.optimizer_s += span(self._opt0, self._opt1)
        self.overhead_s += self._ov
        self.steps += 1
        self._calls.clear()
        self._stack.clear()
        self._latest_bwd.clear()

    # ---------------------------------------------------------------- hooks
    def _pre(self, node: Node):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if not self.active:
                return None
            t_in = time.perf_counter()
            call = _Call(node, self._stack[-1] if self._stack else None)
            if call.parent is not None:
                call.parent.kids.append(call)
            self._calls.append(call)
            self._stack.append(call)
            if self.capture and node.capture is None:
                node.capture = capture_call(module, args, kwargs)
            # An identity view on each input that needs a gradient: its gradient hook fires when
            # this call's own contribution is ready, whoever else uses the tensor.
            new_args, hooked = _views(args, self._input_grad(call))
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
            t_in = time.perf_counter()
            while self._stack:  # the matching call (an exception may have skipped a post hook)
                call = self._stack.pop()
                if call.node is node:
                    break
            else:
                self._spent(t_in)
                return
            call.f1 = mark
            flat = [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
            if self.capture and node.capture is not None and node.capture.out_meta is None:
                node.capture.out_meta = [(tuple(t.shape), t.dtype) for t in flat]
            outs = [t for t in flat if t.requires_grad]
            if outs:
                want_grads = self.capture and node.capture is not None and node.capture.grad_outs is None
                if want_grads:
                    node.capture.grad_outs = [None] * len(outs)
                for i, out in enumerate(outs):
                    out.register_hook(self._output_grad(call, i if want_grads else None))
            self._spent(t_in)

        return hook

    def _output_grad(self, call: _Call, index: int | None):
        def hook(grad: torch.Tensor) -> None:
            if not self.active:
                return
            t_in = time.perf_counter()
            if call.b0 is None:
                call.b0 = self._mark()
                self._latest_bwd[call.node.name] = call
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
