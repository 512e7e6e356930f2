"""GPU check (run on a machine with an NVIDIA GPU and Zeus installed).

1. EnergyMonitor's per-epoch GPU energy (backends zeus and nvml) against an independent
   ZeusMonitor window around the same epochs (target: within 1%).
2. LayerEnergyProfiler on torchvision's resnet18 (mode="power", so allocate, power and replay
   figures from the same steps): the reference steps' energy it measures against an independent
   Zeus window around the same steps (target: within 2%), and each method per layer type.
   Whether per-module figures are right is benchmarks/layer_ablation.py's job (--device cuda).

Usage: python benchmarks/gpu_check.py [OUT_DIR]   (default: a fresh temporary folder)
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
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
    """The reference for the profiler's step energy: a ZeusMonitor window around its reference steps."""

    def __init__(self, profiler: LayerEnergyProfiler) -> None:
        from zeus.monitor import ZeusMonitor

        self.zm = ZeusMonitor(gpu_indices=[0], cpu_indices=[])
        self.profiler = profiler
        self.joules = 0.0
        self.open = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pass

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # the profiler opens its reference window at the end of the last profiled step, and closes
        # it at the end of the last reference step; this callback runs after it, so it brackets it
        reference = self.profiler.phase(trainer.global_step) == "reference"
        if reference and not self.open:
            self.zm.begin_window("window")
            self.open = True
        elif self.open and not reference:
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
    # 200 profiled + 200 reference steps of ~25 ms: 5 s windows, long enough for the energy counter
    prof = LayerEnergyProfiler(
        warmup_steps=20, profile_steps=200, every_n_steps=None, mode="power", replay_window_s=1.0
    )
    ref = ZeusSteps(prof)
    mon = EnergyMonitor(backend="nvml", output_dir=out / "profile")
    t = trainer([mon, prof, ref], max_epochs=1)
    t0 = time.monotonic()
    t.fit(model(), train_dataloaders=loader(repeat=27))
    rows = prof.rows()
    by_type: dict = {}
    for key in ("allocated_j", "power_j", "replayed_j"):
        for r in rows[:-1]:
            by_type.setdefault(r["layer_type"], {}).setdefault(key, 0.0)
            by_type[r["layer_type"]][key] += r[key] or 0.0
    fig = prof.step_figures()
    return {
        **fig,
        "reference_j": prof.reference_joules,
        "reference_seconds": prof.reference_seconds,
        "zeus_reference_steps_j": ref.joules,
        "diff_vs_zeus_pct": 100 * (prof.reference_joules - ref.joules) / ref.joules if ref.joules else None,
        "by_type": by_type,
        "unattributed_j": rows[-1]["joules_per_step"],
        "wall_s": time.monotonic() - t0,
    }


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="gpu_check_"))
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
    lines += [
        "",
        "2. LayerEnergyProfiler on resnet18 (3x96x96, batch 128), mode=power",
        f"reference steps: {prof['reference_j']:.2f} J in {prof['reference_seconds']:.1f} s; independent Zeus window on "
        f"the same steps {prof['zeus_reference_steps_j']:.2f} J ({prof['diff_vs_zeus_pct']:+.2f}%); step {prof['step_j']:.3f} J, "
        f"{prof['step_s'] * 1000:.1f} ms; source {prof['source']}",
        "J/step by type (allocate / power / replay): "
        + ", ".join(
            f"{t} {v['allocated_j']:.3f}/{v['power_j']:.3f}/{v['replayed_j']:.3f}"
            for t, v in prof["by_type"].items()
        )
        + f"; unattributed {prof['unattributed_j']:.3f}",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    (out / "gpu_check.txt").write_text(text)
    (out / "gpu_check.json").write_text(
        json.dumps({"info": info, "monitor": monitor_rows, "profiler": prof}, indent=2, default=str)
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
