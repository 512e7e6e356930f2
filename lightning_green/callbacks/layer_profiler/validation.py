"""Checking per-module figures against an ablation: what the profile says removing modules saves.

A profile's rows add up to the measured step by construction, which says nothing about whether any
one module's figure is right. An ablation does: train the model and a smaller variant (blocks or
layers removed), measure both steps' energy, and compare the measured difference with what the
profiles say the differing modules cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

#: Row columns holding each method's own joules per step.
METHOD_KEYS = {"allocate": "allocated_j", "power": "power_j", "replay": "replayed_j"}


def own_joules(
    rows: Iterable[dict[str, Any]], keep: Callable[[str], bool], key: str = "joules_per_step"
) -> float | None:
    """Sum of ``key`` (own joules per step) over the module rows whose name ``keep`` accepts
    (``unattributed`` excluded); ``None`` if any of them has no figure."""
    total = 0.0
    for r in rows:
        if r["name"] == "unattributed" or not keep(r["name"]):
            continue
        if r.get(key) is None:
            return None
        total += r[key]
    return total


def predicted_drop(
    big: list[dict[str, Any]],
    small: list[dict[str, Any]] | None,
    differs_big: Callable[[str], bool],
    differs_small: Callable[[str], bool] | None = None,
    key: str = "joules_per_step",
) -> float | None:
    """Joules per step that going from ``big`` to ``small`` saves, by the profiles: the own joules
    of the modules of ``big`` that ``small`` lacks or changed (``differs_big``), minus those of
    the changed modules in ``small`` (``differs_small``, from its own profile). Modules both share
    unchanged cancel and are left out."""
    removed = own_joules(big, differs_big, key)
    if small is None or differs_small is None:
        return removed
    added = own_joules(small, differs_small, key)
    return None if removed is None or added is None else removed - added


def relative_error(predicted: float | None, measured: float) -> float | None:
    """(predicted - measured) / measured; ``None`` without a prediction or with no measured drop."""
    if predicted is None or measured == 0:
        return None
    return (predicted - measured) / measured


def under(*prefixes: str) -> Callable[[str], bool]:
    """A name filter: the modules named, and everything inside them."""
    return lambda name: any(name == p or name.startswith(p + ".") for p in prefixes)
