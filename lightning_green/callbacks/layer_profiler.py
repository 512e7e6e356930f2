"""Per-layer and per-layer-type energy of training steps, through forward and backward hooks.

Finds which layers, and which kinds of layer, burn the energy of a training step.
"""

from __future__ import annotations

import copy
import math
import os
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_green._checks import check_bool, check_number
from lightning_green._checks import check_int as _check_int
from lightning_green._plotting import pyplot
from lightning_green.callbacks.energy_monitor import EnergyMonitor
from lightning_green.callbacks.flops import forward_flops
from lightning_green.callbacks.layer_types import LAYER_TYPES, layer_type
from lightning_green.callbacks.placement import default_output_dir, own_gpus
from lightning_green.callbacks.publish import publish
from lightning_green.energy import Meter, check_backend, make_meter
from lightning_green.records import RECORDS_FILE, LayerRecord, RecordWriter, temporary_path

MODES = ("allocate", "replay")
UNATTRIBUTED = "unattributed"
_WINDOW = "layer_profiler/window"
#: Shorter profiling windows than this get a warning when read from a hardware counter.
MIN_WINDOW_S = 1.0
_REPLAY_WINDOW = "layer_profiler/replay"


class _Clock:
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


@dataclass
class _LayerStats:
    name: str
    module: nn.Module
    layer_type: str
    params: int
    forward_s: float = 0.0
    backward_s: float = 0.0
    joules: float = 0.0
    calls: int = 0
    flops_per_call: int = 0
    replay_j_per_call: float | None = None
    replay_note: str = ""
    sample_input: torch.Tensor | None = None
    # marks of the step in flight
    fwd: list[tuple[Any, Any]] = field(default_factory=list)
    bwd: list[list[Any]] = field(default_factory=list)
    fwd_open: list[tuple[Any, torch.Tensor | None]] = field(default_factory=list)
    bwd_open: list[list[Any]] = field(default_factory=list)


