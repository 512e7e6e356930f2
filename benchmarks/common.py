"""Helpers shared by the benchmark scripts: interleaved with/without timing, output folders, result
files, and a slow counter that stands in for NVML's on a machine without a GPU."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lightning_green.energy.base import Channel, CounterMeter

#: Where committed results live. Scripts write here only when asked (``--out``).
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


def add_out_argument(parser: argparse.ArgumentParser, committed: str = "benchmarks/results") -> None:
    """``--out DIR``: where result files go. Default: a fresh temporary folder, so that a run never
    overwrites committed results unless asked (``--out {committed}``)."""
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"results folder (default: a fresh temporary one; the committed results: {committed})",
    )


def out_dir(out: Path | None, name: str) -> Path:
    """``out`` (created), or a fresh temporary folder named after the benchmark."""
    if out is None:
        return Path(tempfile.mkdtemp(prefix=f"{name}_"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def save(name: str, text: str, data: dict, out: Path | None = None) -> Path:
    """Write ``<name>.txt`` and ``<name>.json`` into ``out`` (default: a fresh temporary folder),
    print the text and where it went; returns the folder."""
    folder = out_dir(out, name)
    (folder / f"{name}.txt").write_text(text)
    (folder / f"{name}.json").write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    print(text)
    print(f"written to {folder}" + ("" if out is not None else f" (commit with --out {RESULTS})"))
    return folder


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


class SlowCpuCounter(CounterMeter):
    """This process's CPU time x 12 W, behind a read that takes 4 ms (value from its middle): a
    counter as slow as NVML's energy read on an H200, for machines without one.

    (``tests/test_energy_actions.py`` keeps its own copy: tests do not import benchmarks.)

    Args:
        sampled: Read in the background and interpolate at window edges (the default of the real
            meters), else read at each edge on the caller's thread (``sync_reads=True``).
    """

    name = "slow"

    def __init__(self, sampled: bool) -> None:
        super().__init__(sample_interval_s=0.05 if sampled else None)
        self.start_sampling()

    @property
    def channels(self):
        return (Channel("gpu", "0", "measured:slow-cpu-time-counter"),)

    def read_counters(self):
        time.sleep(0.002)
        value = 12.0 * time.process_time()
        time.sleep(0.002)
        return {"gpu:0": value}
