"""Static and dynamic energy: an idle baseline per device, and the energy above it."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pynvml
import pytest
from lightning import Trainer
from lightning.pytorch.callbacks import Callback
from test_meters import FakeNvml

from lightning_green import EnergyMonitor
from lightning_green.data import DigitsDataModule
from lightning_green.energy import NvmlMeter
from lightning_green.energy.baseline import IdleBaseline, apply_baseline, given_baseline, measure_idle
from lightning_green.energy.reading import DomainEnergy, Reading
from lightning_green.models import LitClassifier, SimpleCNN
from lightning_green.records import read_summary, read_windows

IDLE_W, LOAD_W = 80.0, 200.0


class StepClock:
    """A monotonic clock that moves only when the meter stamps a window edge (by ``dt``), so the
    fake counter's energy and the window's seconds agree exactly, however busy the machine is."""

    def __init__(self, dt: float = 0.01) -> None:
        self.now, self.dt = 1000.0, dt

    def __call__(self) -> float:
        t = self.now
        self.now += self.dt
        return t


class WallClock:
    """The real monotonic clock, in :class:`StepClock`'s shape (for tests of real sampling delays)."""

    @property
    def now(self) -> float:
        return time.monotonic()

    def __call__(self) -> float:
        return time.monotonic()


class PoweredNvml(FakeNvml):
    """A fake GPU whose energy counter integrates a power we set (idle, or under load) over the
    meter's clock: a window edge is stamped, then the counter is read ``dt`` later on that clock."""

    def __init__(self, monkeypatch, clock: StepClock | WallClock | None = None) -> None:
        super().__init__(monkeypatch, gpus=1)
        self.clock = clock or StepClock()
        self.power, self.t, self.util = IDLE_W, self.clock.now, 0
        self.mj[0] = 0.0
        monkeypatch.setattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption", self._energy_now)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetUtilizationRates", lambda h: SimpleNamespace(gpu=self.util))

    def _energy_now(self, handle=None) -> float:
        now = self.clock.now
        self.mj[0] += self.power * (now - self.t) * 1000.0
        self.t = now
        return self.mj[0]

    def meter(self) -> NvmlMeter:
        meter = NvmlMeter([0], sync=False, sync_reads=True)
        meter.clock = self.clock
        return meter

    def set_power(self, watts: float) -> None:
        self._energy_now()
        self.power = watts


class Load(Callback):
    """Puts the fake GPU under load once the monitor's set-up (and its baseline) is done."""

    def __init__(self, gpu: PoweredNvml) -> None:
        self.gpu = gpu

    def setup(self, trainer, pl_module, stage):
        self.gpu.set_power(LOAD_W)


