"""LayerEnergyProfiler with a real Trainer: leaves, shares, allocation, hooks, replay, torchvision."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.checkpoint import checkpoint

from lightning_green import EnergyMonitor, LayerEnergyProfiler
from lightning_green.data import DigitsDataModule, SyntheticDataModule
from lightning_green.energy.base import Channel, CounterMeter
from lightning_green.models import LitClassifier, SimpleCNN, TransformerClassifier, torchvision_model
from lightning_green.records import iter_records


class ConstantPowerMeter(CounterMeter):
    """A test meter whose power is a known constant: joules = watts x wall time."""

    name = "constant"

    def __init__(self, watts: float = 100.0) -> None:
        super().__init__()
        self.watts = watts

    @property
    def channels(self):
        return (Channel("cpu", "0", "measured:constant-test-power"),)

    def read_counters(self):
        return {"cpu:0": time.perf_counter() * self.watts}


def _fit(profiler: LayerEnergyProfiler, model: LightningModule, tmp_path: Path, dm=None, **kw) -> Trainer:
    trainer = Trainer(
        max_epochs=kw.pop("max_epochs", 1),
        callbacks=[EnergyMonitor(), profiler, *kw.pop("callbacks", [])],
        logger=CSVLogger(tmp_path, name="", version=""),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        **kw,
    )
    trainer.fit(model, datamodule=dm or DigitsDataModule())
    return trainer


class HookSpy(Callback):
    """Records, for each training step, whether any module carried a hook."""

    def __init__(self) -> None:
        self.seen: dict[int, bool] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        hooked = any(
            m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in pl_module.modules()
        )
        self.seen[trainer.global_step] = hooked


def test_cnn_whole_tree_shares_sum_and_allocation(tmp_path: Path):
    net = SimpleCNN(conv_layers=2, linear_layers=2)
    expected = {"net", *(f"net.{i}" for i, _ in enumerate(net))}
    meter = ConstantPowerMeter(watts=100.0)
    prof = LayerEnergyProfiler(warmup_steps=2, profile_steps=3, every_n_steps=8, meter=meter)
    spy = HookSpy()
    trainer = _fit(prof, LitClassifier(net), tmp_path, callbacks=[spy])

    rows = prof.rows()
    names = [r["name"] for r in rows]
    assert names[-1] == "unattributed" and set(names[:-1]) == expected and len(names) == len(expected) + 1
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    fig = prof.step_figures()
    # constant 100 W: the reference steps' joules are 100 x their seconds
    assert fig["step_j"] == pytest.approx(100.0 * fig["step_s"], rel=0.01)
    assert fig["clock"] == "wall"  # a measured counter: modules are timed by the wall clock
    assert sum(r["joules_per_step"] for r in rows) == pytest.approx(fig["step_j"])
    # each module's share of the step's energy is its share of the step's time (on a busy machine
    # the profiled steps may outlast the reference ones: the times are then scaled to their sum)
    watts = fig["step_j"] / max(fig["step_s"], sum(r["self_s"] for r in rows[:-1]))
    for r in rows[:-1]:
        assert r["joules_per_step"] == pytest.approx(watts * r["self_s"], rel=1e-6)
        assert r["calls"] == 1 and r["source"] == "allocated:measured:constant-test-power"
        assert r["clock"] == "wall" and r["recomputed_calls"] == 0
    by = {r["name"]: r for r in rows}
    # the network's total is itself plus every layer; its own work is what runs between them
    assert by["net"]["total_j"] == pytest.approx(sum(r["joules_per_step"] for r in rows[:-1]))
    assert by["net"]["total_s"] >= sum(r["self_s"] for r in rows[1:-1]) - 1e-9
    assert by["net"]["depth"] == 1 and by["net.0"]["parent"] == "net" and by["net.0"]["depth"] == 2
    conv = [r for r in rows if r["layer_type"] == "Conv"]
    assert all(
        r["flops"] > 0 and r["self_backward_s"] > 0 for r in conv
    )  # first conv: weight-grad time counted
    params = [r for r in rows[:-1] if r["params"]]
    assert all(r["optimizer_s"] > 0 for r in params) and sum(r["optimizer_j"] for r in params) > 0
    assert all(r["optimizer_s"] == 0 for r in rows[:-1] if not r["params"])

    # 20 steps per epoch: profiled 2-4, 10-12, 18-19 (hooks on); references 5-7 and 13-15 (no hooks)
    assert prof.steps == 8
    assert {s for s, hooked in spy.seen.items() if hooked} == {2, 3, 4, 10, 11, 12, 18, 19}
    assert prof.book.fallback_windows == 1  # 18-19: the epoch ended before a reference ran
    assert fig["hook_overhead_s_per_step"] > 0
    assert not any(
        m._forward_hooks or m._backward_hooks or m._forward_pre_hooks
        for m in trainer.lightning_module.modules()
    )
    assert not prof.attached

    types = {t["layer_type"]: t for t in prof.type_table()}
    assert set(types) == {
        "Conv",
        "BatchNorm",
        "ReLU",
        "Pooling",
        "Other",
        "Linear",
        "Composite",
        "unattributed",
    }
    assert types["Conv"]["layers"] == 2 and types["ReLU"]["layers"] == 3
    frame = prof.type_table(as_frame=True)  # for a notebook
    assert list(frame["layer_type"]) == list(types) and frame["joules_per_step"].dtype.kind == "f"
    assert sum(t["share"] for t in types.values()) == pytest.approx(1.0)

    out = Path(trainer.logger.log_dir)
    with open(out / "layers.csv") as f:
        assert [r["name"] for r in csv.DictReader(f)] == names
    assert (out / "layer_types.csv").is_file() and (out / "layer_energy.png").stat().st_size > 0
    assert json.loads((out / "layer_profile.json").read_text())["step_j"] == pytest.approx(fig["step_j"])
    with open(out / "metrics.csv") as f:
        logged = [r for r in csv.DictReader(f) if r.get("layer_energy/Conv_j")]
    assert logged and float(logged[-1]["layer_energy/Conv_j"]) == pytest.approx(
        types["Conv"]["joules_per_step"]
    )
    assert trainer.callback_metrics["layer_energy/unattributed_j"].item() == pytest.approx(
        types["unattributed"]["joules_per_step"]
    )
    recs = list(iter_records(out / "energy.jsonl", "layer"))
    assert {r.name for r in recs} == set(names)
    assert {r.name: r.parent for r in recs}["net.0"] == "net"


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.conv(x))


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.flat = nn.Flatten()
        self.shared = nn.Linear(256, 256)  # called twice per step
        self.head = nn.Linear(256, 10)

    def forward(self, x):
        return self.head(self.shared(self.shared(self.flat(self.block(x)))))


def test_nested_inplace_and_shared_module(tmp_path: Path):
    model = LitClassifier(Nested())
    prof = LayerEnergyProfiler(warmup_steps=1, profile_steps=2, every_n_steps=None)
    _fit(prof, model, tmp_path)
    rows = {r["name"]: r for r in prof.rows()}
    assert set(rows) == {
        "net", "net.block", "net.block.conv", "net.block.act", "net.flat", "net.shared", "net.head",
        "unattributed",
    }  # fmt: skip
    assert rows["net.shared"]["calls"] == 2 and rows["net.head"]["calls"] == 1
    assert rows["net.shared"]["flops"] == 2 * 2 * 256 * 256 * 64  # two calls, batch of 64
    assert rows["net.block"]["layer_type"] == "Composite" and rows["net.block"]["total_flops"] > 0
    assert rows["net"]["total_flops"] == pytest.approx(
        sum(r["flops"] for n, r in rows.items() if n != "unattributed"), rel=1e-6
    )
    assert model.net.block.act.inplace is True  # restored after profiling


def test_resnet18_profiles_and_lists_its_convs(tmp_path: Path):
    net = torchvision_model("resnet18", in_channels=1, num_classes=10, image_size=8)
    dm = SyntheticDataModule(samples=64, batch_size=8)
    prof = LayerEnergyProfiler(warmup_steps=1, profile_steps=1, every_n_steps=None)
    _fit(prof, LitClassifier(net), tmp_path, dm=dm, limit_train_batches=3, limit_val_batches=1)
    rows = prof.rows()
    convs = [r for r in rows if r["layer_type"] == "Conv"]
    assert len(convs) == 20  # 17 3x3 convs + 3 downsample 1x1
    assert any(r["name"].endswith("layer4.1.conv2") for r in convs)
    by = {r["name"]: r for r in rows}
    block = next(n for n in by if n.endswith("layer1.0"))  # a BasicBlock: its own work is the residual add
    assert by[block]["layer_type"] == "Composite" and by[block]["total_j"] > by[block]["joules_per_step"] > 0
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    types = {t["layer_type"] for t in prof.type_table()}
    assert {"Conv", "BatchNorm", "ReLU", "Pooling", "Linear"} <= types


def test_replay_agrees_with_allocate_in_order_of_magnitude(tmp_path: Path):
    results = {}
    for mode in ("allocate", "replay"):
        torch.manual_seed(0)
        net = SimpleCNN(conv_layers=3, linear_layers=2, base_channels=2)
        prof = LayerEnergyProfiler(
            warmup_steps=2, profile_steps=4, every_n_steps=None, mode=mode, replay_window_s=0.3
        )
        _fit(prof, LitClassifier(net), tmp_path / mode)
        results[mode] = {r["name"]: r for r in prof.rows()}
        assert all(
            r["source"].startswith("replayed:" if mode == "replay" else "allocated:")
            for n, r in results[mode].items()
            if n != "unattributed"
        )
    for name, a in results["allocate"].items():
        if (
            name == "unattributed"
            or not name.startswith("net.")
            or results["allocate"][name]["layer_type"] != "Conv"
        ):
            continue
        r = results["replay"][name]["joules_per_step"]
        assert 0.1 < r / a["joules_per_step"] < 10, (name, r, a["joules_per_step"])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"warmup_steps": -1}, "warmup_steps"), ({"profile_steps": 0}, "profile_steps"),
     ({"every_n_steps": 2, "profile_steps": 3}, "every_n_steps"), ({"mode": "sample"}, "mode"),
     ({"replay_window_s": 0}, "replay_window_s"), ({"backend": "x"}, "backend")],
)  # fmt: skip
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LayerEnergyProfiler(**kwargs)


class NoLayers(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(64, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(x.flatten(1) @ self.w, y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_model_without_modules_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ValueError, match="no modules"):
        _fit(LayerEnergyProfiler(), NoLayers(), tmp_path, limit_val_batches=0)


def _transformer(depth: int = 2, image_size: int = 16) -> LitClassifier:
    torch.manual_seed(0)
    # 64 tokens of 4x... : patch 2 on 16x16 gives 64 tokens, so the attention core is real work
    return LitClassifier(
        TransformerClassifier(depth=depth, width=32, heads=2, patch=2, image_size=image_size)
    )


def test_attention_inside_a_parent_forward_is_the_parents_own_work(tmp_path: Path):
    """nanoGPT-style attention (F.scaled_dot_product_attention called in SelfAttention.forward): its
    work is attributed to SelfAttention, typed Attention, and unattributed shrinks against leaf-only."""
    dm = SyntheticDataModule(samples=256, image_size=16, batch_size=32)
    prof = LayerEnergyProfiler(warmup_steps=1, profile_steps=2, every_n_steps=None, plot=False)
    _fit(prof, _transformer(), tmp_path, dm=dm, limit_train_batches=6, limit_val_batches=0)
    rows = prof.rows()
    by = {r["name"]: r for r in rows}
    attn = by["net.blocks.0.attn"]
    assert attn["layer_type"] == "Attention" and attn["module_type"] == "SelfAttention"
    # its own work (the SDPA call, reshapes) is a real part of its total, besides qkv and proj
    assert attn["joules_per_step"] > 0.1 * attn["total_j"]
    assert attn["total_j"] == pytest.approx(
        attn["joules_per_step"]
        + by["net.blocks.0.attn.qkv"]["total_j"]
        + by["net.blocks.0.attn.proj"]["total_j"]
    )
    leaves = [r for r in rows[:-1] if not prof.nodes[r["name"]].children]
    step_j = prof.step_figures()["step_j"]
    leaf_only_unattributed = step_j - sum(r["joules_per_step"] for r in leaves)
    tree_unattributed = by["unattributed"]["joules_per_step"]
    assert tree_unattributed < leaf_only_unattributed - attn["joules_per_step"] * 0.9
    types = {t["layer_type"]: t for t in prof.type_table()}
    assert types["Attention"]["layers"] == 2 and types["Attention"]["joules_per_step"] > 0
    assert types["Norm"]["layers"] == 5 and types["Embedding"]["layers"] == 1


class DtypeSpy(nn.Linear):
    """A Linear that records the dtype each of its calls computed in."""

    seen: list[torch.dtype] = []

    def forward(self, x):
        out = super().forward(x)
        DtypeSpy.seen.append(out.dtype)
        return out


def test_replay_runs_in_the_steps_autocast_dtype(tmp_path: Path):
    DtypeSpy.seen = []
    net = nn.Sequential(nn.Flatten(), DtypeSpy(64, 64), nn.ReLU(), nn.Linear(64, 10))
    prof = LayerEnergyProfiler(warmup_steps=1, profile_steps=2, every_n_steps=None, mode="replay",
                               replay_window_s=0.05, plot=False)  # fmt: skip
    _fit(
        prof, LitClassifier(net), tmp_path, precision="bf16-mixed", limit_train_batches=5, limit_val_batches=0
    )
    assert DtypeSpy.seen and set(DtypeSpy.seen) == {torch.bfloat16}  # the steps and every replay
    assert len(DtypeSpy.seen) > 5 + 10  # the replays did run (3 calibration + the measured loop)
    row = next(r for r in prof.rows() if r["name"] == "net.1")
    assert row["replay_j_per_call"] > 0 and row["source"].startswith("replayed:")


def test_replay_power_and_allocate_all_reported_in_power_mode(tmp_path: Path):
    dm = SyntheticDataModule(samples=256, image_size=16, batch_size=32)
    prof = LayerEnergyProfiler(warmup_steps=1, profile_steps=2, every_n_steps=None, mode="power",
                               replay_window_s=0.05, plot=False)  # fmt: skip
    _fit(prof, _transformer(depth=2), tmp_path, dm=dm, limit_train_batches=6, limit_val_batches=0)
    rows = prof.rows()
    step_j = prof.step_figures()["step_j"]
    for key in ("allocated_j", "power_j", "replayed_j"):
        assert all(r[key] is not None for r in rows[:-1]), key
    assert sum(r["joules_per_step"] for r in rows) == pytest.approx(step_j)
    assert all(r["source"].startswith("allocated-by-power:") for r in rows[:-1])
    assert all(r["replay_w"] > 0 for r in rows[:-1])
    blocks = [r for r in rows if r["name"] in ("net.blocks.0", "net.blocks.1")]
    assert "replay shared with net.blocks.0" in blocks[1]["note"]  # identical blocks: one replay


def test_a_compiled_submodule_is_timed_as_one_unit(tmp_path: Path):
    inner = nn.Sequential(nn.Linear(64, 64), nn.ReLU())
    net = nn.Sequential(nn.Flatten(), torch.compile(inner, backend="eager"), nn.Linear(64, 10))
    prof = LayerEnergyProfiler(warmup_steps=1, profile_steps=2, every_n_steps=None, plot=False)
    _fit(prof, LitClassifier(net), tmp_path, limit_train_batches=5, limit_val_batches=0)
    by = {r["name"]: r for r in prof.rows()}
    assert by["net.1"]["layer_type"] == "Compiled" and "not attributable" in by["net.1"]["note"]
    assert by["net.1"]["joules_per_step"] > 0
    assert not any(n.startswith("net.1.") for n in by)
    assert "inside torch.compile'd modules are not attributable" in " ".join(prof.structure_notes)


# ---------------------------------------------------------------- FLOPs in the real step (issue 23.8)
class CountingHook:
    """A user's own forward hook: counts the forwards it sees."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, module, args, output) -> None:
        self.calls += 1


