"""GPU check (run on a machine with an NVIDIA GPU and Zeus installed).

1. EnergyMonitor's per-epoch GPU energy (backends zeus and nvml) against an independent
   ZeusMonitor window around the same epochs (target: within 1%).
2. LayerEnergyProfiler on torchvision's resnet18: allocate vs replay per layer type, and the
   profiled steps' energy (layers + unattributed) against an independent Zeus window around the
   same steps and against the epoch's average power x the steps' time (target: within 2%).

Usage: python benchmarks/gpu_check.py OUT_DIR
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_green import EnergyMonitor, LayerEnergyProfiler
from lightning_green.models import LitClassifier, torchvision_model
from lightning_green.records import read_windows

warnings.filterwarnings("ignore")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


class Repeat(Dataset):
    def __init__(self, ds: Dataset, times: int) -> None:
        self.ds, self.times = ds, times

    def __len__(self) -> int:
        return len(self.ds) * self.times

    def __getitem__(self, i: int):
        return self.ds[i % len(self.ds)]


def loader(samples: int = 2048, repeat: int = 30, size: int = 96, batch: int = 128) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(samples, 3, size, size, generator=g)
    y = torch.randint(0, 10, (samples,), generator=g)
    return DataLoader(
        Repeat(TensorDataset(x, y), repeat),
        batch_size=batch,
        shuffle=False,
        num_workers=4,
        pin_memory=True,
        persistent_workers=True,
    )


class ZeusEpochs(pl.Callback):
    """The reference: a separate ZeusMonitor window around each train epoch."""

    def __init__(self) -> None:
        from zeus.monitor import ZeusMonitor

        self.zm = ZeusMonitor(gpu_indices=[0], cpu_indices=[])
        self.joules: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.zm.begin_window(f"epoch{trainer.current_epoch}")

    def on_train_epoch_end(self, trainer, pl_module):
        self.joules.append(self.zm.end_window(f"epoch{trainer.current_epoch}").gpu_energy[0])


class ZeusSteps(pl.Callback):
    """The reference for profiled steps: a ZeusMonitor window around the profiler's window."""

    def __init__(self, profiler: LayerEnergyProfiler) -> None:
        from zeus.monitor import ZeusMonitor

        self.zm = ZeusMonitor(gpu_indices=[0], cpu_indices=[])
        self.profiler = profiler
        self.joules = 0.0
        self.open = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.profiler.is_profiled_step(trainer.global_step) and not self.open:
            self.zm.begin_window("window")
            self.open = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.open and not self.profiler.is_profiled_step(trainer.global_step):
            self.on_train_epoch_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module):  # the profiler closes its window here too
        if self.open:
            self.joules += self.zm.end_window("window").gpu_energy[0]
            self.open = False


def trainer(callbacks, **kw) -> pl.Trainer:
    return pl.Trainer(
        accelerator="gpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks, **kw,
    )  # fmt: skip


def model() -> LitClassifier:
    torch.manual_seed(0)
    return LitClassifier(torchvision_model("resnet18", in_channels=3, num_classes=10, image_size=96))


def monitor_vs_zeus(out: Path) -> list[dict]:
    rows = []
    for backend in ("zeus", "nvml"):
        ref = ZeusEpochs()
        d = out / f"monitor_{backend}"
        # The reference is listed first: it opens before and closes before the monitor's window.
        t = trainer([ref, EnergyMonitor(backend=backend, output_dir=d)], max_epochs=3)
        t.fit(model(), train_dataloaders=loader())
        ours = [w for w in read_windows(d) if w.stage == "train"]
        for w, z in zip(ours, ref.joules, strict=True):
            rows.append({
                "backend": backend, "epoch": w.epoch, "seconds": w.seconds, "monitor_j": w.energy_j,
                "zeus_reference_j": z, "diff_pct": 100 * (w.energy_j - z) / z, "source": w.sources.get("gpu"),
            })  # fmt: skip
    return rows


