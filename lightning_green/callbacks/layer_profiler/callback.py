"""LayerEnergyProfiler: the energy of every module of the model, and of every kind of layer."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from lightning_green._checks import check_bool, check_number
from lightning_green._checks import check_int as _check_int
from lightning_green.callbacks.energy_monitor import EnergyMonitor
from lightning_green.callbacks.layer_profiler import outputs, windows
from lightning_green.callbacks.layer_profiler.clocks import CLOCKS, Clock
from lightning_green.callbacks.layer_profiler.replay import ReplayResult, replay_modules
from lightning_green.callbacks.layer_profiler.rows import StepInputs, build_rows, module_stats, type_rows
from lightning_green.callbacks.layer_profiler.timing import StepTimer
from lightning_green.callbacks.layer_profiler.tree import Node, profiled_tree
from lightning_green.callbacks.placement import default_output_dir, own_gpus
from lightning_green.callbacks.publish import publish
from lightning_green.energy import Meter, make_meter
from lightning_green.energy.select import check_backend

MODES = ("allocate", "power", "replay")
#: Shortest replay pass for the CPU-time estimate (a hardware counter needs windows.MIN_WINDOW_S).
MIN_ESTIMATE_PASS_S = 0.05


def _energy_monitor_link(trainer: pl.Trainer) -> tuple[Meter | None, Path | None, str | None]:
    """The EnergyMonitor's meter, output folder and run id (each ``None`` without a monitor)."""
    try:
        monitor = EnergyMonitor.of(trainer)
    except MisconfigurationException:  # the profiler works alone too, with a meter of its own
        return None, None, None
    return monitor.meter, monitor.output_dir, monitor.run_id


