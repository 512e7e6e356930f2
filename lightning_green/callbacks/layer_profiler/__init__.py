"""Per-module and per-layer-type energy of training steps (LayerEnergyProfiler).

- ``callback``: the Lightning hooks; they decide when to profile and publish.
- ``windows``: which steps are profiled, the meter's windows around them, the measured step.
- ``tree`` and ``timing``: the module tree; hooks that time every call (total and self seconds),
  recomputed forwards and FLOPs inside the real step.
- ``clocks``: the clock that matches what the meter measures, and the machine's load.
- ``replay``: captures each module's call context and replays it under that context.
- ``attribution``: the maths from measured step energy, times and replays to joules per module
  (the three modes as small strategies).
- ``rows``: the tables, as pure functions of the timed tree and the measured step.
- ``outputs``: files, records and the chart.
- ``kinds``: which kind of layer a module is.
- ``validation``: per-module figures against an ablation.
"""

from lightning_green.callbacks.layer_profiler.callback import MODES, LayerEnergyProfiler
from lightning_green.callbacks.layer_profiler.kinds import LAYER_TYPES, layer_type
from lightning_green.callbacks.layer_profiler.outputs import UNATTRIBUTED

__all__ = ["LAYER_TYPES", "MODES", "UNATTRIBUTED", "LayerEnergyProfiler", "layer_type"]
