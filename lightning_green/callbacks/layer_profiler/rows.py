"""The profile's tables as pure functions: per-module rows from the timed tree and the measured
step, and the per-layer-type table from the rows.

:func:`module_stats` turns the timed nodes into per-step figures (:class:`ModuleStats`); from
those, the measured step (:class:`StepInputs`) and the replays, :func:`build_rows` computes every
method of :data:`~.attribution.METHODS` that has what it needs, takes the chosen mode's figures
and lays out the rows (``layers.csv``). Nothing here touches hooks, meters or Lightning.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lightning_green.callbacks.layer_profiler import attribution as attr
from lightning_green.callbacks.layer_profiler.kinds import LAYER_TYPES
from lightning_green.callbacks.layer_profiler.outputs import UNATTRIBUTED
from lightning_green.callbacks.layer_profiler.replay import ReplayResult
from lightning_green.callbacks.layer_profiler.tree import Node

UNATTRIBUTED_NOTE = (
    "the step outside the modules' forward/backward and the optimizer update: data loading, loss, "
    "zero_grad, framework"
)


@dataclass(frozen=True)
class ModuleStats:
    """One module's figures per training step, from the profiled steps."""

    name: str
    parent: str | None
    depth: int
    module_type: str
    layer_type: str
    params: int  # its own
    total_params: int  # with its children's
    trainable: int  # its own parameters the optimizer updates
    children: tuple[str, ...]
    calls: float
    child_calls: Mapping[str, float]  # calls of each child made from its forward
    self_forward_s: float
    self_backward_s: float
    total_s: float  # forward and backward with its children (optimizer excluded)
    flops: int = 0  # own forward FLOPs
    total_flops: int = 0
    recomputed_calls: float = 0.0  # forwards run again in backward (gradient checkpointing)


def module_stats(nodes: Mapping[str, Node], steps: int, flop_steps: int) -> list[ModuleStats]:
    """Per-step figures of every node, in the tree's order."""
    n, nf = max(steps, 1), max(flop_steps, 1)
    return [
        ModuleStats(
            name=k,
            parent=v.parent,
            depth=v.depth,
            module_type=v.module_type,
            layer_type=v.layer_type,
            params=v.params,
            total_params=sum(p.numel() for p in v.module.parameters()),
            trainable=v.trainable,
            children=tuple(v.children),
            calls=v.calls / n,
            child_calls={c: m / n for c, m in v.child_calls.items()},
            self_forward_s=v.self_fwd_s / n,
            self_backward_s=v.self_bwd_s / n,
            total_s=(v.total_fwd_s + v.total_bwd_s) / n,
            flops=round(v.own_flops / nf),
            total_flops=round(v.total_flops / nf),
            recomputed_calls=v.recomputed_calls / n,
        )
        for k, v in nodes.items()
    ]


@dataclass(frozen=True)
class StepInputs:
    """The measured step and what the rows say about it."""

    step_j: float | None  # joules per step (``None``: no window was measured)
    step_s: float | None  # its length, in the modules' clock
    optimizer_s: float  # the optimizer update per step
    meter_source: str
    clock: str
    samples_per_step: float = 1.0
    rank: int = 0
    world_size: int = 1
    problems: tuple[str, ...] = ()  # why windows had no figure
    failed_windows: int = 0
    replays: Mapping[str, ReplayResult] = field(default_factory=dict)


def _context(stats: list[ModuleStats], step: StepInputs, opt_s: dict[str, float]) -> attr.Context:
    return attr.Context(
        step_j=step.step_j or 0.0,
        step_s=step.step_s or 0.0,
        compute_s={s.name: s.self_forward_s + s.self_backward_s for s in stats},
        optimizer_s=opt_s,
        calls={s.name: s.calls for s in stats},
        child_calls={s.name: s.child_calls for s in stats},
        replays=step.replays,
    )


def _notes(s: ModuleStats, mode: str, step: StepInputs, split: attr.Split | None) -> list[str]:
    notes = []
    if step.step_j is None:
        notes.append("no profiling window was measured: " + ("; ".join(step.problems) or "none ran"))
    elif step.problems:
        notes.append(f"{step.failed_windows} profiling window(s) had no figure ({'; '.join(step.problems)})")
    rep = step.replays.get(s.name)
    if rep is not None and rep.note and mode != "allocate":
        notes.append(f"replay: {rep.note}")
    if rep is not None and rep.shared_with:
        notes.append(f"replay shared with {rep.shared_with}")
    if split is not None:
        notes += split.notes.get(s.name, [])
    if s.layer_type == "Compiled":
        notes.append("torch.compile'd: timed as one unit; the modules inside are not attributable")
    if s.recomputed_calls:
        notes.append(
            f"recomputed in backward (gradient checkpointing) {s.recomputed_calls:g} time(s) per step: "
            "its forward time includes the recomputation, its FLOPs count the forward once"
        )
    return notes