@pytest.mark.parametrize("mode", ["allocate", "replay"])
def test_a_users_forward_hooks_see_only_the_steps_forwards(tmp_path: Path, mode: str):
    net = SimpleCNN(conv_layers=1, linear_layers=2, base_channels=2)
    on_net, on_conv = CountingHook(), CountingHook()
    net.register_forward_hook(on_net)
    net[0].register_forward_hook(on_conv)
    prof = LayerEnergyProfiler(warmup_steps=1, profile_steps=2, every_n_steps=4, mode=mode,
                               replay_window_s=0.02, plot=False)  # fmt: skip
    trainer = _fit(prof, LitClassifier(net), tmp_path, limit_train_batches=8, limit_val_batches=0)
    assert trainer.global_step == 8
    # one forward per training step: counting FLOPs and replaying never ran the user's modules again
    assert on_net.calls == 8 and on_conv.calls == 8
    rows = {r["name"]: r for r in prof.rows()}
    assert rows["net.0"]["flops"] > 0 and prof.step_figures()["flop_counted_steps"] == 1
    if mode == "replay":
        assert rows["net.0"]["replay_j_per_call"] is not None  # the conv was replayed, on a hook-free copy


class CheckpointedMLP(nn.Module):
    """An MLP whose body is recomputed in backward (activation checkpointing)."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.flat = nn.Flatten()
        self.stem = nn.Linear(64, 64)  # the checkpointed body's input needs a gradient
        self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64))
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(self.flat(x))
        return self.head(checkpoint(self.body, x, use_reentrant=self.reentrant))


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_counts_a_recomputed_forward_once(tmp_path: Path, reentrant: bool):
    prof = LayerEnergyProfiler(warmup_steps=1, profile_steps=2, every_n_steps=None, plot=False)
    _fit(
        prof, LitClassifier(CheckpointedMLP(reentrant)), tmp_path, limit_train_batches=5, limit_val_batches=0
    )
    rows = {r["name"]: r for r in prof.rows()}
    body, first, second = rows["net.body"], rows["net.body.0"], rows["net.body.2"]
    batch = 64
    assert first["total_flops"] == 2 * 64 * 128 * batch and second["total_flops"] == 2 * 128 * 64 * batch
    # children never exceed their parent: the recomputation is not a second forward
    assert body["total_flops"] == first["total_flops"] + second["total_flops"]
    assert rows["net"]["total_flops"] == sum(
        rows[n]["total_flops"] for n in ("net.stem", "net.body", "net.head")
    )
    assert body["calls"] == first["calls"] == 1
    assert (
        body["recomputed_calls"] == first["recomputed_calls"] == 1
        and rows["net.head"]["recomputed_calls"] == 0
    )
    assert "recomputed in backward" in first["note"]
    # the recomputation's time is the body's forward time, not also a backward interval's
    fig = prof.step_figures()
    own = sum(r["self_forward_s"] + r["self_backward_s"] for n, r in rows.items() if n != "unattributed")
    assert own <= fig["profiled_step_s"] + 1e-9
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0)


# ---------------------------------------------------------------- time what the meter measures (issue 23.10)
class FakeCpu:
    """A CPU-time clock that only the modules below advance: a deterministic stand-in for CPU time."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t


