"""Which GPU a CUDA device is (by UUID), and this job's share of a GPU other processes use too.

A patched NVML (:mod:`helpers.fake_nvml`) drives the real reading code; torch's CUDA is patched
where a test needs CUDA's own view of its devices.
"""

from __future__ import annotations

import os
import uuid
from types import SimpleNamespace

import pytest
import torch
from helpers.fake_nvml import FakeNvml

from lightning_green.energy import MeterUnavailableError, NvmlMeter, gpu_share, make_meter

OTHER = 99_999_999  # another job's process on the GPU
MIG = "MIG-abcdef01-2345-4678-9abc-def012345678"


def _read(meter: NvmlMeter, fake: FakeNvml, added_mj: dict[int, float]) -> dict[str, float | None]:
    """Joules per channel over a window in which NVML's GPUs gain ``added_mj`` (by NVML index)."""
    meter.start()
    for nvml_index, mj in added_mj.items():
        fake.mj[nvml_index] += mj
    return {d.key: d.joules for d in meter.stop().domains}


def _cuda_sees(monkeypatch, nvml_uuids: list[str]) -> None:
    """Torch's CUDA sees these devices, in this order (it prints UUIDs without a ``GPU-`` prefix)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(nvml_uuids))
    props = [SimpleNamespace(name="fake", uuid=uuid.UUID(u[4:])) for u in nvml_uuids]
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props[i])


def test_integer_visible_devices_are_nvml_indices(monkeypatch):
    fake = FakeNvml(monkeypatch, gpus=4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    meter = NvmlMeter([0, 1], sync=False, sync_reads=True)
    assert _read(meter, fake, {3: 1_000.0, 1: 2_000.0, 0: 99_000.0}) == {"gpu:0": 1.0, "gpu:1": 2.0}
    assert meter.assumptions["gpu_uuids"] == {"0": fake.uuids[3], "1": fake.uuids[1]}
    assert "CUDA's device order taken to be NVML's" in meter.assumptions["gpu_identity"]
    every = NvmlMeter(None, sync=False, sync_reads=True)  # every GPU CUDA shows, not every GPU NVML has
    assert [c.device for c in every.channels] == ["0", "1"]


def test_uuid_visible_devices_full_or_a_unique_prefix(monkeypatch):
    fake = FakeNvml(monkeypatch, gpus=3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{fake.uuids[2]},GPU-1111")  # SLURM / Kubernetes style
    meter = NvmlMeter([0, 1], sync=False, sync_reads=True)
    assert _read(meter, fake, {2: 1_000.0, 0: 2_000.0, 1: 99_000.0}) == {"gpu:0": 1.0, "gpu:1": 2.0}
    assert meter.assumptions["gpu_uuids"] == {"0": fake.uuids[2], "1": fake.uuids[0]}


def test_mig_instance_reads_its_parent_gpus_counter(monkeypatch):
    fake = FakeNvml(monkeypatch, gpus=2, migs={MIG: 1})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", MIG)
    meter = NvmlMeter([0], sync=False, sync_reads=True)
    assert _read(meter, fake, {1: 3_000.0, 0: 99_000.0}) == {"gpu:0": 3.0}
    assert meter.assumptions["gpu_uuids"] == {"0": MIG}
    assert fake.uuids[1] in meter.assumptions["gpu_mig"]["0"]


def test_cuda_order_is_not_nvml_order(monkeypatch):
    fake = FakeNvml(monkeypatch, gpus=3)
    # CUDA's default order (fastest first) reverses NVML's PCI order here; the indices in
    # CUDA_VISIBLE_DEVICES would name the wrong GPUs, the UUIDs CUDA reports do not.
    _cuda_sees(monkeypatch, [fake.uuids[2], fake.uuids[1], fake.uuids[0]])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    meter = NvmlMeter([0, 2], sync=False, sync_reads=True)
    assert _read(meter, fake, {2: 1_000.0, 0: 2_000.0, 1: 99_000.0}) == {"gpu:0": 1.0, "gpu:2": 2.0}
    assert meter.assumptions["gpu_uuids"] == {"0": fake.uuids[2], "2": fake.uuids[0]}
    assert "gpu_identity" not in meter.assumptions  # CUDA's own UUIDs: no assumption on order


def test_cuda_reported_mig_instance_is_found_by_uuid(monkeypatch):
    fake = FakeNvml(monkeypatch, gpus=1, migs={MIG: 0})
    _cuda_sees(monkeypatch, [MIG])
    meter = NvmlMeter([0], sync=False, sync_reads=True)
    assert meter.assumptions["gpu_uuids"] == {"0": MIG}
    assert _read(meter, fake, {0: 4_000.0}) == {"gpu:0": 4.0}


@pytest.mark.parametrize(
    ("visible", "index", "says"),
    [
        ("GPU-deadbeef", 0, "no NVML device(s) have a UUID starting GPU-deadbeef"),
        ("GPU-", 0, "2 (GPU-11111111"),  # a prefix CUDA would find ambiguous
        ("1", 1, "lists 1 usable device(s)"),
        ("0,0", 0, "lists 0 usable device(s)"),  # CUDA hides every device when one is listed twice
        ("7", 0, "NVML has no GPU 7"),
    ],
)
def test_an_unmatched_device_is_a_one_line_error(monkeypatch, visible, index, says):
    FakeNvml(monkeypatch, gpus=2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with pytest.raises(MeterUnavailableError) as err:
        NvmlMeter([index], sync=False, sync_reads=True)
    message = str(err.value)
    assert "\n" not in message and says in message
    assert f"CUDA device {index} " in message and f"CUDA_VISIBLE_DEVICES={visible!r}" in message


def test_a_uuid_cuda_reports_but_nvml_lacks_is_an_error(monkeypatch):
    FakeNvml(monkeypatch, gpus=1)
    _cuda_sees(monkeypatch, ["GPU-99999999-0000-4000-8000-999999999999"])
    with pytest.raises(MeterUnavailableError, match=r"CUDA device 0 .*99999999-0000.*NVML does not know"):
        NvmlMeter([0], sync=False, sync_reads=True)


# ---------------------------------------------------------------- sharing a GPU


@pytest.fixture
def fake(monkeypatch) -> FakeNvml:
    monkeypatch.setattr(gpu_share, "PROCESS_SAMPLE_INTERVAL_S", 3600)  # the test takes the samples
    return FakeNvml(monkeypatch, gpus=1)


def _shared_window(fake: FakeNvml, attribution: str = "auto", during=None, **kwargs):
    """One 10 J window on GPU 0 through ``make_meter``; ``during`` changes what NVML reports in it,
    then the per-process figures are sampled as the background thread does."""
    meter = make_meter("nvml", gpu_indices=[0], attribution=attribution, sync_reads=True, **kwargs)
    try:
        meter.start()
        fake.mj[0] += 10_000.0
        if during is not None:
            during()
        sampler = meter.meters[0]._process_sampler
        if sampler is not None:
            sampler.sample()
        reading = meter.stop()
    finally:
        meter.close()
    (d,) = reading.domains
    return d, meter


def test_two_processes_on_one_gpu_are_split_by_utilisation(fake):
    def busy():
        fake.samples[0] += [fake.sample(os.getpid(), 60, 1), fake.sample(OTHER, 20, 1)]
        fake.processes[0] = [os.getpid(), OTHER]

    d, meter = _shared_window(fake, during=busy)
    assert d.attribution == "attributed:gpu-process-utilisation"
    assert d.share == pytest.approx(0.75)
    assert d.joules == pytest.approx(7.5) and d.node_joules == pytest.approx(10.0)
    assert "SM utilisation" in meter.assumptions["attribution"]["gpu 0"]


def test_samples_already_counted_are_not_counted_again(fake):
    fake.samples[0] = [fake.sample(OTHER, 100, 1)]  # before the window: not its share

    def busy():
        fake.samples[0] += [fake.sample(os.getpid(), 30, 2), fake.sample(OTHER, 10, 2)]

    d, _ = _shared_window(fake, during=busy)
    assert d.share == pytest.approx(0.75)


def test_time_sliced_where_the_driver_has_no_per_process_utilisation(fake):
    fake.process_util = False
    fake.processes[0] = [os.getpid(), OTHER]
    d, _ = _shared_window(fake)
    assert (d.attribution, d.share, d.joules) == ("attributed:gpu-processes-time-sliced", 0.5, 5.0)


def test_time_sliced_where_no_utilisation_was_sampled_and_whole_when_alone(fake):
    fake.processes[0] = [os.getpid()]
    d, _ = _shared_window(fake, during=lambda: fake.samples[0].append(fake.sample(OTHER, 0, 1)))
    assert (d.attribution, d.share, d.joules) == ("attributed:gpu-processes-time-sliced", 1.0, 10.0)


def test_mig_instance_is_not_attributable(monkeypatch):
    monkeypatch.setattr(gpu_share, "PROCESS_SAMPLE_INTERVAL_S", 3600)
    fake = FakeNvml(monkeypatch, gpus=1, migs={MIG: 0})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", MIG)
    d, meter = _shared_window(fake, attribution="job")
    assert d.attribution == "not-attributable:mig"
    assert d.joules is None and d.share is None
    assert d.node_joules == pytest.approx(10.0)  # the whole GPU's, other instances included
    assert meter.meters[0]._process_sampler is None  # nothing to sample for a MIG instance


def test_no_per_process_figure_fails_job_attribution_and_charges_the_whole_gpu_on_auto(fake):
    fake.process_util = fake.process_list = False
    with pytest.raises(MeterUnavailableError, match=r"attribution=job: gpu:0 cannot be split"):
        make_meter("nvml", gpu_indices=[0], attribution="job", sync_reads=True)
    d, meter = _shared_window(fake, attribution="auto")
    assert d.joules == pytest.approx(10.0) and d.attribution is None
    assert any("gpu:0: the whole GPU is charged to this job" in n for n in meter.notes)


@pytest.mark.parametrize(("attribution", "share", "joules"), [("job", None, None), ("auto", 1.0, 10.0)])
def test_a_job_nvml_never_lists_is_not_charged_nothing(fake, monkeypatch, attribution, share, joules):
    # This process uses CUDA, yet NVML lists only PIDs of another namespace (a container).
    monkeypatch.setattr(gpu_share, "_cuda_in_use", lambda: True)
    fake.processes[0] = [OTHER]
    d, _ = _shared_window(fake, attribution, during=lambda: fake.samples[0].append(fake.sample(OTHER, 50, 1)))
    assert (d.attribution, d.share, d.joules) == ("not-attributable:pid-namespace", share, joules)
    assert d.node_joules == pytest.approx(10.0)


# ---------------------------------------------------------------- DDP: every rank's GPU keeps its UUID
def test_ranks_gathered_under_ddp_keep_each_ranks_gpu_uuids(monkeypatch):
    """Rank 0 reads a whole GPU, rank 1 a MIG instance on another: each keeps its UUID in the
    merged reading and its record, under the device label the record's domains carry."""
    from lightning_green.callbacks.windows import gather_ranks
    from lightning_green.export._figures import domain_figures
    from lightning_green.records import WindowRecord

    fake = FakeNvml(monkeypatch, gpus=2, migs={MIG: 0})
    readings = []
    for visible, nvml_index in (("1", 1), (MIG, 0)):  # each rank's CUDA device 0
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        meter = NvmlMeter([0], sync=False, sync_reads=True)
        meter.start()
        fake.mj[nvml_index] += 1_000.0 * (nvml_index + 1)
        readings.append(meter.stop())
    assert [r.assumptions["gpu_uuids"] for r in readings] == [{"0": fake.uuids[1]}, {"0": MIG}]

    def all_gather_object(out: list, obj) -> None:
        assert obj is readings[0]  # this process is rank 0
        out[:] = readings

    dist = torch.distributed
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    merged = gather_ranks(readings[0], world_size=2)

    assert {d.key: d.joules for d in merged.domains} == {"gpu:rank0/0": 2.0, "gpu:rank1/0": 1.0}
    assert merged.assumptions["gpu_uuids"] == {"rank0/0": fake.uuids[1], "rank1/0": MIG}
    assert list(merged.assumptions["gpu_mig"]) == ["rank1/0"]
    assert fake.uuids[0] in merged.assumptions["gpu_mig"]["rank1/0"]  # the parent GPU, named
    record = WindowRecord.from_reading(
        merged, run_id="r", stage="train", epoch=0, global_step=1, world_size=2
    )
    assert record.assumptions["gpu_uuids"] == merged.assumptions["gpu_uuids"]
    # What the exporters label each device with: every rank's GPU, not only this process's.
    labels = {f.labels["device"]: f.labels["uuid"] for f in domain_figures(record, "node", {})}
    assert labels == {"rank0/0": fake.uuids[1], "rank1/0": MIG}


def test_a_single_process_reading_is_not_renamed():
    from lightning_green.callbacks.windows import gather_ranks
    from lightning_green.energy import DomainEnergy, Reading

    local = Reading(
        0.0, 1.0, 1.0, (DomainEnergy("gpu", "0", 5.0, "measured:nvml"),), {"gpu_uuids": {"0": "GPU-1"}}
    )
    assert gather_ranks(local, world_size=1) is local
