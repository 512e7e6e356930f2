"""The maths that turns measured step energy, module times and replays into joules per module.

Every function works on per-step figures keyed by module name and returns joules per step. They
are kept free of hooks and Lightning so that each can be checked by hand (tests/test_layer_attribution.py).
The three modes are small strategies over one :class:`Context` (:data:`METHODS`): each returns a
:class:`Split`, its joules per module with notes where it had to guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from lightning_green.callbacks.layer_profiler.replay import ReplayResult

#: A parent's self power from replays is trusted when its own work is at least this share of its time.
MIN_SELF_SHARE = 0.1


def optimizer_shares(optimizer_s: float, trainable: Mapping[str, int]) -> dict[str, float]:
    """The optimizer step's seconds split by each module's own trainable parameters (an element-wise
    update, such as Adam's, costs in proportion to the elements it updates)."""
    total = sum(trainable.values())
    if total <= 0:
        return dict.fromkeys(trainable, 0.0)
    return {k: optimizer_s * n / total for k, n in trainable.items()}


def allocate_by_time(step_j: float, step_s: float, seconds: Mapping[str, float]) -> dict[str, float]:
    """Each module's share of the step's energy is its share of the step's time. If the module
    times add up past the step (overlapping work), they are scaled to their sum."""
    denom = max(step_s, sum(seconds.values()))
    if denom <= 0:
        return dict.fromkeys(seconds, 0.0)
    return {k: step_j * s / denom for k, s in seconds.items()}


def allocate_by_power(
    step_j: float,
    step_s: float,
    compute_s: Mapping[str, float],
    optimizer_s: Mapping[str, float],
    watts: Mapping[str, float | None],
) -> dict[str, float]:
    """Each module's forward/backward time weighted by the power it drew in replay; its optimizer
    share at the step's average power (the optimizer is not replayed). A module whose power is
    unknown gets the step's average power. If the modules' joules add up past the step, they
    are scaled down to it (unattributed is then 0); otherwise the rest of the step is unattributed."""
    avg_w = step_j / step_s if step_s > 0 else 0.0
    raw = {
        k: compute_s[k] * (watts.get(k) if watts.get(k) is not None else avg_w)
        + optimizer_s.get(k, 0.0) * avg_w
        for k in compute_s
    }
    total = sum(raw.values())
    scale = step_j / total if total > step_j and total > 0 else 1.0
    return {k: v * scale for k, v in raw.items()}


def replay_self(
    calls: Mapping[str, float],
    joules_per_call: Mapping[str, float | None],
    child_calls: Mapping[str, Mapping[str, float]],
) -> dict[str, float | None]:
    """Self joules per step from replays: a module's calls x its replayed joules, minus what the
    calls it made to its children cost (children's calls from it x their replayed joules). ``None``
    where any of these replays has no figure."""
    out: dict[str, float | None] = {}
    for k, n in calls.items():
        j = joules_per_call.get(k)
        kids = child_calls.get(k, {})
        if j is None or any(joules_per_call.get(c) is None for c in kids):
            out[k] = None if n else 0.0
            continue
        out[k] = n * j - sum(m * joules_per_call[c] for c, m in kids.items())  # type: ignore[operator]
    return out


def self_power(
    joules: float | None, seconds: float | None, kids: list[tuple[float, float | None, float | None]]
) -> float | None:
    """Watts of a module's own work from replays: (its joules - its children's) / (its seconds -
    theirs), per call; ``kids`` holds (calls per call of the parent, joules, seconds) per child.
    Where its own work is under :data:`MIN_SELF_SHARE` of its time, or a child has no figure, the
    module's inclusive power (joules / seconds) stands in."""
    if joules is None or not seconds:
        return None
    inclusive = joules / seconds
    if not kids:
        return inclusive
    if any(j is None or s is None for _, j, s in kids):
        return inclusive
    own_j = joules - sum(n * j for n, j, _ in kids)  # type: ignore[operator]
    own_s = seconds - sum(n * s for n, _, s in kids)  # type: ignore[operator]
    if own_s < MIN_SELF_SHARE * seconds or own_j <= 0:
        return inclusive
    return own_j / own_s


def subtree_totals(
    self_j: Mapping[str, float | None], children: Mapping[str, list[str]]
) -> dict[str, float | None]:
    """Inclusive joules: a module's own plus its children's (``None`` if any of them has no figure)."""
    memo: dict[str, float | None] = {}

    def total(k: str) -> float | None:
        if k not in memo:
            parts = [self_j.get(k), *(total(c) for c in children.get(k, []))]
            memo[k] = None if any(p is None for p in parts) else sum(parts)  # type: ignore[arg-type]
        return memo[k]

    return {k: total(k) for k in self_j}


def replay_bounds(
    own: Mapping[str, float | None],
    compute_s: Mapping[str, float],
    parents: set[str],
    max_w: float | None,
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Bound the replay's own figure of each parent (a module that calls children) to what its own
    time in the step can cost: at least 0, at most its own seconds x the highest power any replay
    drew (``max_w``). A parent's replay minus its children's collects whatever does not add up
    between separate replays (the machine's load when each ran, caches warm in a small loop), and
    the difference of two large figures can be far from its small own work. What is cut goes to
    "unattributed". Returns the bounded figures and a note per module that was bounded."""
    out: dict[str, float | None] = dict(own)
    notes: dict[str, str] = {}
    for k in parents:
        v = own.get(k)
        if v is None:
            continue
        if v < 0:
            out[k] = 0.0
            notes[k] = "replay: its children alone cost more than it did; own work set to 0"
        elif max_w is not None and v > compute_s.get(k, 0.0) * max_w:
            out[k] = compute_s.get(k, 0.0) * max_w
            notes[k] = (
                f"replay: its replay minus its children's ({v:.4g} J) is more than its own time in the "
                f"step can cost at the highest replayed power ({out[k]:.4g} J); bounded to that, the rest "
                "is unattributed"
            )
    return out, notes


@dataclass(frozen=True)
class Context:
    """What every method works from, per step and keyed by module name."""

    step_j: float
    step_s: float
    compute_s: Mapping[str, float]  # own forward + backward seconds
    optimizer_s: Mapping[str, float]  # its share of the optimizer update
    calls: Mapping[str, float]
    child_calls: Mapping[str, Mapping[str, float]]  # calls of each child made from its forward
    replays: Mapping[str, ReplayResult]

    @property
    def avg_w(self) -> float:
        return self.step_j / self.step_s if self.step_s > 0 else 0.0


@dataclass
class Split:
    """One method's joules per step for each module's own work, with notes where it had to guess."""

    joules: dict[str, float | None]
    notes: dict[str, list[str]] = field(default_factory=dict)
    watts: dict[str, float | None] = field(default_factory=dict)
    unattributed_note: str = ""

    def note(self, k: str, text: str) -> None:
        self.notes.setdefault(k, []).append(text)


class Allocate:
    """``allocate``: a module's share of the step's energy is its share of the step's time."""

    name, column, source = "allocate", "allocated_j", "allocated"

    def split(self, ctx: Context) -> Split | None:
        own_s = {k: ctx.compute_s[k] + ctx.optimizer_s.get(k, 0.0) for k in ctx.compute_s}
        return Split(dict(allocate_by_time(ctx.step_j, ctx.step_s, own_s)))


class Power:
    """``power``: each module's time weighted by the power its replay drew."""

    name, column, source = "power", "power_j", "allocated-by-power"

    def split(self, ctx: Context) -> Split | None:
        if not ctx.replays:
            return None
        watts: dict[str, float | None] = {}
        for k in ctx.compute_s:
            r = ctx.replays.get(k)
            c = max(ctx.calls.get(k, 0.0), 1e-12)
            kids = [
                (m / c, ctx.replays[ch].joules_per_call, ctx.replays[ch].seconds_per_call)
                for ch, m in ctx.child_calls.get(k, {}).items()
                if ch in ctx.replays
            ]
            watts[k] = self_power(r.joules_per_call, r.seconds_per_call, kids) if r else None
            if watts[k] is None and r is not None:
                watts[k] = r.raw_watts  # a call no longer than a replay's fixed cost
        joules = allocate_by_power(ctx.step_j, ctx.step_s, ctx.compute_s, ctx.optimizer_s, watts)
        out = Split(dict(joules), watts=watts)
        for k in ctx.compute_s:
            if watts.get(k) is None:
                out.note(k, "power unknown (no replay): the step's average power stands in")
        return out


class Replay:
    """``replay``: each module's replayed joules, less its children's (bounded, see :func:`replay_bounds`)."""

    name, column, source = "replay", "replayed_j", "replayed"

    def split(self, ctx: Context) -> Split | None:
        if not ctx.replays:
            return None
        jpc = {k: r.joules_per_call for k, r in ctx.replays.items()}
        own = replay_self(ctx.calls, jpc, ctx.child_calls)
        powers = [
            r.joules_per_call / r.seconds_per_call
            for r in ctx.replays.values()
            if r.joules_per_call is not None and r.seconds_per_call
        ]
        parents = {k for k, kids in ctx.child_calls.items() if kids}
        bounded, why = replay_bounds(own, ctx.compute_s, parents, max(powers) if powers else None)
        avg_w = ctx.avg_w
        joules = {
            k: None if v is None else v + ctx.optimizer_s.get(k, 0.0) * avg_w for k, v in bounded.items()
        }
        out = Split(joules)
        for k, text in why.items():
            out.note(k, text)
        total = sum(v for v in joules.values() if v is not None)
        if total > ctx.step_j > 0 and all(v is not None for v in joules.values()):
            scale = ctx.step_j / total
            out.joules = {k: v * scale for k, v in joules.items()}  # type: ignore[operator]
            out.unattributed_note = (
                f"the replays add up to {total:.4g} J, more than the measured step ({ctx.step_j:.4g} J): "
                f"every module's figure was scaled by {scale:.3f}"
            )
        return out


#: The methods, by ``mode``.
METHODS: dict[str, Allocate | Power | Replay] = {m.name: m for m in (Allocate(), Power(), Replay())}
