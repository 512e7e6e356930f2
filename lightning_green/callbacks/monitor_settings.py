"""EnergyMonitor's arguments, checked when the monitor is made, and what they build at set-up: the
meter and the idle baseline.

No Lightning here: the callback passes what it reads off the Trainer (its GPUs, its rank) and the
functions that warn and inform on rank zero, so a wrong argument fails at construction, before any
Trainer exists, and the set-up can be exercised without one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lightning_green._checks import check_bool, check_int, check_number
from lightning_green.carbon import CarbonModel, IntensityProvider
from lightning_green.carbon.co2e import DEFAULT_CARBON_INTENSITY
from lightning_green.energy import Meter, make_meter
from lightning_green.energy.attribution import check_attribution
from lightning_green.energy.baseline import IdleBaseline, given_baseline, measure_idle
from lightning_green.energy.select import check_backend


@dataclass(frozen=True)
class MonitorSettings:
    """EnergyMonitor's arguments once checked (each is described there); built by :meth:`check`."""

    backend: str
    attribution: str
    carbon: CarbonModel
    watts_per_core: float
    rapl_root: str | os.PathLike[str]
    sync_reads: bool
    #: The user's own meter (the monitor reads it and never closes it), else ``None``.
    meter: Meter | None
    baseline_s: float
    #: The idle baseline the user gave (``idle_w``), else ``None`` (measured at set-up).
    idle_baseline: IdleBaseline | None
    output_dir: Path | None
    log: bool
    forecast_warmup_steps: int
    forecast_every_n_steps: int | None

    @classmethod
    def check(
        cls,
        *,
        backend: str,
        output_dir: str | os.PathLike[str] | None,
        carbon_intensity: float | str | IntensityProvider,
        pue: float,
        watts_per_core: float,
        rapl_root: str | os.PathLike[str],
        log: bool,
        sync_reads: bool,
        forecast_warmup_steps: int,
        forecast_every_n_steps: int | None,
        meter: Meter | None,
        baseline_s: float,
        idle_w: dict[str, float] | None,
        carbon_live: str | None,
        carbon_live_url: str | None,
        attribution: str,
        carbon_intensity_g_per_kwh: float | None = None,
        deprecated: Callable[[str], None],
    ) -> MonitorSettings:
        """Check every argument (see :class:`~lightning_green.EnergyMonitor`); ``deprecated`` is
        told when an old name is used.

        Raises:
            ValueError: Naming the first argument that is wrong and what it must be.
        """
        check_backend(backend)
        attribution = check_attribution(attribution)
        baseline_s = check_number("baseline_s", baseline_s, minimum=0.0, unit="seconds")
        idle_baseline = given_baseline(idle_w) if idle_w is not None else None
        if meter is not None and not isinstance(meter, Meter):
            raise ValueError(f"meter must be a lightning_green.energy.Meter or None; got {meter!r}")
        sync_reads = check_bool("sync_reads", sync_reads)
        forecast_warmup_steps = check_int("forecast_warmup_steps", forecast_warmup_steps, 0)
        if forecast_every_n_steps is not None:
            forecast_every_n_steps = check_int("forecast_every_n_steps", forecast_every_n_steps, 1)
        log = check_bool("log", log)
        watts_per_core = check_number("watts_per_core", watts_per_core, above=0.0, unit="watts")
        if carbon_intensity_g_per_kwh is not None:
            if carbon_intensity != DEFAULT_CARBON_INTENSITY:
                raise ValueError("give carbon_intensity or its old name carbon_intensity_g_per_kwh, not both")
            deprecated("EnergyMonitor(carbon_intensity_g_per_kwh=) is now carbon_intensity=")
            carbon_intensity = carbon_intensity_g_per_kwh
        return cls(
            backend=backend,
            attribution=attribution,
            carbon=CarbonModel(carbon_intensity, pue, live=carbon_live, live_url=carbon_live_url),
            watts_per_core=watts_per_core,
            rapl_root=rapl_root,
            sync_reads=sync_reads,
            meter=meter,
            baseline_s=baseline_s,
            idle_baseline=idle_baseline,
            output_dir=Path(output_dir) if output_dir is not None else None,
            log=log,
            forecast_warmup_steps=forecast_warmup_steps,
            forecast_every_n_steps=forecast_every_n_steps,
        )

    def make_meter(self, gpu_indices: list[int], measure_node: bool, world_size: int) -> Meter:
        """The user's meter, else one built from :attr:`backend` for this process's devices.

        Args:
            gpu_indices: The CUDA indices of this rank's GPUs (empty off the GPU).
            measure_node: Whether this process reads the node-wide counters (CPU packages, DRAM):
                one process per node does, so nothing is counted twice.
            world_size: The processes of the run; under DDP the other ranks may be rank zero's
                children, so each rank counts only itself.

        Raises:
            lightning_green.energy.MeterUnavailableError: If an explicitly named backend cannot
                work on this machine.
        """
        if self.meter is not None:
            return self.meter
        return make_meter(
            self.backend,
            gpu_indices=gpu_indices,
            measure_node=measure_node,
            watts_per_core=self.watts_per_core,
            rapl_root=self.rapl_root,
            include_children=world_size == 1,
            sync_reads=self.sync_reads,
            attribution=self.attribution,
        )


def measure_baseline(
    meter: Meter, seconds: float, warn: Callable[[str], None], info: Callable[[str], None]
) -> IdleBaseline:
    """Idle power per device, measured for ``seconds`` before anything of the run's is on it.

    Nothing is measured where only estimates are read (an estimate counts the process's own CPU
    time, dynamic already). A failed measurement is warned about and gives a baseline with no
    figure: dynamic energy is then unknown, and training goes on.
    """
    if not any(c.source.startswith("measured") for c in meter.channels):
        return IdleBaseline({}, "none needed: an estimate counts only the process's own CPU time")
    try:
        baseline = measure_idle(meter, seconds)
    except Exception as err:
        meter.discard_window("idle_baseline")
        warn(f"lightning-green: the idle baseline could not be measured ({err!r}); no dynamic energy")
        return IdleBaseline({}, f"failed: {err!r}")
    if baseline.busy:
        warn(
            "lightning-green: the devices may not have been idle while the idle baseline was measured ("
            + "; ".join(baseline.busy)
            + "), so dynamic energy may be understated; pass idle_w={...} or measure on an idle machine."
        )
    info(
        "lightning-green EnergyMonitor: idle baseline "
        + (", ".join(f"{k} {w:.1f} W" for k, w in baseline.watts.items()) or "none")
        + f" ({baseline.how})"
    )
    return baseline