def profiler_check(out: Path) -> dict:
    res: dict = {}
    for mode in ("allocate", "replay"):
        # ~400 steps of ~25 ms: a 10 s window, long enough for the GPU's energy counter
        prof = LayerEnergyProfiler(
            warmup_steps=20, profile_steps=400, every_n_steps=None, mode=mode, replay_window_s=1.0
        )
        ref = ZeusSteps(prof)
        mon = EnergyMonitor(backend="nvml", output_dir=out / f"profile_{mode}")
        t = trainer([ref, mon, prof], max_epochs=1)
        t0 = time.monotonic()
        t.fit(model(), train_dataloaders=loader(repeat=27))
        rows = prof.rows()
        epoch = next(w for w in read_windows(out / f"profile_{mode}") if w.stage == "train")
        layers_plus_unattr = sum(r["joules_per_step"] for r in rows) * prof.steps
        avg_power_j = epoch.energy_j / epoch.seconds * prof.window_seconds
        res[mode] = {
            "profiled_steps": prof.steps,
            "step_seconds_mean": prof.step_seconds / prof.steps,
            "layers_plus_unattributed_j": layers_plus_unattr,
            "profiler_measured_window_j": prof.window_joules,
            "window_seconds": prof.window_seconds,
            "zeus_reference_steps_j": ref.joules,
            "diff_vs_zeus_pct": 100 * (layers_plus_unattr - ref.joules) / ref.joules,
            "epoch_avg_power_x_window_time_j": avg_power_j,
            "diff_vs_avg_power_pct": 100 * (layers_plus_unattr - avg_power_j) / avg_power_j,
            "types": prof.type_table(),
            "conv_layers": {r["name"]: r["joules_per_step"] for r in rows if r["layer_type"] == "Conv"},
            "source": rows[0]["source"],
            "wall_s": time.monotonic() - t0,
        }
    a, r = res["allocate"]["conv_layers"], res["replay"]["conv_layers"]
    res["replay_over_allocate_conv"] = {k: r[k] / a[k] for k in a if a[k] > 0}
    return res


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "gpu_check_out")
    out.mkdir(parents=True, exist_ok=True)
    import zeus

    info = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "zeus": zeus.__version__,
    }
    print(info, flush=True)
    monitor_rows = monitor_vs_zeus(out)
    lines = [f"GPU check on {info}", "", "1. EnergyMonitor per-epoch GPU energy vs an independent ZeusMonitor window (target within 1%)",
             "backend | epoch | seconds | monitor J | Zeus reference J | diff % | source", "--- | --- | --- | --- | --- | --- | ---"]  # fmt: skip
    for r in monitor_rows:
        lines.append(
            f"{r['backend']} | {r['epoch']} | {r['seconds']:.2f} | {r['monitor_j']:.1f} | {r['zeus_reference_j']:.1f} | {r['diff_pct']:+.3f} | {r['source']}"
        )
    print("\n".join(lines), flush=True)
    prof = profiler_check(out)
    lines += ["", "2. LayerEnergyProfiler on resnet18 (3x96x96, batch 128)", ""]
    for mode in ("allocate", "replay"):
        p = prof[mode]
        lines.append(
            f"{mode}: {p['profiled_steps']} steps of {p['step_seconds_mean'] * 1000:.1f} ms in a {p['window_seconds']:.1f} s window; layers + unattributed "
            f"{p['layers_plus_unattributed_j']:.2f} J; independent Zeus windows on the same steps {p['zeus_reference_steps_j']:.2f} J "
            f"({p['diff_vs_zeus_pct']:+.2f}%); epoch average power x window time {p['epoch_avg_power_x_window_time_j']:.2f} J "
            f"({p['diff_vs_avg_power_pct']:+.2f}%); source {p['source']}"
        )
        lines.append(
            "  "
            + ", ".join(
                f"{t['layer_type']} {t['joules_per_step']:.3f} J/step ({t['share']:.1%})" for t in p["types"]
            )
        )
    ratios = list(prof["replay_over_allocate_conv"].values())
    if ratios:
        lines.append(
            f"replay / allocate per conv layer: median {sorted(ratios)[len(ratios) // 2]:.2f}, min {min(ratios):.2f}, max {max(ratios):.2f}"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    (out / "gpu_check.txt").write_text(text)
    (out / "gpu_check.json").write_text(
        json.dumps({"info": info, "monitor": monitor_rows, "profiler": prof}, indent=2, default=str)
    )


if __name__ == "__main__":
    main()
