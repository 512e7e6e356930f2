"""The maths that turns measured step energy, module times and replays into joules per module.

Every function works on per-step figures keyed by module name and returns joules per step. They
are kept free of hooks and Lightning so that each can be checked by hand (tests/test_layer_attribution.py).
"""

from __future__ import annotations

from collections.abc import Mapping

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
