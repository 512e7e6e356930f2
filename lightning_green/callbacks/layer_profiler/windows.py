"""The profiling windows: profiled (hooked) steps, then unhooked reference steps, and the step's
energy and length they give.

The meter measures both windows. The step's energy per step comes from the reference steps (the
hooks did not slow them down); without reference steps, from the profiled steps less the hooks'
own time. Its length is in the unit the modules were timed by: the meter's wall seconds, or with a
CPU clock the CPU seconds the meter charged (its joules over the estimate's watts per core), so a
module's share of the step is CPU time over CPU time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lightning_green._checks import check_int
from lightning_green.callbacks.layer_profiler.clocks import Clock, LoadSnapshot, MachineLoad, choose_clock
from lightning_green.callbacks.layer_profiler.timing import StepTimer
from lightning_green.energy import Meter, Reading

HOOKED = "layer_profiler/window"
REFERENCE = "layer_profiler/reference"
#: Shorter profiling windows than this get a warning when read from a hardware counter.
MIN_WINDOW_S = 1.0


@dataclass(frozen=True)
class Schedule:
    """Which training steps are profiled (hooked) and which are their unhooked references.

    After ``warmup_steps``, ``profile_steps`` profiled steps, then as many reference steps (fewer
    when ``every_n_steps`` leaves no room), every ``every_n_steps`` steps (``None``: once).
    """

    warmup_steps: int
    profile_steps: int
    every_n_steps: int | None

    def __post_init__(self) -> None:
        check_int("warmup_steps", self.warmup_steps, 0)
        check_int("profile_steps", self.profile_steps, 1)
        if self.every_n_steps is not None:
            check_int("every_n_steps", self.every_n_steps, self.profile_steps)

    @property
    def reference_steps(self) -> int:
        n, every = self.profile_steps, self.every_n_steps
        return n if every is None else min(n, every - n)

    def phase(self, step: int) -> str | None:
        """``"profiled"``, ``"reference"`` or ``None`` for training step ``step`` (0-based global step)."""
        if step < self.warmup_steps:
            return None
        offset = step - self.warmup_steps
        if self.every_n_steps is None:
            if offset >= self.profile_steps + self.reference_steps:
                return None
        else:
            offset %= self.every_n_steps
        if offset < self.profile_steps:
            return "profiled"
        if offset < self.profile_steps + self.reference_steps:
            return "reference"
        return None


@dataclass
class Cycle:
    """One profiling window in flight."""

    measured: bool  # the meter's profiled window opened
    overhead0_s: float  # the hooks' own time before it
    load0: LoadSnapshot
    clock0: float  # the modules' clock when the open window began
    hooked: Reading | None = None
    reference: Reading | None = None
    hooked_steps: int = 0
    reference_steps: int = 0
    reference_open: bool = False
    overhead_s: float = 0.0  # the hooks' own time in the profiled steps
    hooked_clock_s: float = 0.0  # each window's length by the modules' clock
    reference_clock_s: float = 0.0


def clock_seconds(reading: Reading, clock_s: float, clock_kind: str) -> float:
    """A window's length in the modules' clock: the meter's seconds for wall clocks and CUDA events;
    for process CPU time, the CPU seconds the CPU-time estimate charged (joules over its watts per
    core: the same quantity, data-loader workers included); else the clock's own span."""
    if clock_kind in ("wall", "cuda-events"):
        return reading.seconds
    watts = reading.assumptions.get("cpu_watts_per_core") if clock_kind == "process-cpu" else None
    if isinstance(watts, (int, float)) and watts > 0:
        return reading.joules / watts
    return clock_s


def step_of(c: Cycle, clock_kind: str) -> tuple[float, float, bool] | None:
    """Joules and length (in the modules' clock) of one step from a closed window, and whether it
    came from the profiled steps for want of reference steps; ``None`` without a figure."""
    if c.reference is not None and c.reference_steps > 0:
        seconds = clock_seconds(c.reference, c.reference_clock_s, clock_kind)
        return c.reference.joules / c.reference_steps, seconds / c.reference_steps, False
    if c.hooked is not None and c.hooked_steps > 0:
        seconds = clock_seconds(c.hooked, c.hooked_clock_s, clock_kind)
        clean = max(seconds - c.overhead_s, 1e-9)
        joules = c.hooked.joules * clean / max(seconds, 1e-9)
        return joules / c.hooked_steps, clean / c.hooked_steps, True
    return None