class FakeCpuEstimate(CounterMeter):
    """The CPU-time estimate over the fake clock: joules = CPU seconds x 10 W."""

    name = "fake-estimate"

    def __init__(self, cpu: FakeCpu) -> None:
        super().__init__()
        self.cpu = cpu

    @property
    def channels(self):
        return (Channel("cpu", "process", "estimated:cpu-time"),)

    def read_counters(self):
        return {"cpu:process": self.cpu.t * 10.0}


class Burn(nn.Module):
    """Spends ``cpu_s`` of CPU time (the fake clock) and waits ``wait_s`` of wall time, as a process
    descheduled on a busy machine does."""

    def __init__(self, clock: FakeCpu, cpu_s: float, wait_s: float) -> None:
        super().__init__()
        self.clock, self.cpu_s, self.wait_s = clock, cpu_s, wait_s
        self.w = nn.Parameter(torch.ones(64))

    def forward(self, x):
        self.clock.t += self.cpu_s
        time.sleep(self.wait_s)
        return x * self.w


def test_the_cpu_time_estimate_is_split_by_cpu_time_not_by_the_wall_clock(tmp_path: Path):
    clock = FakeCpu()
    # burn.1 does a quarter of the CPU work but, descheduled, takes most of the wall time
    net = nn.Sequential(nn.Flatten(), Burn(clock, 0.003, 0.0), Burn(clock, 0.001, 0.01), nn.Linear(64, 10))
    prof = LayerEnergyProfiler(warmup_steps=1, profile_steps=2, every_n_steps=4, meter=FakeCpuEstimate(clock),
                               clock=clock.now, plot=False)  # fmt: skip
    trainer = _fit(prof, LitClassifier(net), tmp_path, limit_train_batches=8, limit_val_batches=0)
    fig = prof.step_figures()
    assert fig["clock"] == "custom" and fig["step_s"] == pytest.approx(0.004)  # CPU seconds per step
    assert fig["step_j"] == pytest.approx(0.04) and fig["step_wall_s"] > 0.01
    by = {r["name"]: r for r in prof.rows()}
    assert by["net.1"]["joules_per_step"] == pytest.approx(0.03)
    assert by["net.2"]["joules_per_step"] == pytest.approx(0.01)
    assert by["unattributed"]["joules_per_step"] == pytest.approx(0.0, abs=1e-12)
    assert {r["clock"] for r in by.values()} == {"custom"}
    load = fig["machine_load"]
    assert load["seconds"] > 0 and load["cpus"] >= 1 and load["own_cpus"] is not None
    assert json.loads((Path(trainer.logger.log_dir) / "layer_profile.json").read_text())["clock"] == "custom"