def build_rows(stats: list[ModuleStats], step: StepInputs, mode: str) -> list[dict[str, Any]]:
    """One row per module in the tree's order, then ``unattributed`` (figures per step).

    ``joules_per_step`` (the module's own work) and ``share`` are ``None`` where the chosen mode
    has no figure; ``complete`` is then ``False`` and ``note`` says why."""
    opt_s = attr.optimizer_shares(step.optimizer_s, {s.name: s.trainable for s in stats})
    splits: dict[str, attr.Split | None] = {}
    if step.step_j is not None and step.step_s is not None:
        ctx = _context(stats, step, opt_s)
        splits = {name: method.split(ctx) for name, method in attr.METHODS.items()}
    chosen = splits.get(mode)
    self_j = dict(chosen.joules) if chosen is not None else {s.name: None for s in stats}
    children = {s.name: list(s.children) for s in stats}
    total_j = attr.subtree_totals(self_j, children)
    total_opt = attr.subtree_totals(opt_s, children)
    avg_w = step.step_j / step.step_s if step.step_j is not None and step.step_s else None
    source = f"{attr.METHODS[mode].source}:{step.meter_source}"
    rows = []
    for s in stats:
        j = self_j.get(s.name)
        own_s = s.self_forward_s + s.self_backward_s + opt_s[s.name]
        rows.append(
            {
                "name": s.name,
                "parent": s.parent,
                "depth": s.depth,
                "module_type": s.module_type,
                "layer_type": s.layer_type,
                "params": s.params,
                "total_params": s.total_params,
                "calls": s.calls,
                "recomputed_calls": s.recomputed_calls,
                "self_forward_s": s.self_forward_s,
                "self_backward_s": s.self_backward_s,
                "optimizer_s": opt_s[s.name],
                "self_s": own_s,
                "total_s": s.total_s + (total_opt[s.name] or 0.0),
                "joules_per_step": j,
                "total_j": total_j[s.name],
                "optimizer_j": None if avg_w is None or j is None else opt_s[s.name] * avg_w,
                "share": None,
                "total_share": None,
                "joules_per_sample": None if j is None else j / step.samples_per_step,
                "flops": s.flops,
                "total_flops": s.total_flops,
                **{m.column: _figure(splits.get(name), s.name) for name, m in attr.METHODS.items()},
                "replay_j_per_call": _replay_j(step.replays.get(s.name)),
                "replay_w": _figure_w(splits.get("power"), s.name),
                "source": source,
                "clock": step.clock,
                "complete": j is not None,
                "note": "; ".join(_notes(s, mode, step, chosen)),
                "rank": step.rank,
                "world_size": step.world_size,
            }
        )
    rows.append(_unattributed(rows, step, chosen))
    for r in rows:
        j, t = r["joules_per_step"], r["total_j"]
        r["share"] = j / step.step_j if j is not None and step.step_j else None
        r["total_share"] = t / step.step_j if t is not None and step.step_j else None
    return rows


def _figure(split: attr.Split | None, k: str) -> float | None:
    return None if split is None else split.joules.get(k)


def _figure_w(split: attr.Split | None, k: str) -> float | None:
    return None if split is None else split.watts.get(k)


def _replay_j(rep: ReplayResult | None) -> float | None:
    return None if rep is None else rep.joules_per_call


def _unattributed(rows: list[dict[str, Any]], step: StepInputs, chosen: attr.Split | None) -> dict[str, Any]:
    """The rest of the step: measured step minus the modules' own figures."""
    missing = [r for r in rows if r["joules_per_step"] is None]
    un_j = None if step.step_j is None or missing else step.step_j - sum(r["joules_per_step"] for r in rows)
    window_note = (
        f"{step.failed_windows} profiling window(s) had no figure ({'; '.join(step.problems)})"
        if step.problems
        else ""
    )
    if step.step_j is None:
        note = "no profiling window was measured: " + ("; ".join(step.problems) or "none ran")
    elif missing:
        note = f"{len(missing)} module(s) have no figure, so the rest of the step is unknown"
    else:
        extra = chosen.unattributed_note if chosen is not None else ""
        note = "; ".join(x for x in (UNATTRIBUTED_NOTE, extra, window_note) if x)
    rest_s = max(0.0, (step.step_s or 0.0) - sum(r["self_s"] for r in rows))
    return {
        **dict.fromkeys(rows[0] if rows else (), None),
        "name": UNATTRIBUTED, "parent": None, "depth": 0, "module_type": "", "layer_type": UNATTRIBUTED,
        "params": 0, "total_params": 0, "calls": 0.0, "recomputed_calls": 0.0, "self_forward_s": 0.0,
        "self_backward_s": 0.0, "optimizer_s": 0.0, "self_s": rest_s, "total_s": rest_s,
        "joules_per_step": un_j, "total_j": un_j, "optimizer_j": None,
        "joules_per_sample": None if un_j is None else un_j / step.samples_per_step,
        "flops": 0, "total_flops": 0, "source": f"measured-step-minus-modules:{step.meter_source}",
        "clock": step.clock, "complete": un_j is not None, "note": note, "rank": step.rank,
        "world_size": step.world_size,
    }  # fmt: skip


def type_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per layer type: own joules per step, share, parameters, FLOPs and modules summed (``None``
    where a member has no figure), in :data:`LAYER_TYPES` order, then ``unattributed``."""
    agg: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"joules_per_step": 0.0, "share": 0.0, "params": 0, "flops": 0, "layers": 0}
    )
    for r in rows:
        a = agg[r["layer_type"]]
        for key in ("joules_per_step", "share"):
            a[key] = None if a[key] is None or r[key] is None else a[key] + r[key]
        a["params"] += r["params"]
        a["flops"] += r["flops"]
        a["layers"] += 0 if r["name"] == UNATTRIBUTED else 1
    order = [*LAYER_TYPES, UNATTRIBUTED]
    return [{"layer_type": t, **agg[t]} for t in order if t in agg]