class LayerEnergyProfiler(Callback):
    r"""Energy of every module (each block, attention, conv, ...) and of every layer type.

    **What is timed.** After ``warmup_steps`` training steps, ``profile_steps`` consecutive steps are
    *profiled*: hooks on every module of the tree (not only leaves) time each call's forward and
    backward, and the optimizer's update from the end of backward to the end of
    ``optimizer.step``, by the clock that matches what the meter measures (``clock``): CUDA events
    on a GPU (nothing synchronises inside a step), the wall clock for other measured counters, and
    this process's CPU time where the energy is the CPU-time estimate (a wall-clock interval would
    include time the process waited for a CPU); on the host the hooks' own time is removed. Each module gets a *total* (itself and its children) and a
    *self* figure (total minus the calls it made to its children): a block's total includes its
    attention core, and work a module does in its own ``forward`` between child calls (a
    ``scaled_dot_product_attention`` call, residual additions) is its own, not unattributed. The
    optimizer update is shared among modules by their own trainable parameters (an element-wise
    update costs in proportion to the elements). Then as many *reference* steps run without
    hooks and the meter measures them: the step's energy comes from steps the hooks did not slow
    down. Windows repeat every ``every_n_steps`` steps; between them the model runs without hooks.
    FLOPs are counted inside the first profiled step (each matmul, convolution and attention call
    credited to the module running it), so nothing runs a forward the training did not: a user's
    own hooks fire once per real forward. A forward recomputed in backward (gradient
    checkpointing) is counted apart (``recomputed_calls``): its time is the module's forward time,
    removed from the backward interval it ran in, and its FLOPs are not counted twice.

    **How joules are split** (``mode``, named in every row's ``source``):

    - ``"allocate"`` (default; ``allocated:<meter>``): a module's share of the measured step
      energy is its share of the step's time.
    - ``"power"`` (``allocated-by-power:<meter>``): each module's time is weighted by the power it
      draws, measured by replaying it alone (a tensor-core matmul and an element-wise kernel do not
      draw the same watts); scaled so that modules + unattributed equal the measured step.
    - ``"replay"`` (``replayed:<meter>``): each module's forward and backward is replayed alone in
      a loop of about ``replay_window_s`` seconds and its joules measured directly; a parent's
      self figure is its replay minus its children's, bounded to [0, its own time in the step x
      the highest replayed power] (the rest is unattributed, with a note); if the modules then
      add up past the measured step, every figure is scaled down to it (said in
      ``unattributed``'s note).

    Replays (``power``, ``replay``) run at the end of training, once per distinct module (identical
    blocks share one), under the context each ran in (autocast, dtypes, memory format, grad and
    train mode, the captured output gradients), on a copy without hooks, less the fixed cost of a
    replay call (see :mod:`~lightning_green.callbacks.layer_profiler.replay`). A module that cannot
    be replayed faithfully is skipped with the reason in its row. ``unattributed`` is the step
    outside the modules' forward/backward and the optimizer update (data loading, loss, framework).

    Measured against ablation (removing blocks and comparing measured energy, see
    ``benchmarks/layer_ablation.py`` and the README for the errors per mode). Under DDP each rank
    profiles its own device and rank 0 writes its own figures (``rank``/``world_size`` columns).
    A ``torch.compile``'d submodule is timed as one unit (type ``Compiled``): the modules inside it
    are not attributable. Attention written as ``torch.nn.functional.scaled_dot_product_attention``
    (looked up at call time, as nanoGPT does) is recognised while profiling.

    Written to ``output_dir`` (default: the EnergyMonitor's, else the logger's log dir):

    - ``layers.csv``: one row per module, in the model's order, then ``unattributed``:
      ``run_id``, ``name``, ``parent``, ``depth``, ``module_type``, ``layer_type``, ``params`` (own),
      ``total_params``, ``calls`` and ``recomputed_calls`` (per step), seconds per step (``self_forward_s``,
      ``self_backward_s``, ``optimizer_s``, ``self_s``, ``total_s``), joules per step
      (``joules_per_step``: own work, so the rows add up to the step; ``total_j``: with its
      children; ``optimizer_j``), ``share`` and ``total_share`` (of the step's energy),
      ``joules_per_sample``, ``flops`` (own forward FLOPs per step) and ``total_flops``, the
      figure of each computed method (``allocated_j``, ``power_j``, ``replayed_j``), the replay's
      ``replay_j_per_call`` and ``replay_w``, ``source``, ``clock`` (what the seconds are:
      ``cuda-events``, ``wall``, ``process-cpu``, ``thread-cpu``, ``custom``), ``complete``,
      ``note`` (why a row has no figure), ``rank``, ``world_size``.
    - ``layer_types.csv``: per type (Conv, Linear, Attention, Embedding, ReLU, Activation,
      BatchNorm, Norm, Pooling, Dropout, Composite, Compiled, Other, unattributed), own joules
      summed: ``joules_per_step``, ``share``, ``params``, ``flops``, ``layers``.
    - ``layer_profile.json``: the step (``step_j``; ``step_s`` in the modules' ``clock`` and
      ``step_wall_s``; the hooks' own time; windows measured and how), the mode, the meter's source,
      the machine's load in the profiled steps (``machine_load``: CPUs busy with this process and
      with others, the share of time the training thread waited for a CPU, a warning where that
      moved the figures), the replay's fixed cost per call.
    - ``layer_energy.png``: energy by layer type, and the top modules by total.
    - ``energy.jsonl``: the rows as ``layer`` / ``layer_type`` records.

    Logged through the Trainer's loggers and ``trainer.callback_metrics`` after each window
    (``allocate``) or at the end (``power``, ``replay``): ``layer_energy/<type>_j`` (joules per
    training step of that layer type's own work, e.g. ``layer_energy/Conv_j``) and
    ``layer_energy/unattributed_j``.

    Args:
        warmup_steps: Training steps before the first profiled step (>= 0).
        profile_steps: Consecutive profiled steps per window (>= 1); as many reference steps follow.
        every_n_steps: Start a new window every this many steps (>= ``profile_steps``; below
            ``2 * profile_steps`` the reference is shortened, and with none the step's energy is
            the profiled steps' minus the hooks' own time); ``None`` profiles one window only.
        mode: ``"allocate"``, ``"power"`` or ``"replay"``.
        clock: What modules are timed by: ``"auto"`` (CPU time of this process where every source
            of the meter is ``estimated:cpu-time``, else ``"wall"``), ``"wall"`` (CUDA events on a
            GPU), ``"process-cpu"`` (every thread of this process: what the estimate counts, intra-op
            workers included), ``"thread-cpu"`` (the training thread only), or a function
            returning seconds in the meter's unit (a test's injected clock).
        replay_window_s: Seconds each replay loop runs (> 0).
        backend: Meter backend when no EnergyMonitor is present (see ``EnergyMonitor``).
        meter: A meter to use instead (default: the EnergyMonitor's, else one built from ``backend``).
        output_dir: Where files go.
        top_layers: Modules shown in the chart.
        plot: Save ``layer_energy.png`` at the end of training (about 0.3 s of matplotlib, once).

    A measurement failure never ends training: a window whose meter raises or whose counter does
    not move is left out with one warning, and the rows say so.

    Raises:
        ValueError: On a bad argument (naming it), or in ``setup`` for a model with no modules.

    Example::

        >>> import tempfile
        >>> from lightning import Trainer
        >>> from lightning_green import EnergyMonitor, LayerEnergyProfiler
        >>> from lightning_green.data import DigitsDataModule
        >>> from lightning_green.models import LitClassifier, SimpleCNN
        >>> profiler = LayerEnergyProfiler(plot=False)
        >>> trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
        ...                   enable_model_summary=False,
        ...                   callbacks=[EnergyMonitor(output_dir=tempfile.mkdtemp()), profiler])
        >>> trainer.fit(LitClassifier(SimpleCNN()), datamodule=DigitsDataModule())
        >>> [t["layer_type"] for t in profiler.type_table()]
        ['Conv', 'Linear', 'ReLU', 'BatchNorm', 'Pooling', 'Composite', 'Other', 'unattributed']
        >>> [r["name"] for r in profiler.rows()][:3]  # the whole tree: the network, then its layers
        ['net', 'net.0', 'net.1']
    """

    def __init__(
        self,
        warmup_steps: int = 5,
        profile_steps: int = 3,
        every_n_steps: int | None = 500,
        mode: str = "allocate",
        replay_window_s: float = 2.0,
        backend: str = "auto",
        output_dir: str | os.PathLike[str] | None = None,
        top_layers: int = 15,
        meter: Meter | None = None,
        plot: bool = True,
        clock: str | Callable[[], float] = "auto",
    ) -> None:
        self.schedule = windows.Schedule(warmup_steps, profile_steps, every_n_steps)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        check_number("replay_window_s", replay_window_s, above=0.0, unit="seconds")
        check_backend(backend)
        if meter is not None and not isinstance(meter, Meter):
            raise ValueError(
                f"meter must be a lightning_green.energy.Meter (e.g. make_meter({meter!r})) or None; "
                f"got {meter!r}: to choose a backend by name, pass backend={meter!r}"
                if isinstance(meter, str)
                else f"meter must be a lightning_green.energy.Meter or None; got {meter!r}"
            )
        _check_int("top_layers", top_layers, 1)
        check_bool("plot", plot)
        if not callable(clock) and clock not in CLOCKS:
            raise ValueError(
                f"clock must be one of {', '.join(CLOCKS)} or a function returning seconds; got {clock!r}"
            )
        self.warmup_steps, self.profile_steps, self.every_n_steps = warmup_steps, profile_steps, every_n_steps
        self.reference_steps = self.schedule.reference_steps
        self.mode, self.replay_window_s, self.backend = mode, float(replay_window_s), backend
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.top_layers, self.plot, self.clock = top_layers, plot, clock
        self.nodes: dict[str, Node] = {}
        self._timer: StepTimer | None = None
        self._windows: windows.Windows | None = None
        self._device = torch.device("cpu")
        self._meter: Meter | None = meter
        self._own_meter = False
        self.samples = 0
        self.replays: dict[str, ReplayResult] = {}
        self.replay_overhead: tuple[float, float] | None = None  # empty replay: joules, seconds per call
        self.written: list[str] = []  # the files of the last successful write, for the commands to list
        self._run_id = uuid.uuid4().hex[:12]  # names this profiler's files when no EnergyMonitor runs
        self.structure_notes: list[str] = []
        self._writer_rank = False
        self._rank, self._world = 0, 1

    # ------------------------------------------------------------------ set-up
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.nodes, notes = profiled_tree(pl_module, rank_zero_warn)
        self.structure_notes += notes
        if not self.nodes:
            return
        self._device = trainer.strategy.root_device
        # the clock is chosen once the meter is known (first profiled step)
        self._timer = StepTimer(self.nodes, Clock(self._device), capture=self.mode != "allocate")
        self._windows = windows.Windows(
            self._timer, lambda why: rank_zero_warn(f"LayerEnergyProfiler: {why}")
        )
        self._writer_rank = trainer.is_global_zero
        self._rank, self._world = trainer.global_rank, trainer.world_size

    def _ensure_meter(self, trainer: pl.Trainer) -> Meter:
        if self._meter is None or self.output_dir is None:
            monitor_meter, monitor_dir, _ = _energy_monitor_link(trainer)
            if self.output_dir is None:
                self.output_dir = monitor_dir
            if self._meter is None and monitor_meter is not None:
                self._meter = monitor_meter
            elif self._meter is None:
                self._meter = make_meter(
                    self.backend, gpu_indices=own_gpus(trainer), measure_node=trainer.local_rank == 0
                )
                self._own_meter = True
            if self.output_dir is None:
                self.output_dir = default_output_dir(trainer)
        if self._windows is not None:
            self._windows.meter = self._meter
        return self._meter

    @property
    def clock_kind(self) -> str:
        """What the modules' seconds are: cuda-events, wall, process-cpu, thread-cpu or custom."""
        return self._timer.clock.kind if self._timer is not None else "wall"

    def phase(self, step: int) -> str | None:
        """``"profiled"``, ``"reference"`` or ``None`` for training step ``step`` (0-based global step)."""
        return self.schedule.phase(step)

    def is_profiled_step(self, step: int) -> bool:
        """Whether training step ``step`` (0-based global step) runs with hooks."""
        return self.phase(step) == "profiled"

    @property
    def steps(self) -> int:
        """Profiled steps so far."""
        return self._timer.steps if self._timer is not None else 0

    @property
    def attached(self) -> bool:
        """Whether hooks are on the model right now."""
        return self._timer is not None and self._timer.attached

    @property
    def book(self) -> windows.StepBook:
        """What the measured windows add up to (joules, seconds, windows measured and how)."""
        return self._windows.book if self._windows is not None else windows.StepBook()

    @property
    def problems(self) -> list[str]:
        """Why profiling windows had no figure."""
        return self._windows.problems if self._windows is not None else []

    @property
    def reference_joules(self) -> float:  # benchmarks/gpu_check.py reads these two
        return self.book.reference_joules

    @property
    def reference_seconds(self) -> float:
        return self.book.reference_seconds

    # ------------------------------------------------------------------ windows
    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._timer is None or self._windows is None or self.phase(trainer.global_step) != "profiled":
            return
        self._ensure_meter(trainer)
        if not self._timer.attached:
            if self._windows.cycle is not None:
                self._finish_cycle(trainer)
            self._windows.open(trainer.optimizers, self.clock, self._device)
        self.samples += windows.batch_size(batch)
        self._timer.begin_step(count_flops=self._timer.flop_steps == 0)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._timer is not None:
            self._timer.backward_done()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        done = self._windows is not None and self._windows.step_done(self.phase(trainer.global_step))
        if done and self.mode == "allocate":
            self._publish(trainer)

    def _finish_cycle(self, trainer: pl.Trainer) -> None:
        """Close the window in flight: the step's energy from the reference steps (else from the
        profiled steps minus the hooks' own time), then publish."""
        if self._windows is not None and self._windows.finish() and self.mode == "allocate":
            self._publish(trainer)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._windows is not None:
            self._windows.abandon()

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_cycle(trainer)  # no hooks during validation

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_cycle(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_cycle(trainer)
        if self._timer is None:
            return
        self._timer.detach()
        if self.steps == 0:
            rank_zero_warn(
                f"LayerEnergyProfiler: nothing was profiled: training ran {trainer.global_step} step(s), "
                f"not more than warmup_steps={self.warmup_steps}; no layer files were written. "
                "Lower warmup_steps or train longer."
            )
            return
        load = self.book.load.warning(self.clock_kind, torch.get_num_threads())
        if load:
            rank_zero_warn(f"LayerEnergyProfiler: {load}")
        if self.mode != "allocate" and self.book.measured_steps:
            self._replay_all()
        self._publish(trainer, final=True)
        for node in self.nodes.values():
            node.capture = None  # the captured inputs can be large

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._timer is not None:
            self._timer.detach()
        if self._own_meter and self._meter is not None:
            self._meter.close()
            self._meter = None

    def _replay_all(self) -> None:
        assert self._meter is not None and self._timer is not None
        clock = self._timer.clock
        measured = any(not c.source.startswith("estimated") for c in self._meter.channels)
        self.replays, self.replay_overhead = replay_modules(
            list(self.nodes.values()), self._meter, clock.sync, self.replay_window_s,
            windows.MIN_WINDOW_S if measured else MIN_ESTIMATE_PASS_S,
            now=None if clock.kind in ("wall", "cuda-events") else clock.now, say=rank_zero_info,
        )  # fmt: skip

    # ------------------------------------------------------------------ results
    def step_figures(self) -> dict[str, Any]:
        """The measured step: ``step_j`` and ``step_s`` (per profiled step, from the reference
        windows; seconds in the modules' ``clock``) and ``step_wall_s``, the hooks' own seconds per
        step, windows measured and how, the machine's load during the profiled steps, the replay's
        fixed cost per call that was subtracted."""
        over = self.replay_overhead
        figures = self._windows.figures() if self._windows is not None else {"step_j": None, "step_s": None}
        return {
            "mode": self.mode, **figures,
            "replay_overhead_j_per_call": over[0] if over else None,
            "replay_overhead_s_per_call": over[1] if over else None,
            "rank": self._rank, "world_size": self._world,
        }  # fmt: skip

    def rows(self) -> list[dict[str, Any]]:
        """One row per module in the model's order, then ``unattributed`` (figures per step).

        ``joules_per_step`` (the module's own work) and ``share`` are ``None`` where there is no
        figure (no window was measured, a replay failed); ``complete`` is then ``False`` and
        ``note`` says why.
        """
        t = self._timer
        fig = self.step_figures()
        step = StepInputs(
            step_j=fig["step_j"], step_s=fig["step_s"], optimizer_s=fig["optimizer_s_per_step"] or 0.0,
            meter_source=fig.get("source", "none"), clock=self.clock_kind,
            samples_per_step=max(self.samples, 1) / max(self.steps, 1), rank=self._rank,
            world_size=self._world, problems=tuple(self.problems), failed_windows=self.book.failed_windows,
            replays=self.replays,
        )  # fmt: skip
        stats = module_stats(self.nodes, self.steps, t.flop_steps if t else 0)
        return build_rows(stats, step, self.mode)

    def type_table(self, as_frame: bool = False) -> Any:
        """Per layer type: own joules per step, share, parameters, FLOPs, modules (``None`` where a
        member has no figure); a list of dicts, or with ``as_frame=True`` a pandas DataFrame."""
        table = type_rows(self.rows())
        if as_frame:
            import pandas as pd

            return pd.DataFrame(table)
        return table

    def _publish(self, trainer: pl.Trainer, final: bool = False) -> None:
        rows = self.rows()
        types = type_rows(rows)
        publish(trainer, outputs.logged_metrics(types))
        if not self._writer_rank or self.output_dir is None:
            return
        run_id = _energy_monitor_link(trainer)[2] or self._run_id
        profile = {**self.step_figures(), "notes": self.structure_notes + self.problems}
        title = f"{self.mode}: {rows[0]['source']} ({self.steps} profiled steps)"
        chart = (title, self.top_layers) if self.plot else None
        written = outputs.write_all(
            self.output_dir, run_id, rows, types, profile, final, chart,
            lambda why: rank_zero_warn(f"LayerEnergyProfiler: {why}"),
        )  # fmt: skip
        if written:
            self.written = written
