"""Helpers shared by the benchmark scripts: interleaved with/without timing, result files."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def interleaved(fns: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each function ``repeats`` times, alternating the order every round; each returns seconds."""
    names = list(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    for i in range(repeats):
        order = names if i % 2 == 0 else names[::-1]
        for n in order:
            out[n].append(fns[n]())
    return out


def machine() -> dict[str, str]:
    import torch

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def save(name: str, text: str, data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.txt").write_text(text)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, sort_keys=True))
    print(text)


def timed_callback(cls: type, hooks: tuple[str, ...]) -> type:
    """A subclass of callback ``cls`` that adds up the seconds spent inside ``hooks``: the callback's
    own cost, free of the run-to-run noise of whole-fit timings on a shared 2-core machine."""

    def wrap(name: str):
        inner = getattr(cls, name)

        def hook(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(self, *args, **kwargs)
            finally:
                self.hook_seconds += time.perf_counter() - t0

        return hook

    ns = {name: wrap(name) for name in hooks}
    ns["hook_seconds"] = 0.0
    return type(f"Timed{cls.__name__}", (cls,), ns)
