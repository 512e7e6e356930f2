"""LayerEnergyProfiler: the energy of every module of the model, and of every kind of layer."""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_green._checks import check_bool, check_number
from lightning_green._checks import check_int as _check_int
from lightning_green.callbacks.energy_monitor import EnergyMonitor
from lightning_green.callbacks.flops import forward_flops
from lightning_green.callbacks.layer_profiler import attribution as attr
from lightning_green.callbacks.layer_profiler import outputs
from lightning_green.callbacks.layer_profiler.kinds import LAYER_TYPES
from lightning_green.callbacks.layer_profiler.outputs import UNATTRIBUTED
from lightning_green.callbacks.layer_profiler.replay import ReplayResult, replay
from lightning_green.callbacks.layer_profiler.timing import Clock, Node, StepTimer, build_tree
from lightning_green.callbacks.placement import default_output_dir, own_gpus
from lightning_green.callbacks.publish import publish
from lightning_green.energy import Meter, Reading, check_backend, make_meter

MODES = ("allocate", "power", "replay")
#: What each mode's rows say in ``source`` (before ``:<meter source>``).
SOURCES = {"allocate": "allocated", "power": "allocated-by-power", "replay": "replayed"}
_HOOKED = "layer_profiler/window"
_REFERENCE = "layer_profiler/reference"
#: Shorter profiling windows than this get a warning when read from a hardware counter.
MIN_WINDOW_S = 1.0
UNATTRIBUTED_NOTE = "the step outside the modules' forward/backward and the optimizer update: data loading, loss, zero_grad, framework"