@dataclass
class StepBook:
    """What the measured windows add up to, over the run."""

    window_joules: float = 0.0  # the profiled (hooked) windows
    window_seconds: float = 0.0
    reference_joules: float = 0.0  # their unhooked references
    reference_seconds: float = 0.0
    step_j_sum: float = 0.0  # step energy x profiled steps, over the windows that were measured
    step_s_sum: float = 0.0
    step_wall_s_sum: float = 0.0
    measured_steps: int = 0  # profiled steps in windows that were measured
    fallback_windows: int = 0  # windows with no reference steps (energy: profiled steps minus hooks)
    failed_windows: int = 0  # windows whose meter failed or whose counter did not move

    def __post_init__(self) -> None:
        self.load = MachineLoad()

    def close(self, c: Cycle, clock_kind: str) -> bool:
        """Add a closed window; ``False`` if it gave no step figure."""
        if c.hooked is not None:
            self.window_joules += c.hooked.joules
            self.window_seconds += c.hooked.seconds
        if c.reference is not None and c.reference_steps > 0:
            self.reference_joules += c.reference.joules
            self.reference_seconds += c.reference.seconds
        step = step_of(c, clock_kind)
        if step is None:
            return False
        step_j, step_s, fallback = step
        wall = c.reference if not fallback else c.hooked
        n_wall = c.reference_steps if not fallback else c.hooked_steps
        self.fallback_windows += fallback
        self.step_j_sum += step_j * c.hooked_steps
        self.step_s_sum += step_s * c.hooked_steps
        self.step_wall_s_sum += wall.seconds / n_wall * c.hooked_steps  # type: ignore[union-attr]
        self.measured_steps += c.hooked_steps
        return True

    def per_step(self, total: float) -> float | None:
        return total / self.measured_steps if self.measured_steps else None


def batch_size(batch: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor (1 if it has none)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, (list, tuple)) and batch:
        return batch_size(batch[0])
    if isinstance(batch, dict) and batch:
        return batch_size(next(iter(batch.values())))
    return 1


