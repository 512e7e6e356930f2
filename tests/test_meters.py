"""Meters: the real reading code driven by a fake powercap tree and a patched NVML."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import set_uj
from helpers.fake_nvml import FakeNvml

from lightning_green.carbon import CarbonModel
from lightning_green.energy import (
    EstimateMeter,
    MeterUnavailableError,
    NvmlMeter,
    RaplMeter,
    make_meter,
)
from lightning_green.energy.reading import DomainEnergy, Reading, merge_parallel, merge_readings


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        x += 1


def test_estimate_is_cpu_time_times_watts_and_labelled():
    meter = EstimateMeter(watts_per_core=10.0, include_children=False)
    meter.start()
    t0 = time.process_time()
    _burn(0.2)
    cpu = time.process_time() - t0
    r = meter.stop()
    (d,) = r.domains
    assert d.source == "estimated:cpu-time" and d.domain == "cpu"
    assert d.joules == pytest.approx(10.0 * cpu, rel=0.05)
    assert r.assumptions["cpu_watts_per_core"] == 10.0
    assert "excludes idle power" in r.assumptions["cpu_covers"]
    assert r.complete


@pytest.mark.parametrize("bad", [0, -1.0, "12"])
def test_estimate_rejects_bad_watts(bad):
    with pytest.raises(ValueError, match="watts_per_core"):
        EstimateMeter(watts_per_core=bad)


def test_rapl_reads_packages_and_dram_and_skips_subzones(rapl_tree: Path):
    meter = RaplMeter(rapl_tree, poll_interval_s=None)
    assert {(c.domain, c.device) for c in meter.channels} == {("cpu", "0"), ("cpu", "1"), ("dram", "0")}
    meter.start()
    set_uj(rapl_tree, "intel-rapl:1", 2_100)  # +2000 uJ
    set_uj(rapl_tree, "intel-rapl:0:1", 3_010)  # dram +3000 uJ
    set_uj(rapl_tree, "intel-rapl:0:0", 999_999)  # core sub-zone: inside the package, ignored
    r = meter.stop()
    by = {d.key: d.joules for d in r.domains}
    assert by == pytest.approx({"cpu:0": 0.0, "cpu:1": 0.002, "dram:0": 0.003})
    assert all(d.source == "measured:rapl" for d in r.domains)


def test_rapl_handles_wraparound(rapl_tree: Path):
    meter = RaplMeter(rapl_tree, poll_interval_s=None)  # max_energy_range_uj = 1_000_000
    meter.start()
    set_uj(rapl_tree, "intel-rapl:0", 950_000)  # +50_000
    meter.read_counters()  # a poll between the two edges
    set_uj(rapl_tree, "intel-rapl:0", 20_000)  # wrapped: +1_000_000 - 950_000 + 20_000 = +70_000
    r = meter.stop()
    assert {d.key: d.joules for d in r.domains}["cpu:0"] == pytest.approx(0.12)


def test_rapl_poller_catches_wraps_between_windows(rapl_tree: Path):
    meter = RaplMeter(rapl_tree, poll_interval_s=3600)  # the thread exists; we make its polls happen
    try:
        meter.start()
        set_uj(rapl_tree, "intel-rapl:0", 999_000)  # +99_000
        meter._poll()  # what the poller does every poll_interval_s
        set_uj(rapl_tree, "intel-rapl:0", 1_000)  # wraps: +2_000
        r = meter.stop()
    finally:
        meter.close()
    assert {d.key: d.joules for d in r.domains}["cpu:0"] == pytest.approx(0.101)


def test_polling_thread_calls_its_function_until_stopped():
    import threading

    from lightning_green.energy.base import PollingThread

    calls = threading.Semaphore(0)
    poller = PollingThread(calls.release, 0.001, "test-poll")
    try:
        assert calls.acquire(timeout=10) and calls.acquire(timeout=10)  # polled, and again
    finally:
        poller.stop()


def test_rapl_unreadable_counter_raises_or_marks_incomplete(rapl_tree: Path, monkeypatch):
    import lightning_green.energy.rapl as rapl

    real = rapl._read_int

    def deny(path: Path) -> int:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    with monkeypatch.context() as m:
        m.setattr(rapl, "_read_int", deny)
        with pytest.raises(MeterUnavailableError, match="permission denied"):
            RaplMeter(rapl_tree, poll_interval_s=None)

    meter = RaplMeter(rapl_tree, poll_interval_s=None)
    meter.start()
    monkeypatch.setattr(rapl, "_read_int", deny)  # permission lost mid-run
    r = meter.stop()
    assert not r.complete
    assert all(d.joules is None and not d.complete for d in r.domains)  # never a silent zero


def test_rapl_missing_tree_is_unavailable(tmp_path: Path):
    with pytest.raises(MeterUnavailableError, match="no powercap tree"):
        RaplMeter(tmp_path / "nope")


def test_nvml_counter(monkeypatch):
    fake = FakeNvml(monkeypatch)
    meter = NvmlMeter([1], sync=False, sync_reads=True)
    meter.start()
    fake.mj[1] += 2_500.0
    fake.mj[0] += 99_999.0  # not ours
    r = meter.stop()
    assert [(d.key, d.joules, d.source) for d in r.domains] == [("gpu:1", 2.5, "measured:nvml")]


def test_nvml_maps_cuda_visible_devices(monkeypatch):
    fake = FakeNvml(monkeypatch, gpus=4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,2")
    meter = NvmlMeter([0], sync=False, sync_reads=True)  # logical 0 is physical 3
    meter.start()
    fake.mj[3] += 1_000.0
    assert meter.stop().joules == pytest.approx(1.0)


def test_nvml_failure_mid_run_marks_incomplete(monkeypatch):
    fake = FakeNvml(monkeypatch, gpus=1)
    for sync_reads in (True, False):
        fake.fail = False
        meter = NvmlMeter([0], sync=False, sync_reads=sync_reads, sample_interval_s=0.01)
        meter.start()
        fake.fail = True
        time.sleep(0.05)  # the background reads fail too
        r = meter.stop()
        meter.close()
        assert not r.complete and r.domains[0].joules is None


def test_nvml_power_sampling_without_counter(monkeypatch):
    fake = FakeNvml(monkeypatch, gpus=1, counter=False)
    now = {"t": 0.0}
    meter = NvmlMeter([0], sync=False, sample_interval_s=3600, clock=lambda: now["t"])
    try:
        meter.start()
        now["t"] = 1.0
        meter._sample_power()  # a power sample, as the thread takes every sample_interval_s
        fake.watts[0] = 300.0
        now["t"] = 2.0
        r = meter.stop()
    finally:
        meter.close()
    (d,) = r.domains
    assert d.source == "measured:nvml-power"
    assert d.joules == pytest.approx(
        100.0 + (100.0 + 300.0) / 2
    )  # trapezoids: 100 W for 1 s, then 100 -> 300 W


def test_auto_falls_back_to_estimate_and_says_why(tmp_path: Path):
    meter = make_meter("auto", gpu_indices=[], rapl_root=tmp_path / "none")
    assert [c.source for c in meter.channels] == ["estimated:cpu-time"]
    assert "no RAPL counter" in meter.describe()


def test_auto_prefers_rapl(rapl_tree: Path):
    meter = make_meter("auto", gpu_indices=[], rapl_root=rapl_tree)
    assert {c.source for c in meter.channels} == {"measured:rapl"}
    meter.close()


def test_auto_reads_the_gpu_through_nvml_off_the_training_thread(monkeypatch, tmp_path: Path):
    FakeNvml(monkeypatch, gpus=1)
    meter = make_meter("auto", gpu_indices=[0], rapl_root=tmp_path / "none")
    try:
        assert [c.source for c in meter.channels] == ["measured:nvml", "estimated:cpu-time"]
        assert meter.meters[0].edge_reads == "sampled"
        assert "interpolated between background counter samples" in meter.assumptions["nvml_edges"]
    finally:
        meter.close()
    direct = make_meter("auto", gpu_indices=[0], rapl_root=tmp_path / "none", sync_reads=True)
    assert direct.meters[0].edge_reads == "direct"
    direct.close()


def test_rank_other_than_local_zero_skips_node_counters(rapl_tree: Path):
    meter = make_meter("auto", gpu_indices=[], measure_node=False, rapl_root=rapl_tree)
    assert meter.channels == ()
    assert "local rank 0" in meter.describe()


def test_explicit_backend_that_cannot_work_raises(tmp_path: Path):
    with pytest.raises(MeterUnavailableError):
        make_meter("rapl", rapl_root=tmp_path / "none")
    with pytest.raises(ValueError, match="backend must be one of auto, zeus, nvml, rapl, estimate"):
        make_meter("watts")


def test_zeus_backend_without_hardware_is_unavailable_not_silent(tmp_path: Path):
    # No GPU and no readable RAPL here: Zeus must refuse, not report zeros.
    with pytest.raises(MeterUnavailableError):
        make_meter("zeus", gpu_indices=[])


def test_carbon_conversion_and_validation():
    c = CarbonModel(400.0, pue=1.5)
    assert c.kwh(3.6e6) == 1.0
    assert c.co2e_g(3.6e6) == pytest.approx(600.0)
    with pytest.raises(ValueError, match="carbon_intensity must be"):
        CarbonModel(-1.0)
    with pytest.raises(ValueError, match="pue"):
        CarbonModel(400.0, 0.9)


def test_merging_segments_and_ranks():
    a = Reading(0.0, 1.0, 1.0, (DomainEnergy("cpu", "0", 2.0, "measured:rapl"),))
    b = Reading(
        2.0,
        3.0,
        1.0,
        (
            DomainEnergy("cpu", "0", 3.0, "measured:rapl"),
            DomainEnergy("gpu", "0", None, "measured:nvml", False),
        ),
    )
    seg = merge_readings([a, b])
    assert seg.seconds == 2.0 and seg.joules == 5.0 and not seg.complete
    par = merge_parallel([a, a])
    assert par.seconds == 1.0 and par.joules == 4.0


def test_measure_outside_lightning_keeps_the_energy_of_a_block_that_raised(rapl_tree: Path):
    import lightning_green

    with pytest.raises(ZeroDivisionError), lightning_green.measure(backend="estimate") as m:
        _burn(0.05)
        1 / 0  # noqa: B018
    assert m.reading is not None and m.reading.joules > 0  # the energy was spent: it is kept
    assert m.reading.sources == {"cpu": "estimated:cpu-time"}

    @lightning_green.measure(backend="rapl", rapl_root=rapl_tree, attribution="device")
    def step() -> int:
        return 7

    assert step() == 7 and step.last_reading.sources == {"cpu": "measured:rapl", "dram": "measured:rapl"}