class LayerEnergyProfiler(Callback):
    r"""Energy of every module (each block, attention, conv, ...) and of every layer type.

    **What is timed.** After ``warmup_steps`` training steps, ``profile_steps`` consecutive steps are
    *profiled*: hooks on every module of the tree (not only leaves) time each call's forward and
    backward (CUDA events on a GPU, so nothing synchronises inside a step; a monotonic clock on
    CPU, with the hooks' own time removed), and the optimizer's update from the end of backward to
    the end of ``optimizer.step``. Each module gets a *total* (itself and its children) and a
    *self* figure (total minus the calls it made to its children): a block's total includes its
    attention core, and work a module does in its own ``forward`` between child calls (a
    ``scaled_dot_product_attention`` call, residual additions) is its own, not unattributed. The
    optimizer update is shared among modules by their own trainable parameters (an element-wise
    update costs in proportion to the elements). Then as many *reference* steps run without
    hooks and the meter measures them: the step's energy comes from steps the hooks did not slow
    down. Windows repeat every ``every_n_steps`` steps; between them the model runs without hooks.

    **How joules are split** (``mode``, named in every row's ``source``):

    - ``"allocate"`` (default; ``allocated:<meter>``): a module's share of the measured step
      energy is its share of the step's time.
    - ``"power"`` (``allocated-by-power:<meter>``): each module's time is weighted by the power it
      draws, measured by replaying it alone (a tensor-core matmul and an element-wise kernel do not
      draw the same watts); scaled so that modules + unattributed equal the measured step.
    - ``"replay"`` (``replayed:<meter>``): each module's forward and backward is replayed alone in
      a loop of about ``replay_window_s`` seconds and its joules measured directly; a parent's
      self figure is its replay minus its children's.

    Replays (``power``, ``replay``) run at the end of training, once per distinct module (same
    structure, inputs and context: identical blocks share one), under the context each ran in:
    autocast on/off and dtype, input dtypes and memory format, grad mode, train mode, and the
    captured output gradients. A module that cannot be replayed faithfully is skipped with the
    reason in its row. ``unattributed`` is the step outside the modules' forward/backward and
    the optimizer update (data loading, loss, ``zero_grad``, framework).

    Measured against ablation (removing blocks and comparing measured energy, see
    ``benchmarks/layer_ablation.py`` and the README for the errors per mode). Under DDP each rank
    profiles its own device and rank 0 writes its own figures (``rank``/``world_size`` columns).
    A ``torch.compile``'d submodule is timed as one unit (type ``Compiled``): the modules inside it
    are not attributable. Attention written as ``torch.nn.functional.scaled_dot_product_attention``
    (looked up at call time, as nanoGPT does) is recognised while profiling.

    Written to ``output_dir`` (default: the EnergyMonitor's, else the logger's log dir):

    - ``layers.csv``: one row per module, in the model's order, then ``unattributed``:
      ``run_id``, ``name``, ``parent``, ``depth``, ``module_type``, ``layer_type``, ``params`` (own),
      ``total_params``, ``calls`` (per step), seconds per step (``self_forward_s``,
      ``self_backward_s``, ``optimizer_s``, ``self_s``, ``total_s``), joules per step
      (``joules_per_step``: own work, so the rows add up to the step; ``total_j``: with its
      children; ``optimizer_j``), ``share`` and ``total_share`` (of the step's energy),
      ``joules_per_sample``, ``flops`` (own forward FLOPs per step) and ``total_flops``, the
      figure of each computed method (``allocated_j``, ``power_j``, ``replayed_j``), the replay's
      ``replay_j_per_call`` and ``replay_w``, ``source``, ``complete``, ``note`` (why a row has
      no figure), ``rank``, ``world_size``.
    - ``layer_types.csv``: per type (Conv, Linear, Attention, Embedding, ReLU, Activation,
      BatchNorm, Norm, Pooling, Dropout, Composite, Compiled, Other, unattributed), own joules
      summed: ``joules_per_step``, ``share``, ``params``, ``flops``, ``layers``.
    - ``layer_profile.json``: the step figures (``step_j``, ``step_s``, the hooks' own time per
      step, windows measured and how), the mode and the meter's source.
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
        self.reference_steps = (
            profile_steps if every_n_steps is None else min(profile_steps, every_n_steps - profile_steps)
        )
        self.mode, self.replay_window_s, self.backend = mode, float(replay_window_s), backend
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.top_layers = top_layers
        self.plot = plot
        self.nodes: dict[str, Node] = {}
        self._timer: StepTimer | None = None
        self._meter: Meter | None = meter
        self._own_meter = False
        self._source = ""
        self.samples = 0
        # measured windows: the profiled (hooked) ones and their unhooked references
        self.window_joules = 0.0
        self.window_seconds = 0.0
        self.reference_joules = 0.0
        self.reference_seconds = 0.0
        self._step_j_sum = 0.0  # step energy x profiled steps, over the windows that were measured
        self._step_s_sum = 0.0
        self.measured_steps = 0  # profiled steps in windows that were measured
        self.fallback_windows = 0  # windows with no reference steps (energy: profiled steps minus hooks)
        self.failed_windows = 0  # windows whose meter failed or whose counter did not move
        self._cycle: dict[str, Any] | None = None
        self.replays: dict[str, ReplayResult] = {}
        self.written: list[str] = []  # the files of the last successful write, for the commands to list
        self._run_id = uuid.uuid4().hex[:12]  # names this profiler's files when no EnergyMonitor runs
        self.problems: list[str] = []  # why (shown in the rows' ``note``)
        self.structure_notes: list[str] = []
        self._warned_meter = False
        self._warned_short = False
        self._writer_rank = False
        self._rank, self._world = 0, 1
        self._flops_done = False

    # ------------------------------------------------------------------ set-up
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.nodes, inside = build_tree(pl_module)
        if getattr(pl_module, "_compiler_ctx", None) is not None:
            rank_zero_warn(
                "LayerEnergyProfiler: the LightningModule itself is torch.compile'd; hooks inside a "
                "compiled forward would break its graph, so no module is profiled. Compile submodules "
                "instead (each is then timed as one unit)."
            )
            self.nodes = {}
            return
        if not self.nodes:
            raise ValueError(
                f"LayerEnergyProfiler found no modules in {type(pl_module).__name__}: it profiles "
                "nn.Module layers (nn.Conv2d, nn.Linear, ...); register your layers as submodules"
            )
        if inside:
            self.structure_notes.append(
                f"{len(inside)} module(s) inside torch.compile'd modules are not attributable "
                "(each compiled module is timed as one unit)"
            )
        self._timer = StepTimer(self.nodes, Clock(trainer.strategy.root_device), capture=True)
        self._writer_rank = trainer.is_global_zero
        self._rank, self._world = trainer.global_rank, trainer.world_size

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

    def is_profiled_step(self, step: int) -> bool:
        """Whether training step ``step`` (0-based global step) runs with hooks."""
        return self.phase(step) == "profiled"

    @property
    def steps(self) -> int:
        """Profiled steps so far."""
        return self._timer.steps if self._timer is not None else 0

    @property
    def step_seconds(self) -> float:
        """Seconds of the profiled steps themselves (hooks included)."""
        return self._timer.step_s if self._timer is not None else 0.0

    @property
    def attached(self) -> bool:
        """Whether hooks are on the model right now."""
        return self._timer is not None and self._timer.attached

    # ------------------------------------------------------------------ windows
    def _begin(self, name: str) -> bool:
        assert self._meter is not None
        try:
            self._meter.begin_window(name)  # synchronises the device
            return True
        except Exception as err:  # a measurement failure never ends training
            self._meter.discard_window(name)
            self._note(f"the meter failed ({err!r})")
            return False

    def _end(self, name: str) -> Reading | None:
        assert self._meter is not None
        try:
            reading = self._meter.end_window(name)
        except Exception as err:
            self._meter.discard_window(name)
            self._note(f"the meter failed ({err!r})")
            return None
        if not reading.complete or not reading.joules > 0:
            self._note(
                "the meter's counter failed in a profiling window"
                if not reading.complete
                else f"a profiling window ({reading.seconds:.3f} s) measured 0 J: the counter did not advance"
            )
            return None
        self._source = "+".join(sorted(set(reading.sources.values()))) or "none"
        if reading.seconds < MIN_WINDOW_S and self._source.startswith("measured") and not self._warned_short:
            self._warned_short = True
            rank_zero_warn(
                f"LayerEnergyProfiler: a profiling window lasted {reading.seconds:.3f} s, shorter than "
                f"{MIN_WINDOW_S} s; hardware energy counters update every 10-100 ms, so its joules are coarse. "
                "Raise profile_steps."
            )
        return reading

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._timer is None or self.phase(trainer.global_step) != "profiled":
            return
        self._ensure_meter(trainer)
        if not self._timer.attached:
            if self._cycle is not None:
                self._finish_cycle(trainer)
            measured = self._begin(_HOOKED)
            self._cycle = {"measured": measured, "hooked": None, "ref": None, "n_hooked": 0, "n_ref": 0,
                           "ov0": self._timer.overhead_s, "ref_open": False}  # fmt: skip
            self._timer.attach(trainer.optimizers)
        self.samples += _batch_size(batch)
        self._timer.begin_step()

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
        if self._timer is None or self._cycle is None:
            return
        c = self._cycle
        if self._timer.active:
            self._timer.end_step()
            c["n_hooked"] += 1
            if not self._flops_done:
                self._compute_flops()
        elif c["ref_open"]:
            c["n_ref"] += 1
        nxt = self.phase(trainer.global_step)
        if self._timer.attached and nxt != "profiled":
            self._close_hooked(c)
            if nxt == "reference" and c["measured"]:
                c["ref_open"] = self._begin(_REFERENCE)
        elif c["ref_open"] and nxt != "reference":
            self._finish_cycle(trainer)

    def _close_hooked(self, c: dict[str, Any]) -> None:
        assert self._timer is not None
        self._timer.detach()
        c["ov"] = self._timer.overhead_s - c["ov0"]
        if c["measured"]:
            c["hooked"] = self._end(_HOOKED)

    def _finish_cycle(self, trainer: pl.Trainer) -> None:
        """Close the window: the step's energy from the reference steps (else from the profiled
        steps minus the hooks' own time), then publish."""
        c, self._cycle = self._cycle, None
        if c is None:
            return
        if self.attached:
            self._close_hooked(c)
        if c["ref_open"]:
            c["ref"] = self._end(_REFERENCE)
        hooked, ref, n_h, n_r = c["hooked"], c["ref"], c["n_hooked"], c["n_ref"]
        if hooked is not None:
            self.window_joules += hooked.joules
            self.window_seconds += hooked.seconds
        if ref is not None and n_r > 0:
            self.reference_joules += ref.joules
            self.reference_seconds += ref.seconds
            step_j, step_s = ref.joules / n_r, ref.seconds / n_r
        elif hooked is not None and n_h > 0:
            clean = max(hooked.seconds - c.get("ov", 0.0), 1e-9)
            step_j, step_s = hooked.joules * clean / hooked.seconds / n_h, clean / n_h
            self.fallback_windows += 1
        else:
            if c["measured"] and hooked is not None:
                self._note("a profiling window had no steps")
            return
        self._step_j_sum += step_j * n_h
        self._step_s_sum += step_s * n_h
        self.measured_steps += n_h
        if self.mode == "allocate":
            self._publish(trainer)

    def _note(self, why: str) -> None:
        self.failed_windows += 1
        if why not in self.problems:
            self.problems.append(why)
        if not self._warned_meter:
            self._warned_meter = True
            rank_zero_warn(f"LayerEnergyProfiler: {why}; that window has no figure and training goes on.")

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._timer is not None:
            self._timer.active = False
            self._timer.detach()
        self._cycle = None
        if self._meter is not None:
            for name in (_HOOKED, _REFERENCE):
                self._meter.discard_window(name)

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
        if self.mode != "allocate" and self.measured_steps:
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

    # ------------------------------------------------------------------ FLOPs and replays
    def _compute_flops(self) -> None:
        """Inclusive forward FLOPs per call of every module, on its captured inputs (once)."""
        self._flops_done = True
        for node in self.nodes.values():
            cap = node.capture
            if cap is not None and node.layer_type != "Compiled":
                with torch.autocast(cap.device_type, dtype=cap.autocast_dtype, enabled=cap.autocast):
                    node.flops_per_call = forward_flops(node.module, *cap.args, **cap.kwargs)
            if self.mode == "allocate":
                node.capture = None  # only replays need the inputs

    def _replay_all(self) -> None:
        assert self._meter is not None and self._timer is not None
        clock = self._timer.clock
        todo = [n for n in self.nodes.values() if n.calls and n.capture is not None]
        groups: dict[Any, list[Node]] = defaultdict(list)
        for node in todo:
            try:
                key = node.capture.signature(node.module)  # type: ignore[union-attr]
            except Exception:
                key = ("unique", node.name)
            groups[key].append(node)
        rank_zero_info(
            f"LayerEnergyProfiler: replaying {len(groups)} distinct module(s) of {len(todo)} "
            f"for about {len(groups) * self.replay_window_s:.0f} s"
        )
        for i, members in enumerate(groups.values(), 1):
            first = members[0]
            shared = f" (and {len(members) - 1} like it)" if len(members) > 1 else ""
            rank_zero_info(
                f"LayerEnergyProfiler: replay {i}/{len(groups)}: {first.name} ({first.module_type}){shared}"
            )
            if first.layer_type == "Compiled":
                result = ReplayResult(None, None, "torch.compile'd modules are not replayed")
            else:
                result = replay(first.module, first.capture, self._meter, clock.sync, self.replay_window_s)  # type: ignore[arg-type]
            for i, node in enumerate(members):
                self.replays[node.name] = (
                    result
                    if i == 0
                    else ReplayResult(
                        result.joules_per_call, result.seconds_per_call, result.note, first.name
                    )
                )
        for node in self.nodes.values():
            if node.name not in self.replays:
                why = "never called in the profiled steps" if not node.calls else "no input was captured"
                self.replays[node.name] = ReplayResult(None, None, why)

    # ------------------------------------------------------------------ results
    def step_figures(self) -> dict[str, Any]:
        """The measured step: ``step_j`` and ``step_s`` (per profiled step, from the reference
        windows), the hooks' own seconds per step, windows measured and how."""
        t = self._timer
        n = max(self.steps, 1)
        return {
            "mode": self.mode,
            "source": self._source or "none",
            "profiled_steps": self.steps,
            "measured_steps": self.measured_steps,
            "step_j": self._step_j_sum / self.measured_steps if self.measured_steps else None,
            "step_s": self._step_s_sum / self.measured_steps if self.measured_steps else None,
            "profiled_step_s": (t.step_s / n) if t else None,
            "hook_overhead_s_per_step": (t.overhead_s / n) if t else None,
            "optimizer_s_per_step": (t.optimizer_s / n) if t else None,
            "reference_windows_j": self.reference_joules,
            "fallback_windows": self.fallback_windows,
            "failed_windows": self.failed_windows,
            "rank": self._rank,
            "world_size": self._world,
        }

    def rows(self) -> list[dict[str, Any]]:
        """One row per module in the model's order, then ``unattributed`` (figures per step).

        ``joules_per_step`` (the module's own work) and ``share`` are ``None`` where there is no
        figure (no window was measured, a replay failed); ``complete`` is then ``False`` and
        ``note`` says why.
        """
        n = max(self.steps, 1)
        fig = self.step_figures()
        step_j, step_s = fig["step_j"], fig["step_s"]
        nodes = self.nodes
        per_sample = n / max(self.samples, 1)
        calls = {k: v.calls / n for k, v in nodes.items()}
        compute_s = {k: (v.self_fwd_s + v.self_bwd_s) / n for k, v in nodes.items()}
        opt_s = attr.optimizer_shares(
            fig["optimizer_s_per_step"] or 0.0, {k: v.trainable for k, v in nodes.items()}
        )
        self_s = {k: compute_s[k] + opt_s[k] for k in nodes}
        avg_w = step_j / step_s if step_j is not None and step_s else None
        methods: dict[str, dict[str, float | None]] = {}
        if step_j is not None:
            methods["allocate"] = dict(attr.allocate_by_time(step_j, step_s, self_s))
        jpc = {k: r.joules_per_call for k, r in self.replays.items()}
        watts: dict[str, float | None] = {}
        negative: set[str] = set()  # replay: modules whose children alone cost more than they did
        if self.replays and step_j is not None:
            for k, node in nodes.items():
                r = self.replays.get(k)
                c = max(node.calls, 1)
                kids = [
                    (m / c, self.replays[ch].joules_per_call, self.replays[ch].seconds_per_call)
                    for ch, m in node.child_calls.items()
                    if ch in self.replays
                ]
                watts[k] = attr.self_power(r.joules_per_call, r.seconds_per_call, kids) if r else None
            methods["power"] = dict(attr.allocate_by_power(step_j, step_s, compute_s, opt_s, watts))
            own = attr.replay_self(
                calls, jpc, {k: {c: m / n for c, m in v.child_calls.items()} for k, v in nodes.items()}
            )
            methods["replay"] = {
                k: None if v is None else max(v, 0.0) + opt_s[k] * avg_w  # type: ignore[operator]
                for k, v in own.items()
            }
            negative = {k for k, v in own.items() if v is not None and v < 0}
        chosen = methods.get(self.mode)
        self_j: dict[str, float | None] = dict(chosen) if chosen is not None else dict.fromkeys(nodes)
        total_j = attr.subtree_totals(self_j, {k: v.children for k, v in nodes.items()})
        total_s = {k: (v.total_fwd_s + v.total_bwd_s) / n for k, v in nodes.items()}
        total_opt = attr.subtree_totals(opt_s, {k: v.children for k, v in nodes.items()})
        flops = {k: v.flops_per_call or 0 for k, v in nodes.items()}
        source = f"{SOURCES[self.mode]}:{self._source or 'none'}"
        window_note = (
            f"{self.failed_windows} profiling window(s) had no figure ({'; '.join(self.problems)})"
            if self.problems
            else ""
        )
        no_figure = "no profiling window was measured: " + ("; ".join(self.problems) or "none ran")
        rows = []
        for k, node in nodes.items():
            j = self_j.get(k)
            rep = self.replays.get(k)
            notes = []
            if step_j is None:
                notes.append(no_figure)
            elif window_note:
                notes.append(window_note)
            if rep is not None and rep.note and (self.mode != "allocate"):
                notes.append(f"replay: {rep.note}")
            if rep is not None and rep.shared_with:
                notes.append(f"replay shared with {rep.shared_with}")
            if self.mode == "replay" and k in negative:
                notes.append("replay: its children alone cost more than it did; own work set to 0")
            if node.layer_type == "Compiled":
                notes.append("torch.compile'd: timed as one unit; the modules inside are not attributable")
            if self.mode == "power" and j is not None and watts.get(k) is None:
                notes.append("power unknown (no replay): the step's average power stands in")
            own_flops = node.calls / n * (flops[k] - sum(
                m / max(node.calls, 1) * flops.get(c, 0) for c, m in node.child_calls.items()
            ))  # fmt: skip
            rows.append(
                {
                    "name": k,
                    "parent": node.parent,
                    "depth": node.depth,
                    "module_type": node.module_type,
                    "layer_type": node.layer_type,
                    "params": node.params,
                    "total_params": sum(p.numel() for p in node.module.parameters()),
                    "calls": calls[k],
                    "self_forward_s": node.self_fwd_s / n,
                    "self_backward_s": node.self_bwd_s / n,
                    "optimizer_s": opt_s[k],
                    "self_s": self_s[k],
                    "total_s": total_s[k] + (total_opt[k] or 0.0),
                    "joules_per_step": j,
                    "total_j": total_j[k],
                    "optimizer_j": None if avg_w is None or j is None else opt_s[k] * avg_w,
                    "share": None,
                    "total_share": None,
                    "joules_per_sample": j * per_sample if j is not None else None,
                    "flops": max(0, round(own_flops)),
                    "total_flops": round(calls[k] * flops[k]),
                    "allocated_j": methods.get("allocate", {}).get(k),
                    "power_j": methods.get("power", {}).get(k),
                    "replayed_j": methods.get("replay", {}).get(k),
                    "replay_j_per_call": rep.joules_per_call if rep else None,
                    "replay_w": watts.get(k),
                    "source": source,
                    "complete": j is not None,
                    "note": "; ".join(notes),
                    "rank": self._rank,
                    "world_size": self._world,
                }
            )
        missing = [r for r in rows if r["joules_per_step"] is None]
        un_j = None if step_j is None or missing else step_j - sum(r["joules_per_step"] for r in rows)
        un_note = (
            no_figure
            if step_j is None
            else f"{len(missing)} module(s) have no figure, so the rest of the step is unknown"
            if missing
            else "; ".join(x for x in (UNATTRIBUTED_NOTE, window_note) if x)
        )
        rows.append(
            {
                **dict.fromkeys(rows[0] if rows else (), None),
                "name": UNATTRIBUTED, "parent": None, "depth": 0, "module_type": "", "layer_type": UNATTRIBUTED,
                "params": 0, "total_params": 0, "calls": 0.0, "self_forward_s": 0.0, "self_backward_s": 0.0,
                "optimizer_s": 0.0, "self_s": max(0.0, (step_s or 0.0) - sum(self_s.values())),
                "total_s": max(0.0, (step_s or 0.0) - sum(self_s.values())),
                "joules_per_step": un_j, "total_j": un_j, "optimizer_j": None,
                "joules_per_sample": un_j * per_sample if un_j is not None else None,
                "flops": 0, "total_flops": 0,
                "source": f"measured-step-minus-modules:{self._source or 'none'}",
                "complete": un_j is not None, "note": un_note, "rank": self._rank, "world_size": self._world,
            }
        )  # fmt: skip
        for r in rows:
            j, t = r["joules_per_step"], r["total_j"]
            r["share"] = j / step_j if j is not None and step_j else None
            r["total_share"] = t / step_j if t is not None and step_j else None
        return rows

    def type_table(self, as_frame: bool = False) -> Any:
        """Per layer type: own joules per step, share, parameters, FLOPs, modules (``None`` where a
        member has no figure); a list of dicts, or with ``as_frame=True`` a pandas DataFrame."""
        table = self._type_rows()
        if as_frame:
            import pandas as pd

            return pd.DataFrame(table)
        return table

    def _type_rows(self) -> list[dict[str, Any]]:
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
        rows = self.rows()
        types = self.type_table()
        publish(
            trainer,
            {
                f"layer_energy/{t['layer_type']}_j": t["joules_per_step"]
                for t in types
                if t["joules_per_step"] is not None
            },
        )
        if not self._writer_rank or self.output_dir is None:
            return
        run_id = next((c.run_id for c in trainer.callbacks if isinstance(c, EnergyMonitor)), self._run_id)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # Each file names its run: several trainings may share one folder (their records in
        # energy.jsonl stay apart by run_id; the CSVs hold the latest run's table).
        try:
            outputs.write_csv(self.output_dir / "layers.csv", [{"run_id": run_id, **r} for r in rows])
            outputs.write_csv(self.output_dir / "layer_types.csv", [{"run_id": run_id, **t} for t in types])
            outputs.write_json(
                self.output_dir / "layer_profile.json",
                {"run_id": run_id, **self.step_figures(), "notes": self.structure_notes + self.problems},
            )
            self.written = ["layers.csv", "layer_types.csv", "layer_profile.json"]
        except OSError as err:  # a full disk loses the tables, never the training
            rank_zero_warn(f"LayerEnergyProfiler: cannot write the layer tables to {self.output_dir} ({err})")
            return
        if not final:
            return
        if self.plot:
            try:
                title = f"{self.mode}: {rows[0]['source']} ({self.steps} profiled steps)"
                outputs.plot(self.output_dir / "layer_energy.png", title, types, rows, self.top_layers)
                self.written.append("layer_energy.png")
            except OSError as err:
                rank_zero_warn(f"LayerEnergyProfiler: cannot save layer_energy.png ({err})")
        outputs.write_records(self.output_dir, run_id, self.mode, self.steps, rows, types)


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_size(batch[0])
    if isinstance(batch, dict) and batch:
        return _batch_size(next(iter(batch.values())))
    return 1