def _fit(tmp_path: Path, monitor: EnergyMonitor, gpu: PoweredNvml) -> Trainer:
    trainer = Trainer(
        max_epochs=2, callbacks=[monitor, Load(gpu)], logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(LitClassifier(SimpleCNN(conv_layers=1)), datamodule=DigitsDataModule())
    return trainer


def test_measured_baseline_dynamic_energy_and_logged_keys_are_exact(tmp_path: Path, monkeypatch):
    gpu = PoweredNvml(monkeypatch)
    monitor = EnergyMonitor(output_dir=tmp_path, meter=gpu.meter(), baseline_s=0.2)
    trainer = _fit(tmp_path, monitor, gpu)
    summary = read_summary(tmp_path)
    base = summary["idle_baseline"]
    assert base["watts"]["gpu:0"] == pytest.approx(IDLE_W, rel=1e-9)
    assert base["how"].startswith("measured") and base["busy"] == []
    # The counter and the window's seconds run on one clock: exact, on a busy machine too.
    for w in read_windows(tmp_path):
        assert w.energy_j == pytest.approx(LOAD_W * w.seconds, rel=1e-9)
        assert w.dynamic_j == pytest.approx((LOAD_W - IDLE_W) * w.seconds, rel=1e-9)
        assert w.domains[0]["dynamic_joules"] == pytest.approx(w.dynamic_j)
    m = trainer.callback_metrics
    assert float(m["energy/train_epoch_dynamic_j"]) == pytest.approx(
        (LOAD_W - IDLE_W) * float(m["time/train_epoch_s"]), rel=1e-6
    )
    assert float(m["energy/total_dynamic_j"]) == pytest.approx(summary["total_dynamic_j"], rel=1e-6)
    assert summary["total_dynamic_j"] == pytest.approx(sum(w.dynamic_j for w in read_windows(tmp_path)))
    assert summary["total_dynamic_j"] < summary["total_j"]


def test_a_busy_device_during_the_baseline_is_warned_about(tmp_path: Path, monkeypatch):
    gpu = PoweredNvml(monkeypatch)
    gpu.util = 57
    with pytest.warns(UserWarning, match="may not have been idle.*57% utilised"):
        _fit(tmp_path, EnergyMonitor(output_dir=tmp_path, meter=gpu.meter(), baseline_s=0.1), gpu)
    assert "57%" in read_summary(tmp_path)["idle_baseline"]["busy"][0]


def test_idle_watts_given_by_the_user_are_used_as_is(tmp_path: Path, monkeypatch):
    gpu = PoweredNvml(monkeypatch)
    monitor = EnergyMonitor(output_dir=tmp_path, meter=gpu.meter(), idle_w={"gpu:0": 50.0})
    t0 = time.monotonic()
    monitor.setup(SimpleNamespace(**_trainer_stub()), None, "validate")  # no idle window is run
    assert time.monotonic() - t0 < 1.5  # an idle window would wait baseline_s (2 s), whatever the load
    monitor.teardown(SimpleNamespace(**_trainer_stub()), None, "validate")
    _fit(tmp_path, monitor, gpu)
    assert read_summary(tmp_path)["idle_baseline"] == {
        "watts": {"gpu:0": 50.0}, "how": "given by the user", "seconds": 0.0, "busy": [], "background": []
    }  # fmt: skip
    for w in read_windows(tmp_path):
        assert w.dynamic_j == pytest.approx(w.energy_j - 50.0 * w.seconds, rel=1e-6)


def _trainer_stub() -> dict:
    import torch

    return {
        "world_size": 1, "local_rank": 0, "is_global_zero": True, "loggers": [],
        "strategy": SimpleNamespace(root_device=torch.device("cpu")),
    }  # fmt: skip


def test_baseline_off_changes_nothing(tmp_path: Path, monkeypatch):
    gpu = PoweredNvml(monkeypatch)
    trainer = _fit(tmp_path, EnergyMonitor(output_dir=tmp_path, meter=gpu.meter(), baseline_s=0), gpu)
    summary = read_summary(tmp_path)
    assert summary["idle_baseline"] is None and summary["total_dynamic_j"] is None
    assert all(w.dynamic_j is None for w in read_windows(tmp_path))
    assert not any("dynamic" in k for k in trainer.callback_metrics)


def test_the_cpu_time_estimate_is_dynamic_already(tmp_path: Path):
    monitor = EnergyMonitor(
        output_dir=tmp_path, rapl_root=tmp_path / "no-rapl"
    )  # the estimate: no idle window
    trainer = Trainer(max_epochs=1, callbacks=[monitor], logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, accelerator="cpu")  # fmt: skip
    t0 = time.monotonic()
    trainer.fit(LitClassifier(SimpleCNN(conv_layers=1)), datamodule=DigitsDataModule())
    assert time.monotonic() - t0 < 30
    summary = read_summary(tmp_path)
    assert summary["idle_baseline"]["how"].startswith("none needed")
    for w in read_windows(tmp_path):
        assert w.dynamic_j == pytest.approx(w.energy_j)  # nothing subtracted
    assert summary["total_dynamic_j"] == pytest.approx(summary["total_j"])


def test_apply_baseline_by_hand():
    r = Reading(0.0, 10.0, 10.0, (
        DomainEnergy("gpu", "0", 1500.0, "measured:nvml"),
        DomainEnergy("cpu", "0", 400.0, "measured:rapl"),
        DomainEnergy("cpu", "process", 30.0, "estimated:cpu-time"),
        DomainEnergy("dram", "0", None, "measured:rapl", complete=False),
    ))  # fmt: skip
    out = apply_baseline(r, IdleBaseline({"gpu:0": 80.0, "cpu:0": 50.0}, "given"))
    dyn = {d.key: d.dynamic_joules for d in out.domains}
    assert dyn == {
        "gpu:0": 700.0,
        "cpu:0": 0.0,
        "cpu:process": 30.0,
        "dram:0": None,
    }  # idle > drawn: 0, not < 0
    assert out.dynamic_joules == pytest.approx(730.0)
    assert apply_baseline(r, IdleBaseline({"gpu:0": 80.0}, "given")).dynamic_joules is None  # cpu:0 unknown
    with pytest.raises(ValueError, match="idle_w"):
        given_baseline({"gpu:0": float("nan")})
    with pytest.raises(ValueError, match="idle_w keys"):
        given_baseline({"gpu0": 1.0})


def test_a_settled_window_does_not_count_the_wait_for_the_next_sample(monkeypatch):
    # Background samples every 0.3 s; the 0.1 s idle window settles on the first sample after
    # its end (interpolated there). Its seconds are the window's, not the window plus that wait,
    # which would put the idle power up to 3/4 low.
    PoweredNvml(monkeypatch, WallClock())
    meter = NvmlMeter([0], sync=False, sample_interval_s=0.3)
    try:
        base = measure_idle(meter, 0.1)
    finally:
        meter.close()
    assert base.seconds == pytest.approx(0.1, abs=0.03)
    assert base.watts["gpu:0"] == pytest.approx(IDLE_W, rel=0.02)
