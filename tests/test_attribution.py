"""Shared counters split among the jobs that used them: the maths, and real trainings on one
emulated CPU package whose counter follows this machine's real CPU use."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import make_rapl_tree

from lightning_green.energy import make_meter
from lightning_green.energy.attribution import (
    MIN_RESOLVED_BUSY_S,
    Attribution,
    CpuTimeShare,
    Split,
    check_attribution,
    job_cpu_clock,
    node_busy_seconds,
)
from lightning_green.energy.baseline import IdleBaseline, apply_baseline, measure_idle
from lightning_green.energy.reading import DomainEnergy, Reading, merge_readings
from lightning_green.records import WindowRecord, read_summary, read_windows
from lightning_green.testing import EmulatedRapl


class Clocks:
    """The job's and the node's busy CPU seconds and the wall clock, set by the test."""

    def __init__(self) -> None:
        self.job, self.node, self.wall = 0.0, 0.0, 0.0

    def split(self) -> CpuTimeShare:
        return CpuTimeShare(lambda: self.job, lambda: self.node, job="test job", wall=lambda: self.wall)

    def advance(self, job: float, node: float, wall: float) -> None:
        self.job, self.node, self.wall = self.job + job, self.node + node, self.wall + wall


def test_cpu_time_share_is_the_jobs_cpu_over_the_nodes_busy_cpu():
    c = Clocks()
    split = c.split()
    before = split.snapshot()
    c.job, c.node = 3.0, 4.0  # another process used 1 s of CPU meanwhile
    share = split.share(before, split.snapshot())
    assert share.value == pytest.approx(0.75) and share.method == "attributed:cpu-time-share"
    # /proc/stat ticks and process time may disagree by a tick: never above the whole device
    c.job, c.node = 5.2, 6.0
    assert split.share((3.0, 4.0), split.snapshot()).value == 1.0


def test_a_window_too_short_for_proc_stat_takes_the_share_of_the_latest_span_long_enough():
    c = Clocks()
    split = c.split()
    c.job, c.node = 1.0, 4.0  # waiting for the other job's set-up: a low share since the start
    before = split.snapshot()
    c.job, c.node = 1.0 + MIN_RESOLVED_BUSY_S / 4, 4.0 + MIN_RESOLVED_BUSY_S / 2
    share = split.share(before, split.snapshot())
    assert share.method == "attributed:cpu-time-share(run)"  # nothing resolved yet: since the start
    assert share.value == pytest.approx(c.job / c.node)
    before = split.snapshot()
    c.job, c.node = c.job + 0.9, c.node + 1.0  # a resolved window: 90% of the busy time is ours
    assert split.share(before, split.snapshot()).value == pytest.approx(0.9)
    before = split.snapshot()
    c.job, c.node = c.job + 0.01, c.node + 0.05
    share = split.share(before, split.snapshot())
    # over the latest span long enough that ends with this window: from the first window's end
    assert (share.value, share.method) == (pytest.approx(0.91 / 1.05), "attributed:cpu-time-share(recent)")
    # epochs too short, one after another, while the other job stops: each takes the share of the
    # latest 0.2 busy seconds, which follows the change (the first resolved window's 0.9 does not)
    for _ in range(20):
        before = split.snapshot()
        c.job, c.node = c.job + 0.05, c.node + 0.05  # alone now: all of the busy time is ours
        share = split.share(before, split.snapshot())
    assert (share.value, share.method) == (pytest.approx(1.0), "attributed:cpu-time-share(recent)")


def test_the_nodes_background_from_the_idle_baseline_is_not_shared_by_the_jobs():
    """A quiet node's daemons keep 0.05 cores busy: their power is in the idle watts already, so a
    lone job is charged the whole package, and two jobs split it in two (not in 2.1 parts)."""
    lone, c = Clocks(), Clocks()
    for clocks in (lone, c):
        clocks.advance(job=0.0, node=0.1, wall=2.0)  # the idle baseline: only the background is busy
    split, unlearnt = c.split(), c.split()
    before = split.snapshot()
    c.advance(job=0.0, node=0.1, wall=2.0)
    assert "0.050 cores" in split.calibrate(before, split.snapshot())
    assert split.background_cores == pytest.approx(0.05)
    before = split.snapshot()
    c.advance(job=1.0, node=1.05, wall=1.0)  # alone: the job and the background
    assert split.share(before, split.snapshot()).value == pytest.approx(1.0)
    assert unlearnt.share(before, c.split().snapshot()).value == pytest.approx(1.0 / 1.05)
    before = split.snapshot()
    c.advance(job=0.8, node=1.65, wall=1.0)  # beside another job of 0.8 cores: half each
    assert split.share(before, split.snapshot()).value == pytest.approx(0.5)
    assert "0.050 cores" in split.describe()


def test_a_busy_idle_baseline_is_another_jobs_work_and_is_not_learnt_as_background():
    c = Clocks()
    split = c.split()
    before = split.snapshot()
    c.advance(job=0.0, node=1.0, wall=2.0)  # another trial trained through our baseline: 0.5 cores
    note = split.calibrate(before, split.snapshot())
    assert note.startswith("not learnt: 0.50 busy cores") and split.background_cores == 0.0
    before = split.snapshot()
    c.advance(job=1.0, node=2.0, wall=1.0)
    assert split.share(before, split.snapshot()).value == pytest.approx(0.5)  # it keeps its share


def test_a_quiet_node_charges_the_whole_package_to_the_job():
    c = Clocks()
    split = c.split()
    before = split.snapshot()
    assert split.share(before, split.snapshot()).value == 1.0  # nothing was busy: nobody else used it


def test_attribution_splits_the_covered_domains_and_keeps_the_devices_figure():
    c = Clocks()
    att = Attribution([Split(c.split(), ("cpu", "dram"), ("measured:rapl",))])
    before = att.snapshot()
    c.job, c.node = 1.0, 4.0
    domains = att.apply(
        [
            DomainEnergy("cpu", "0", 100.0, "measured:rapl"),
            DomainEnergy("dram", "0", 20.0, "measured:rapl"),
            DomainEnergy("gpu", "0", 300.0, "measured:nvml"),  # not covered: the job's own GPU
        ],
        before,
        att.snapshot(),
    )
    cpu, dram, gpu = domains
    assert (cpu.joules, cpu.node_joules, cpu.share) == (25.0, 100.0, 0.25)
    assert (dram.joules, dram.node_joules) == (5.0, 20.0)
    assert cpu.attribution == "attributed:cpu-time-share" and gpu.attribution is None
    reading = Reading(0.0, 10.0, 10.0, tuple(domains))
    assert reading.joules == 330.0 and reading.node_joules == 420.0
    assert reading.attributions == {"cpu": "attributed:cpu-time-share", "dram": "attributed:cpu-time-share"}
    # dynamic energy is split the same way: share x (device energy - idle watts x seconds)
    dyn = apply_baseline(reading, IdleBaseline({"cpu:0": 5.0, "dram:0": 1.0, "gpu:0": 10.0}, "given"))
    assert [d.dynamic_joules for d in dyn.domains] == pytest.approx([0.25 * 50.0, 0.25 * 10.0, 200.0])
    # a record keeps both figures and reads back the same
    record = WindowRecord.from_reading(dyn, run_id="r", stage="train", epoch=0, global_step=1)
    assert record.node_j == 420.0 and record.energy_j == 330.0
    assert record.reading().domains == dyn.domains


def test_segments_of_a_split_window_add_their_device_figures():
    a = DomainEnergy(
        "cpu",
        "0",
        30.0,
        "measured:rapl",
        node_joules=60.0,
        share=0.5,
        attribution="attributed:cpu-time-share",
    )
    b = DomainEnergy(
        "cpu",
        "0",
        10.0,
        "measured:rapl",
        node_joules=40.0,
        share=0.25,
        attribution="attributed:cpu-time-share",
    )
    merged = merge_readings([Reading(0, 1, 1, (a,)), Reading(1, 2, 1, (b,))]).domains[0]
    assert (merged.joules, merged.node_joules, merged.share) == (40.0, 100.0, 0.4)


def test_a_job_cgroup_is_the_job_where_there_is_one(tmp_path: Path):
    group = "/system.slice/slurmstepd.scope/job_42"
    (tmp_path / "proc_cgroup").write_text(f"0::{group}\n")
    stat = tmp_path / "cg" / group.lstrip("/") / "cpu.stat"
    stat.parent.mkdir(parents=True)
    stat.write_text("usage_usec 2500000\nuser_usec 2000000\n")
    clock, what = job_cpu_clock("auto", cgroup_root=tmp_path / "cg", proc_cgroup=tmp_path / "proc_cgroup")
    assert clock() == 2.5 and what == f"cgroup {group}"
    # a plain login session's cgroup is not a job: the process tree is
    (tmp_path / "proc_cgroup").write_text("0::/user.slice/user-0.slice/session-1\n")
    _, what = job_cpu_clock("auto", cgroup_root=tmp_path / "cg", proc_cgroup=tmp_path / "proc_cgroup")
    assert what.startswith("this process")
    with pytest.raises(OSError, match=r"no cgroup v2 cpu\.stat"):
        job_cpu_clock("cgroup", cgroup_root=tmp_path / "cg", proc_cgroup=tmp_path / "proc_cgroup")


def test_bad_attribution_is_one_line_naming_the_choices():
    with pytest.raises(ValueError, match=r"^attribution must be one of auto, job, device; got 'jobs'$"):
        check_attribution("jobs")
    from lightning_green import EnergyMonitor

    with pytest.raises(ValueError, match="attribution must be one of"):
        EnergyMonitor(attribution=True)


def test_make_meter_splits_rapl_only_when_asked(rapl_tree: Path):
    whole = make_meter("rapl", rapl_root=rapl_tree, attribution="device")
    split = make_meter("rapl", rapl_root=rapl_tree, attribution="auto")
    estimate = make_meter("estimate", attribution="job")  # per process already: nothing to split
    try:
        for m in (whole, split, estimate):
            m.start()
        time.sleep(0.05)
        assert whole.stop().attributions == {}
        r = split.stop()
        assert set(r.attributions) == {"cpu", "dram"}
        assert "attribution" in r.assumptions and r.assumptions["attribution"]["mode"] == "auto"
        assert estimate.stop().attributions == {}
    finally:
        for m in (whole, split, estimate):
            m.close()


def test_node_busy_seconds_reads_proc_stat(tmp_path: Path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 20 30 5000 40 5 5 10 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    assert node_busy_seconds(stat) == pytest.approx(160 / 100)  # user nice system irq softirq; not steal
    assert node_busy_seconds() > 0


JOB = textwrap.dedent("""
    import os, sys, time, torch
    torch.set_num_threads(1)
    from lightning import Trainer
    from lightning_green import EnergyMonitor
    from lightning_green.data import DigitsDataModule
    from lightning_green.models import LitClassifier, SimpleCNN
    root, out, attribution = sys.argv[1:4]
    monitor = EnergyMonitor(backend="rapl", rapl_root=root, output_dir=out, attribution=attribution, baseline_s=0)
    trainer = Trainer(max_epochs=3, callbacks=[monitor], logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0)
    open(out + ".ready", "w").close()  # both start training together, whatever their import times
    while not os.path.exists(os.path.join(os.path.dirname(out), "go")):
        time.sleep(0.01)
    trainer.fit(LitClassifier(SimpleCNN(conv_layers=2)), datamodule=DigitsDataModule(batch_size=16))