class LayerEnergyProfiler(Callback):
    r"""Energy per layer and per layer type, from hooks attached only during profiled steps.

    After ``warmup_steps`` training steps, ``profile_steps`` consecutive steps are profiled, then
    again every ``every_n_steps`` steps. Forward and backward hooks go onto every *leaf* module
    (parents are not counted, so nothing twice) only for those steps; between them the model runs
    without hooks. Each leaf's forward and backward time is taken with the device synchronised at
    the step's edges (CUDA events on a GPU, a monotonic clock on CPU). A layer's backward runs from
    the moment its output's gradient is ready to the moment its input's gradient is (for the first
    layer, whose input needs none, until its parameters' gradients are accumulated). Modules with
    ``inplace=True`` (ReLU) run out of place during profiled steps so that hooks see their input;
    the arithmetic is the same.

    Joules come one of two ways, named in every row's ``source``:

    - ``mode="allocate"`` (default): the meter measures each profiling window as a whole (its
      consecutive steps: forward, backward, optimizer, and the data loading between them), and the
      window's energy is split across layers in proportion to their synchronised time; what no
      layer explains (optimizer, data movement, framework) is the ``unattributed`` row. Layers plus
      unattributed equal the measured energy per profiled step (window energy / steps). Hardware
      counters update every 10-100 ms: windows under a second get a warning (raise
      ``profile_steps``). Source: ``allocated:<meter source>``.
    - ``mode="replay"``: at the end of training each leaf's forward and backward is replayed on a
      copy of the layer, on its captured input, in a loop of about ``replay_window_s`` seconds so
      that the energy counter resolves it; joules per iteration are measured directly. Source:
      ``replayed:<meter source>``. ``unattributed`` is then the measured step energy minus the
      layers' sum (it can be negative: layers in isolation lose the cache and overlap of a step).

    Written to ``output_dir`` (default: the EnergyMonitor's, else the logger's log dir):

    - ``layers.csv``: per leaf: ``run_id`` (the EnergyMonitor's run), ``name`` (qualified),
      ``layer_type``, ``params``, ``flops`` (forward FLOPs per step, from
      ``torch.utils.flop_counter``), ``calls`` (per step), ``forward_s``, ``backward_s`` and
      ``seconds`` (per step; for ``unattributed``, the step's time no layer explains), ``share``
      (of the step's energy), ``joules_per_step``, ``joules_per_sample``, ``source``,
      ``complete`` and ``note`` (a row with no figure, empty joules, says why: the window read
      0 J, the meter failed, a replay failed); plus the ``unattributed`` row.
    - ``layer_types.csv``: per type (Conv, Linear, ReLU, Activation, BatchNorm, Norm, Pooling,
      Dropout, Other, unattributed): ``run_id``, ``joules_per_step``, ``share``, ``params``, ``flops``.
    - ``layer_energy.png``: bar charts of energy by layer type and of the top layers.
    - ``energy.jsonl``: the same rows as ``layer`` / ``layer_type`` records.

    Logged through the Trainer's loggers and ``trainer.callback_metrics`` after each profiling
    window: ``layer_energy/<type>_j`` (joules per training step of that layer type, e.g.
    ``layer_energy/Conv_j``) and ``layer_energy/unattributed_j``.

    Args:
        warmup_steps: Training steps before the first profiled step (>= 0).
        profile_steps: Consecutive steps per profiling window (>= 1).
        every_n_steps: Start a new window every this many steps (>= ``profile_steps``); ``None``
            profiles one window only.
        mode: ``"allocate"`` or ``"replay"``.
        replay_window_s: Seconds each layer's replay loop runs (> 0).
        backend: Meter backend when no EnergyMonitor is present (see ``EnergyMonitor``).
        meter: A meter to use instead (default: the EnergyMonitor's, else one built from ``backend``).
        output_dir: Where files go.
        top_layers: Layers shown in the chart.
        plot: Save ``layer_energy.png`` at the end of training (about 0.3 s of matplotlib, once).

    A measurement failure never ends training: a profiling window whose meter raises or whose
    counter does not move is left out with one warning, and the rows say so.

    Raises:
        ValueError: On a bad argument (naming it), or in ``setup`` for a model with no leaf modules.

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
        ['Conv', 'Linear', 'ReLU', 'BatchNorm', 'Pooling', 'Other', 'unattributed']
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
    ) -> None:
        _check_int("warmup_steps", warmup_steps, 0)
        _check_int("profile_steps", profile_steps, 1)
        if every_n_steps is not None:
            _check_int("every_n_steps", every_n_steps, profile_steps)
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
        self.warmup_steps, self.profile_steps, self.every_n_steps = warmup_steps, profile_steps, every_n_steps
        self.mode, self.replay_window_s, self.backend = mode, float(replay_window_s), backend
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.top_layers = top_layers
        self.plot = plot
        self._layers: dict[str, _LayerStats] = {}
        self._handles: list[RemovableHandle] = []
        self._inplace: list[nn.Module] = []
        self._meter: Meter | None = meter
        self._own_meter = False
        self._clock: _Clock | None = None
        self._step_start: Any = None
        self._in_step = False
        self._source = ""
        self.steps = 0
        self.samples = 0
        self.step_seconds = 0.0  # the profiled steps themselves
        self.window_joules = 0.0  # measured over whole profiling windows (steps + the gaps between)
        self.window_seconds = 0.0
        self.measured_steps = 0  # profiled steps inside windows that were measured
        self._window_steps = 0
        self.failed_windows = 0  # windows whose meter failed or whose counter did not move
        self.written: list[str] = []  # the files of the last successful write, for the commands to list
        self._run_id = uuid.uuid4().hex[:12]  # names this profiler's files when no EnergyMonitor runs
        self.problems: list[str] = []  # why (shown in the rows' ``note``)
        self._warned_meter = False
        self._window_layer_s: dict[str, float] = {}
        self._warned_short = False
        self._writer_rank = False

    # ------------------------------------------------------------------ set-up
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        leaves = _leaf_modules(pl_module)
        if not leaves:
            raise ValueError(
                f"LayerEnergyProfiler found no leaf modules in {type(pl_module).__name__}: it profiles "
                "nn.Module layers (nn.Conv2d, nn.Linear, ...); register your layers as submodules"
            )
        self._layers = {
            name: _LayerStats(name, m, layer_type(m), sum(p.numel() for p in m.parameters(recurse=False)))
            for name, m in leaves
        }
        self._clock = _Clock(trainer.strategy.root_device)
        self._writer_rank = trainer.is_global_zero

    def _ensure_meter(self, trainer: pl.Trainer) -> Meter:
        if self._meter is None or self.output_dir is None:
            monitor = next((c for c in trainer.callbacks if isinstance(c, EnergyMonitor)), None)
            if monitor is not None and self.output_dir is None:
                self.output_dir = monitor.output_dir
            if self._meter is not None:
                pass
            elif monitor is not None and monitor.meter is not None:
                self._meter = monitor.meter
            else:
                self._meter = make_meter(
                    self.backend, gpu_indices=own_gpus(trainer), measure_node=trainer.local_rank == 0
                )
                self._own_meter = True
            if self.output_dir is None:
                self.output_dir = default_output_dir(trainer)
        return self._meter

    def is_profiled_step(self, step: int) -> bool:
        """Whether training step ``step`` (0-based global step) is profiled."""
        if step < self.warmup_steps:
            return False
        offset = step - self.warmup_steps
        if self.every_n_steps is None:
            return offset < self.profile_steps
        return offset % self.every_n_steps < self.profile_steps

    # ------------------------------------------------------------------ hooks
    def _attach(self) -> None:
        for stats in self._layers.values():
            m = stats.module
            self._handles.append(m.register_forward_pre_hook(self._fwd_pre(stats)))
            self._handles.append(m.register_forward_hook(self._fwd_post(stats)))
            for p in m.parameters(recurse=False):
                if p.requires_grad:
                    self._handles.append(p.register_post_accumulate_grad_hook(self._bwd_end(stats)))
            if getattr(m, "inplace", False) is True:
                m.inplace = False
                self._inplace.append(m)

    def _detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for m in self._inplace:
            m.inplace = True
        self._inplace.clear()

    @property
    def attached(self) -> bool:
        """Whether hooks are on the model right now."""
        return bool(self._handles)

    # Backward is timed with tensor hooks rather than nn.Module full backward hooks, which break
    # models that modify a layer's output in place (ResNet's ``out += identity``): it starts when
    # the gradient of the layer's output is ready and ends when the gradient of its input is (or,
    # for the first layer, whose input needs none, when its parameters' gradients are accumulated).
    def _fwd_pre(self, s: _LayerStats):
        clock = self._clock

        def hook(module: nn.Module, args: tuple) -> None:
            if not self._in_step:
                return
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if s.sample_input is None and x is not None:
                s.sample_input = x.detach().clone()
            s.fwd_open.append((clock.mark(), x))

        return hook

    def _fwd_post(self, s: _LayerStats):
        clock = self._clock

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if not self._in_step or not s.fwd_open:
                return
            start, x = s.fwd_open.pop()
            s.fwd.append((start, clock.mark()))
            s.calls += 1
            out = (
                output
                if isinstance(output, torch.Tensor)
                else next((o for o in output if isinstance(o, torch.Tensor)), None)
                if isinstance(output, (tuple, list))
                else None
            )
            if out is None or not out.requires_grad:
                return
            interval: list[Any] = [None, None]
            s.bwd.append(interval)

            def grad_out_ready(grad: torch.Tensor) -> None:
                if self._in_step and interval[0] is None:
                    interval[0] = clock.mark()
                    s.bwd_open.append(interval)

            def grad_in_ready(grad: torch.Tensor) -> None:
                if self._in_step and interval[0] is not None:
                    interval[1] = clock.mark()

            out.register_hook(grad_out_ready)
            if x is not None and x.requires_grad:
                x.register_hook(grad_in_ready)

        return hook

    def _bwd_end(self, s: _LayerStats):
        clock = self._clock

        def hook(param: torch.Tensor) -> None:
            if self._in_step and s.bwd_open:
                s.bwd_open[-1][1] = clock.mark()

        return hook

    # ------------------------------------------------------------------ steps
    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._layers or not self.is_profiled_step(trainer.global_step):
            return
        meter = self._ensure_meter(trainer)
        if not self.attached:
            try:
                meter.begin_window(_WINDOW)  # synchronises the device
            except Exception as err:  # a measurement failure never ends training
                meter.discard_window(_WINDOW)
                self._meter_failed(err)
                return
            self._attach()
            self._window_layer_s = dict.fromkeys(self._layers, 0.0)
            self._window_steps = 0
        self._batch_size = _batch_size(batch)
        self._in_step = True
        self._step_start = self._clock.mark()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._in_step:
            return
        step_end = self._clock.mark()
        self._in_step = False
        self._clock.sync()  # every event of the step has completed
        self.step_seconds += self._clock.seconds(self._step_start, step_end)
        for s in self._layers.values():
            f = sum(self._clock.seconds(a, b) for a, b in s.fwd)
            b = sum(self._clock.seconds(a, e) for a, e in s.bwd if a is not None and e is not None)
            s.forward_s += f
            s.backward_s += b
            self._window_layer_s[s.name] += f + b
            s.fwd.clear(), s.bwd.clear(), s.fwd_open.clear(), s.bwd_open.clear()
        self.steps += 1
        self._window_steps += 1
        self.samples += self._batch_size
        if not self.is_profiled_step(trainer.global_step):  # the window is over (global_step advanced)
            self._end_window(trainer)

    def _end_window(self, trainer: pl.Trainer) -> None:
        """Close the profiling window: measure it, split its energy across layers, detach hooks."""
        if not self.attached:
            return
        self._detach()
        assert self._meter is not None
        try:
            reading = self._meter.end_window(_WINDOW)
        except Exception as err:  # a measurement failure never ends training: this window has no figure
            self._meter.discard_window(_WINDOW)
            self._meter_failed(err)
            self._forget_window()
            return
        if not reading.complete or not reading.joules > 0:
            why = (
                "the meter's counter failed in the profiling window"
                if not reading.complete
                else f"the profiling window ({reading.seconds:.3f} s) measured 0 J: the counter did not advance"
            )
            self._note(why)
            self._forget_window()
            return
        self._source = "+".join(sorted(set(reading.sources.values()))) or "none"
        # Allocation: a layer's share of the window's energy is its share of the window's time. If
        # layer times add up past the window (overlapping async GPU work), scale to their sum.
        layer_total = sum(self._window_layer_s.values())
        denom = max(reading.seconds, layer_total)
        for name, t in self._window_layer_s.items():
            self._layers[name].joules += reading.joules * t / denom if denom > 0 else 0.0
        self.window_joules += reading.joules
        self.window_seconds += reading.seconds
        self.measured_steps += self._window_steps
        if reading.seconds < MIN_WINDOW_S and self._source.startswith("measured") and not self._warned_short:
            self._warned_short = True
            rank_zero_warn(
                f"LayerEnergyProfiler: the profiling window lasted {reading.seconds:.3f} s, shorter than "
                f"{MIN_WINDOW_S} s; hardware energy counters update every 10-100 ms, so its joules are coarse. "
                "Raise profile_steps, or use mode='replay'."
            )
        self._publish(trainer)

    def _meter_failed(self, err: Exception) -> None:
        self._note(f"the meter failed ({err!r})")

    def _note(self, why: str) -> None:
        self.failed_windows += 1
        if why not in self.problems:
            self.problems.append(why)
        if not self._warned_meter:
            self._warned_meter = True
            rank_zero_warn(f"LayerEnergyProfiler: {why}; that window has no figure and training goes on.")

    def _forget_window(self) -> None:
        """A failed window adds no joules: every figure comes from measured windows only."""
        self._window_steps = 0

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._in_step = False
        self._detach()
        if self._meter is not None:
            self._meter.discard_window(_WINDOW)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_window(trainer)  # no hooks during validation; the window resumes at the next step

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_window(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._detach()
        if self.steps == 0:
            rank_zero_warn(
                f"LayerEnergyProfiler: nothing was profiled: training ran {trainer.global_step} step(s), "
                f"not more than warmup_steps={self.warmup_steps}; no layer files were written. "
                "Lower warmup_steps or train longer."
            )
            return
        self._compute_flops()
        if self.mode == "replay":
            self._replay_all()
        self._publish(trainer, final=True)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._detach()
        if self._own_meter and self._meter is not None:
            self._meter.close()
            self._meter = None

    # ------------------------------------------------------------------ results
    def _compute_flops(self) -> None:
        for s in self._layers.values():
            if s.sample_input is not None and not s.flops_per_call:
                s.flops_per_call = forward_flops(s.module, s.sample_input) or 0  # unknown inputs: 0

    def _replay_all(self) -> None:
        assert self._meter is not None
        for s in self._layers.values():
            if s.sample_input is None:
                s.replay_note = "no input was captured"
                continue
            try:
                s.replay_j_per_call = _replay(
                    s.module, s.sample_input, self._meter, self._clock, self.replay_window_s
                )
                if s.replay_j_per_call is None:
                    s.replay_note = "the layer could not be replayed on its captured input"
                elif not s.replay_j_per_call > 0:
                    s.replay_j_per_call = None
                    s.replay_note = "the replay loop measured 0 J (the counter did not advance)"
            except Exception as err:  # a measurement failure never ends training
                self._meter.discard_window(_REPLAY_WINDOW)
                s.replay_j_per_call = None
                s.replay_note = f"the meter failed in replay ({err!r})"

    def rows(self) -> list[dict[str, Any]]:
        """Per-layer rows (per profiled step), the unattributed row last.

        ``joules_per_step``, ``joules_per_sample`` and ``share`` are ``None`` where there is no
        figure (no profiling window was measured, a replay failed); ``complete`` is then ``False``
        and ``note`` says why. Times are averages over every profiled step; joules over the
        profiling windows that were measured.
        """
        n = max(self.steps, 1)
        measured = self.measured_steps
        step_j = self.window_joules / measured if measured else None
        per_sample = n / max(self.samples, 1)
        replay = self.mode == "replay"
        window_note = (
            f"{self.failed_windows} of the profiling windows had no figure ({'; '.join(self.problems)})"
            if self.problems
            else ""
        )
        no_figure = "no profiling window was measured: " + ("; ".join(self.problems) or "none ran")
        rows = []
        for s in self._layers.values():
            calls = s.calls / n
            j: float | None
            if replay:
                j = s.replay_j_per_call * calls if s.replay_j_per_call is not None else None
                source = f"replayed:{self._source or 'none'}"
                note = s.replay_note if j is None else ""
            else:
                j = s.joules / measured if measured else None
                source = f"allocated:{self._source or 'none'}"
                note = no_figure if j is None else window_note
            rows.append(
                {
                    "name": s.name,
                    "layer_type": s.layer_type,
                    "params": s.params,
                    "flops": int(s.flops_per_call * calls),
                    "calls": calls,
                    "forward_s": s.forward_s / n,
                    "backward_s": s.backward_s / n,
                    "seconds": (s.forward_s + s.backward_s) / n,
                    "joules_per_step": j,
                    "joules_per_sample": j * per_sample if j is not None else None,
                    "source": source,
                    "complete": j is not None,
                    "note": note,
                }
            )
        missing = [r for r in rows if r["joules_per_step"] is None]
        un_j = None if step_j is None or missing else step_j - sum(r["joules_per_step"] for r in rows)
        un_note = (
            no_figure
            if step_j is None
            else f"{len(missing)} layer(s) have no figure, so the rest of the step is unknown"
            if missing
            else window_note
        )
        rows.append(
            {
                "name": UNATTRIBUTED,
                "layer_type": UNATTRIBUTED,
                "params": 0,
                "flops": 0,
                "calls": 0.0,
                "forward_s": 0.0,
                "backward_s": 0.0,
                "seconds": max(0.0, self.window_seconds / max(measured, 1) - sum(r["seconds"] for r in rows)),
                "joules_per_step": un_j,
                "joules_per_sample": un_j * per_sample if un_j is not None else None,
                "source": f"measured-step-minus-layers:{self._source or 'none'}",
                "complete": un_j is not None,
                "note": un_note,
            }
        )
        for r in rows:
            j = r["joules_per_step"]
            r["share"] = j / step_j if j is not None and step_j else None
        return rows

    def type_table(self) -> list[dict[str, Any]]:
        """Per-layer-type rows: joules per step, share, parameters, FLOPs (``None`` where a member has no figure)."""
        agg: dict[str, dict[str, Any]] = defaultdict(
            lambda: {"joules_per_step": 0.0, "share": 0.0, "params": 0, "flops": 0, "layers": 0}
        )
        for r in self.rows():
            a = agg[r["layer_type"]]
            for key in ("joules_per_step", "share"):
                a[key] = None if a[key] is None or r[key] is None else a[key] + r[key]
            a["params"] += r["params"]
            a["flops"] += r["flops"]
            a["layers"] += 0 if r["name"] == UNATTRIBUTED else 1
        order = [*LAYER_TYPES, UNATTRIBUTED]
        return [{"layer_type": t, **agg[t]} for t in order if t in agg]

    def _publish(self, trainer: pl.Trainer, final: bool = False) -> None:
        types = self.type_table()
        metrics = {
            f"layer_energy/{t['layer_type']}_j": t["joules_per_step"]
            for t in types
            if t["joules_per_step"] is not None
        }
        publish(trainer, metrics)
        if not self._writer_rank or self.output_dir is None:
            return
        rows = self.rows()
        run_id = next((c.run_id for c in trainer.callbacks if isinstance(c, EnergyMonitor)), self._run_id)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # Each file names its run: several trainings may share one folder (their records in
        # energy.jsonl stay apart by run_id; the CSVs hold the latest run's table).
        try:
            _write_csv(self.output_dir / "layers.csv", [{"run_id": run_id, **r} for r in rows])
            _write_csv(self.output_dir / "layer_types.csv", [{"run_id": run_id, **t} for t in types])
            self.written = ["layers.csv", "layer_types.csv"]
        except OSError as err:  # a full disk loses the tables, never the training
            rank_zero_warn(f"LayerEnergyProfiler: cannot write the layer tables to {self.output_dir} ({err})")
            return
        if final:
            if self.plot:
                try:
                    self._plot(types, rows)
                    self.written.append("layer_energy.png")
                except OSError as err:
                    rank_zero_warn(f"LayerEnergyProfiler: cannot save layer_energy.png ({err})")
            mode = self.mode
            records = [
                LayerRecord(
                    run_id=run_id,
                    kind="layer",
                    name=r["name"],
                    layer_type=r["layer_type"],
                    joules_per_step=r["joules_per_step"],
                    share=r["share"],
                    source=r["source"],
                    mode=mode,
                    params=r["params"],
                    flops=r["flops"],
                    forward_s=r["forward_s"],
                    backward_s=r["backward_s"],
                    joules_per_sample=r["joules_per_sample"],
                    calls=round(r["calls"]),
                    steps=self.steps,
                    complete=r["complete"],
                    note=r["note"],
                )
                for r in rows
            ]
            records += [
                LayerRecord(run_id=run_id, kind="layer_type", name=t["layer_type"], layer_type=t["layer_type"],
                            joules_per_step=t["joules_per_step"], share=t["share"], source=rows[0]["source"] if t["layer_type"] != UNATTRIBUTED else rows[-1]["source"],
                            mode=mode, params=t["params"], flops=t["flops"], steps=self.steps,
                            complete=t["joules_per_step"] is not None)
                for t in types
            ]  # fmt: skip
            writer = RecordWriter(self.output_dir / RECORDS_FILE)
            writer.write_many(records)
            writer.close()

    def _plot(self, types: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
        plt = pyplot()
        types = [t for t in types if t["joules_per_step"] is not None]
        top = sorted(
            (r for r in rows if r["name"] != UNATTRIBUTED and r["joules_per_step"] is not None),
            key=lambda r: -r["joules_per_step"],
        )[: self.top_layers]
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, max(3.5, 0.3 * len(top) + 1)))
        a.barh(
            [t["layer_type"] for t in types][::-1],
            [t["joules_per_step"] for t in types][::-1],
            color="tab:orange",
        )
        a.set_xlabel("joules per training step")
        a.set_title("Energy by layer type")
        b.barh(
            [f"{r['name']} ({r['layer_type']})" for r in top][::-1],
            [r["joules_per_step"] for r in top][::-1],
            color="tab:green",
        )
        b.set_xlabel("joules per training step")
        b.set_title(f"Top {len(top)} layers")
        fig.suptitle(f"{self.mode}: {rows[0]['source']} ({self.steps} profiled steps)", fontsize=9)
        fig.tight_layout()
        fig.savefig(self.output_dir / "layer_energy.png", dpi=110)
        plt.close(fig)


def _replay(
    module: nn.Module, sample: torch.Tensor, meter: Meter, clock: _Clock, window_s: float
) -> float | None:
    """Joules of one forward+backward of ``module`` on ``sample``, from a loop of about ``window_s`` seconds."""
    m = copy.deepcopy(module)  # the real layer's weights, gradients and BatchNorm statistics stay untouched
    if getattr(m, "inplace", False) is True:
        m.inplace = False
    x = sample.detach().clone().requires_grad_(sample.is_floating_point())

    def once() -> None:
        x.grad = None
        out = m(x)
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.backward(torch.ones_like(out))

    try:
        once()
    except Exception:
        return None
    clock.sync()
    t0, n = time.perf_counter(), 0
    while n < 3 or time.perf_counter() - t0 < min(0.05, window_s / 4):
        once()
        n += 1
    clock.sync()
    per_iter = (time.perf_counter() - t0) / n
    iters = max(3, math.ceil(window_s / max(per_iter, 1e-9)))
    meter.begin_window(_REPLAY_WINDOW)
    for _ in range(iters):
        once()
    reading = meter.end_window(_REPLAY_WINDOW)
    return reading.joules / iters


def _leaf_modules(root: nn.Module) -> list[tuple[str, nn.Module]]:
    try:
        from torchmetrics import Metric
    except ImportError:  # pragma: no cover
        Metric = ()
    out = []
    for name, m in root.named_modules():
        if m is root or next(m.children(), None) is not None or isinstance(m, Metric):
            continue
        out.append((name, m))
    return out


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_size(batch[0])
    if isinstance(batch, dict) and batch:
        return _batch_size(next(iter(batch.values())))
    return 1


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv

    if not rows:
        return
    tmp = temporary_path(path)  # unique per process and call, outside the folder
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
