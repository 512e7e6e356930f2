"""Per-module and per-layer-type energy of training steps (LayerEnergyProfiler).

- ``timing``: hooks on the whole module tree; total and self seconds of every call.
- ``replay``: captures each module's call context and replays it under that context.
- ``attribution``: the maths from measured step energy, times and replays to joules per module.
- ``outputs``: tables, records and the chart.
- ``kinds``: which kind of layer a module is.
"""

from lightning_green.callbacks.layer_profiler.callback import MODES, LayerEnergyProfiler
from lightning_green.callbacks.layer_profiler.kinds import LAYER_TYPES, layer_type
from lightning_green.callbacks.layer_profiler.outputs import UNATTRIBUTED

__all__ = ["LAYER_TYPES", "MODES", "UNATTRIBUTED", "LayerEnergyProfiler", "layer_type"]