""")


@pytest.mark.slow
def test_two_concurrent_trainings_on_one_package_never_claim_more_than_it_used(tmp_path: Path):
    with EmulatedRapl(tmp_path / "powercap", idle_w=10.0, watts_per_core=15.0, history=True) as rapl:
        runs = {}
        for attribution in ("auto", "device"):
            (tmp_path / "go").unlink(missing_ok=True)
            procs = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        JOB,
                        str(rapl.root),
                        str(tmp_path / f"{attribution}{i}"),
                        attribution,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for i in range(2)
            ]
            deadline = time.monotonic() + 120
            while not all((tmp_path / f"{attribution}{i}.ready").exists() for i in range(2)):
                assert time.monotonic() < deadline and all(p.poll() is None for p in procs), (
                    "a job did not start"
                )
                time.sleep(0.05)
            (tmp_path / "go").touch()
            for p in procs:
                _, err = p.communicate(timeout=300)
                assert p.returncode == 0, err[-3000:]
            runs[attribution] = [read_windows(tmp_path / f"{attribution}{i}") for i in range(2)]
    for attribution, (a, b) in runs.items():
        claimed = sum(w.energy_j for w in (*a, *b))
        node = rapl.joules_over([(w.start_time, w.end_time) for w in (*a, *b)])
        overlap = min(max(w.end_time for w in a), max(w.end_time for w in b)) - max(
            min(w.start_time for w in a), min(w.start_time for w in b)
        )
        assert overlap > 0, "the two trainings did not run at the same time"
        if attribution == "auto":
            assert claimed <= 1.05 * node, (claimed, node)
            for w in (*a, *b):
                assert w.attribution["cpu"].startswith("attributed:cpu-time-share")
                assert w.node_j is not None and w.energy_j <= w.node_j + 1e-9
        else:  # each charged the whole package: the overlap is counted twice
            assert claimed > 1.1 * node, (claimed, node)
    summary = read_summary(tmp_path / "auto0")
    assert summary["attribution"] == "auto" and summary["total_node_j"] >= summary["total_j"] > 0


def test_a_lone_window_on_the_emulated_package_is_nearly_all_the_jobs(tmp_path: Path):
    """Busy alone in a window: the job's CPU time is almost all of the node's, so its share is too
    (this test's process is the busiest on the machine while it spins)."""
    with EmulatedRapl(tmp_path / "powercap", idle_w=10.0, watts_per_core=15.0) as rapl:
        meter = make_meter("rapl", rapl_root=rapl.root, attribution="auto")
        try:
            meter.start()
            t_end = time.process_time() + 1.0
            while time.process_time() < t_end:
                pass
            r = meter.stop()
        finally:
            meter.close()
    cpu = r.domains[0]
    assert cpu.attribution == "attributed:cpu-time-share" and cpu.node_joules > 0
    assert 0.0 < cpu.share <= 1.0 and cpu.joules == pytest.approx(cpu.share * cpu.node_joules)


def test_the_idle_baseline_teaches_the_split_the_nodes_background(tmp_path: Path):
    with EmulatedRapl(tmp_path / "powercap", idle_w=10.0, watts_per_core=15.0) as rapl:
        meter = make_meter("rapl", rapl_root=rapl.root, attribution="auto")
        try:
            meter.start()
            baseline = measure_idle(meter, 0.3)
        finally:
            meter.close()
    assert baseline.watts["cpu:0"] > 0
    (background,) = baseline.background
    assert background.startswith("cpu+dram background: ") and "idle baseline" in background
    assert baseline.to_dict()["background"] == [background]
    assert background.split(": ", 1)[1] in meter.assumptions["attribution"]["cpu+dram"]


def test_emulated_rapl_follows_cpu_use(tmp_path: Path):
    with EmulatedRapl(tmp_path / "powercap", idle_w=10.0, watts_per_core=15.0, history=True) as rapl:
        t0 = time.time()
        busy0 = node_busy_seconds()
        end = time.process_time() + 0.5
        while time.process_time() < end:
            pass
        time.sleep(0.05)
        t1 = time.time()
        busy = node_busy_seconds() - busy0
    assert rapl.joules_between(t0, t1) == pytest.approx(10.0 * (t1 - t0) + 15.0 * busy, rel=0.1)
    assert (rapl.root / "intel-rapl:0" / "energy_uj").read_text().strip().isdigit()
    assert make_rapl_tree  # the static fake tree stays for wrap and fault tests
