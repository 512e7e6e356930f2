"""Measuring outside Lightning: a context manager and a decorator over the same meters.

A plain PyTorch loop, an inference script or a data-preparation step gets the same labelled
:class:`~lightning_green.energy.Reading` as :class:`~lightning_green.EnergyMonitor`'s windows:
joules per domain and device, each with its source (``measured:nvml``, ``measured:rapl``,
``estimated:cpu-time``) and, on a shared node, the job's share beside the device's figure.

Example::

    >>> import lightning_green
    >>> with lightning_green.measure(backend="estimate") as m:
    ...     _ = sum(i * i for i in range(10**6))
    >>> m.reading.joules > 0 and m.reading.sources == {"cpu": "estimated:cpu-time"}
    True
    >>> @lightning_green.measure(backend="estimate")
    ... def work(n):
    ...     return sum(range(n))
    >>> work(10**5), work.last_reading.complete
    (4999950000, True)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from lightning_green.energy.base import Meter
from lightning_green.energy.estimate import DEFAULT_WATTS_PER_CORE
from lightning_green.energy.rapl import DEFAULT_ROOT
from lightning_green.energy.reading import Reading
from lightning_green.energy.select import make_meter

F = TypeVar("F", bound=Callable[..., Any])


class measure:
    """Measure the energy of a block (``with measure() as m``) or of each call of a function
    (``@measure()``).

    Args:
        backend: ``"auto"`` (the best this machine has), ``"nvml"``, ``"rapl"``, ``"estimate"``,
            ``"zeus"``; see :func:`~lightning_green.energy.make_meter`.
        attribution: ``"auto"``, ``"job"`` or ``"device"``: how a shared counter is charged (see
            :mod:`lightning_green.energy.attribution`).
        meter: A meter of your own to read instead (it is not closed).
        gpu_indices: CUDA devices to measure (``None``: every visible one).
        watts_per_core: For the CPU-time estimate.
        rapl_root: The powercap tree to read.

    Attributes:
        reading: The :class:`~lightning_green.energy.Reading` of the block, once it has ended (also
            when it ended by an exception: the energy was spent).
    """

    def __init__(
        self,
        backend: str = "auto",
        attribution: str = "auto",
        meter: Meter | None = None,
        gpu_indices: list[int] | None = None,
        watts_per_core: float = DEFAULT_WATTS_PER_CORE,
        rapl_root: str | os.PathLike[str] = DEFAULT_ROOT,
    ) -> None:
        self._kwargs = {
            "backend": backend,
            "attribution": attribution,
            "gpu_indices": gpu_indices,
            "watts_per_core": watts_per_core,
            "rapl_root": rapl_root,
        }
        self._user_meter = meter
        self._meter: Meter | None = None
        self.reading: Reading | None = None

    def __enter__(self) -> measure:
        self._meter = self._user_meter or make_meter(**self._kwargs)
        self.reading = None
        self._meter.start()
        return self

    def __exit__(
        self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        meter, self._meter = self._meter, None
        assert meter is not None
        try:
            self.reading = meter.end_window("__default__", settle=True)
        finally:
            if meter is not self._user_meter:
                meter.close()

    def __call__(self, fn: F) -> F:
        """Decorate ``fn``: each call is measured; the last reading is ``fn.last_reading``."""

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            block = measure(meter=self._user_meter, **self._kwargs)
            try:
                with block:
                    return fn(*args, **kwargs)
            finally:
                wrapper.last_reading = block.reading  # type: ignore[attr-defined]

        wrapper.last_reading = None  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]
