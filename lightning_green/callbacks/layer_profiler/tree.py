"""The module tree a profile covers: one :class:`Node` per module, with what its calls cost."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from lightning_green.callbacks.layer_profiler.kinds import layer_type
from lightning_green.callbacks.layer_profiler.replay import Capture


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
    compiled: bool = False  # a torch.compile'd module (timed as one unit)
    recomputed_calls: int = 0  # forwards run again in backward (gradient checkpointing)
    own_flops: int = 0  # forward FLOPs of its own operations, over the steps that counted them
    total_flops: int = 0  # with the calls it made to its children

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
            compiled=type(m).__name__ == "OptimizedModule",
        )
        if parent is not None:
            nodes[parent].children.append(name)
        if type(m).__name__ == "OptimizedModule":
            compiled.append(name)
    return nodes, inside_compiled


def profiled_tree(root: nn.Module, warn: Callable[[str], None]) -> tuple[dict[str, Node], list[str]]:
    """The nodes a profile covers, and notes on what it cannot attribute. A compiled LightningModule
    has none (with a warning): hooks inside a compiled forward would break its graph.

    Raises:
        ValueError: If ``root`` has no submodules at all.
    """
    if getattr(root, "_compiler_ctx", None) is not None:
        warn(
            "LayerEnergyProfiler: the LightningModule itself is torch.compile'd; hooks inside a compiled "
            "forward would break its graph, so no module is profiled. Compile submodules instead (each "
            "is then timed as one unit)."
        )
        return {}, []
    nodes, inside = build_tree(root)
    if not nodes:
        raise ValueError(
            f"LayerEnergyProfiler found no modules in {type(root).__name__}: it profiles nn.Module layers "
            "(nn.Conv2d, nn.Linear, ...); register your layers as submodules"
        )
    notes = [
        f"{len(inside)} module(s) inside torch.compile'd modules are not attributable (each compiled "
        "module is timed as one unit)"
    ]
    return nodes, notes if inside else []