class Windows:
    """The meter's windows around the profiled and reference steps, and what they add up to.

    The callback decides when (its hooks); this opens and closes the windows, keeps the book and
    says why a window has no figure. ``warn`` shows a message once per kind of trouble.
    """

    def __init__(self, timer: StepTimer, warn: Callable[[str], None]) -> None:
        self.timer, self.warn = timer, warn
        self.meter: Meter | None = None
        self.source = ""  # the meter's sources, from the last good reading
        self.book = StepBook()
        self.cycle: Cycle | None = None
        self.problems: list[str] = []  # why windows had no figure (shown in the rows' ``note``)
        self._warned_meter = self._warned_short = False

    def _begin(self, name: str) -> bool:
        assert self.meter is not None
        try:
            self.meter.begin_window(name)  # synchronises the device
            return True
        except Exception as err:  # a measurement failure never ends training
            self.meter.discard_window(name)
            self.note(f"the meter failed ({err!r})")
            return False

    def _end(self, name: str) -> Reading | None:
        assert self.meter is not None
        try:
            reading = self.meter.end_window(name)
        except Exception as err:
            self.meter.discard_window(name)
            self.note(f"the meter failed ({err!r})")
            return None
        if not reading.complete or not reading.joules > 0:
            self.note(
                "the meter's counter failed in a profiling window"
                if not reading.complete
                else f"a profiling window ({reading.seconds:.3f} s) measured 0 J: the counter did not advance"
            )
            return None
        self.source = "+".join(sorted(set(reading.sources.values()))) or "none"
        if reading.seconds < MIN_WINDOW_S and self.source.startswith("measured") and not self._warned_short:
            self._warned_short = True
            self.warn(
                f"a profiling window lasted {reading.seconds:.3f} s, shorter than {MIN_WINDOW_S} s; hardware "
                "energy counters update every 10-100 ms, so its joules are coarse. Raise profile_steps."
            )
        return reading

    def note(self, why: str) -> None:
        self.book.failed_windows += 1
        if why not in self.problems:
            self.problems.append(why)
        if not self._warned_meter:
            self._warned_meter = True
            self.warn(f"{why}; that window has no figure and training goes on.")

    def open(self, optimizers: list[Any], clock: str | Callable[[], float], device: torch.device) -> None:
        """Start a window: the meter's profiled window, then the hooks. Before the first, choose the
        clock: ``clock`` (a name of :data:`~.clocks.CLOCKS` or a function), for ``"auto"`` by what
        the meter measures."""
        assert self.meter is not None
        if not self.timer.steps:
            sources = [c.source for c in self.meter.channels]
            self.timer.clock = (
                Clock(device, now=clock) if callable(clock) else Clock(device, choose_clock(clock, sources))
            )
        measured = self._begin(HOOKED)
        self.cycle = Cycle(measured, self.timer.overhead_s, LoadSnapshot.now(), self.timer.clock.now())
        self.timer.attach(optimizers)

    def step_done(self, next_phase: str | None) -> bool:
        """After a training step of an open window; ``True`` when that closed the window."""
        c = self.cycle
        if c is None:
            return False
        if self.timer.active:
            self.timer.end_step()
            c.hooked_steps += 1
        elif c.reference_open:
            c.reference_steps += 1
        if self.timer.attached and next_phase != "profiled":
            self._close_hooked(c)
            if next_phase == "reference" and c.measured:
                c.reference_open = self._begin(REFERENCE)
                c.clock0 = self.timer.clock.now()
        elif c.reference_open and next_phase != "reference":
            return self.finish()
        return False

    def _close_hooked(self, c: Cycle) -> None:
        self.timer.detach()
        c.overhead_s = self.timer.overhead_s - c.overhead0_s
        c.hooked_clock_s = self.timer.clock.now() - c.clock0
        self.book.load.add(c.load0, LoadSnapshot.now())
        if c.measured:
            c.hooked = self._end(HOOKED)

    def finish(self) -> bool:
        """Close the window in flight; ``True`` if it gave the step a figure."""
        c, self.cycle = self.cycle, None
        if c is None:
            return False
        if self.timer.attached:
            self._close_hooked(c)
        if c.reference_open:
            c.reference_clock_s = self.timer.clock.now() - c.clock0
            c.reference = self._end(REFERENCE)
        if self.book.close(c, self.timer.clock.kind):
            return True
        if c.measured and c.hooked is not None:
            self.note("a profiling window had no steps")
        return False

    def abandon(self) -> None:
        """After an exception: hooks off, windows dropped."""
        self.timer.active = False
        self.timer.detach()
        self.cycle = None
        if self.meter is not None:
            for name in (HOOKED, REFERENCE):
                self.meter.discard_window(name)

    def figures(self) -> dict[str, Any]:
        """The measured step per profiled step: ``step_j``, ``step_s`` (in the modules' clock),
        ``step_wall_s``; the hooks' own and the optimizer's seconds per step; windows measured and
        how; the machine's load during the profiled steps (with a warning where it moved the
        figures)."""
        t, b = self.timer, self.book
        n = max(t.steps, 1)
        threads = torch.get_num_threads()
        return {
            "source": self.source or "none", "clock": t.clock.kind, "profiled_steps": t.steps,
            "measured_steps": b.measured_steps, "step_j": b.per_step(b.step_j_sum),
            "step_s": b.per_step(b.step_s_sum), "step_wall_s": b.per_step(b.step_wall_s_sum),
            "profiled_step_s": t.step_s / n, "hook_overhead_s_per_step": t.overhead_s / n,
            "optimizer_s_per_step": t.optimizer_s / n, "flop_counted_steps": t.flop_steps,
            "reference_windows_j": b.reference_joules, "fallback_windows": b.fallback_windows,
            "failed_windows": b.failed_windows, "threads": threads,
            "machine_load": {**b.load.figures(), "warning": b.load.warning(t.clock.kind, threads)},
        }  # fmt: skip
