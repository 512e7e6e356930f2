"""Everything lightning-green still has to prove on a GPU, in one command (about 8 minutes on an H200).

Six parts, run in the order below, each in its own try/except with a time cap; each writes
``part<N>_<key>.json`` as it finishes and rewrites ``summary.txt`` / ``summary.json`` (the GPU's
name and driver, each part's status, headline and figures), so a failure or an overrun loses only
that part:

6. ``shared_gpu``: two processes train on one GPU at once, each with
   ``EnergyMonitor(attribution="auto")`` (the GPU's counter split by NVML's per-process
   utilisation, :mod:`lightning_green.energy.gpu_share`). Each job's attributed dynamic energy
   together against its dynamic energy alone (target within 15%); the jobs' energies together
   against a separate NVML reader's energy over the union of their windows (target [0.90, 1.05]);
   a lone job against the reader over its windows (target >= 0.99). Runs first, while this process
   holds no CUDA context, so that the jobs are alone on the GPU.
3. ``forecast``: EnergyMonitor's forecast of the fit's energy inside and after epoch 1 on the
   project's transformer against the fit's final energy (target within 5% after epoch 1); the
   first fit with CUDA cold (warm-up: context, cuBLAS, allocator), the second warm.
1. ``monitor_vs_reader``: EnergyMonitor's windows (train epochs of seconds, validation runs of a
   tenth of that) with background sampling (the default) and with ``sync_reads=True``, against a
   separate process that reads ``nvmlDeviceGetTotalEnergyConsumption`` in a tight loop with
   timestamps (target within 1% for windows of seconds); also the counter's update period.
2. ``edge_cost``: the training thread's time per window edge, sampled vs ``sync_reads``, beside one
   raw energy read, one power read and one device sync; EnergyMonitor's time in its hooks per
   epoch both ways (target <= 0.2 ms per edge sampled).
5. ``paper_rq2``: the paper's 2x2x2 design (linear {3, 7} x conv {1, 4} x ReLU {absent, present})
   on total and dynamic energy, beside the paper's figures (``benchmarks/paper_rq2_gpu.py``).
4. ``layer_ablation``: LayerEnergyProfiler's per-module energy against ablation
   (``benchmarks/layer_ablation.py``; target within 10% on a GPU), once per case and precision:
   the CNN and the transformer in bf16-mixed, then in fp32, then the ResNet in both.

How the sizes were chosen (``GPU`` below). GPU time is lent 15 minutes a session, machine start
and transfers included, in calls of at most 10 minutes; so one call, and the suite's budget is 8
minutes (``--budget-s 480``; each part's cap is in ``GPU.caps``). No GPU was lent while it was
written, so the sizes are estimates, not measurements:

- Windows must be long against the energy counter's update period (about 0.1 s on an H200: one
  update was ~29 J at ~260 W in ``results/archive/gpu_h200_run1``; part 1 measures it), so the
  windows compared last 1-3 s, a few of each.
- Parts 1-3 and 6 train the project's transformer (width 256, 3x32x32 inputs in patches of 4, so
  64 tokens, batch 256, fp32): about 77 GFLOP a block per step, roughly 6 ms a step at depth 4 on
  an H200's ~60 TFLOP/s of fp32 (no TF32), so 250-300 steps make a 1.5-2 s epoch. Part 3: 2 fits
  x 5 epochs (~25 s); part 1: 2 fits x 5 epochs (~25 s); part 2: 200 steps and 4 short fits (~15
  s); part 6: jobs of depth 2 and 6, 4 epochs x 250 steps, about 3 and 9 s alone, 4 processes
  started at once so their imports overlap (~45 s).
- Part 5 keeps ``paper_rq2_gpu.py``'s GPU sizes (300 steps of batch 128, both data shapes): 16
  fits of about 4.5 s (~75 s).
- Part 4 keeps ``layer_ablation.py``'s GPU sizes (batch 256, 300 steps) with 2 interleaved
  repeats instead of 3 and 1 s replays instead of 2: per precision, about 8 measured fits of ~5 s
  and 3 profiled fits with ~40 replays for the CNN and the transformer (~100 s); the ResNet, run
  last, has more distinct modules to replay and is what the budget cuts.

Expected total about 7 minutes, part 4 taking what the others leave. A part that runs past its cap
stops there and keeps what it finished; one that would start with less than 40% of its cap left in
the budget is skipped, and says so.

``--dry-run`` runs every part on the CPU with tiny sizes and no NVML (CUDA hidden): where a part
needs a hardware counter, an emulated RAPL package (:class:`lightning_green.testing.EmulatedRapl`,
read as a file by the separate reader) or a slow CPU-time counter stands in and the part says so
(``stand_in``); what needs NVML itself (raw read costs) is skipped with the reason. It checks that
the suite runs, not what a GPU measures.

Usage:
    bash benchmarks/gpu_suite.sh [--out DIR] [--archive FILE.tar.gz] [--budget-s 480] [--parts 6,3,1]
    python benchmarks/gpu_suite.py --dry-run [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@dataclass(frozen=True)
class Sizes:
    """Model, data and run sizes for one kind of run (``GPU`` or ``DRY``)."""

    batch: int
    channels: int
    image: int
    width: int
    heads: int
    patch: int
    precision: str
    forecast: tuple[int, int, int, int]  # depth, steps per epoch, epochs, validation steps per epoch
    reader: tuple[int, int, int, int]  # depth, steps per epoch, epochs, validation steps per epoch
    edges: tuple[int, int]  # depth, steps (one pair of edges per step and meter)
    hooks: tuple[int, int, int, int]  # depth, steps per epoch, epochs, fits per setting
    jobs: tuple[int, int, int, int]  # depth of job A, depth of job B, steps per epoch, epochs
    rq2: list[str]  # paper_rq2_gpu.py's arguments
    ablation: dict[str, list[str]]  # precision -> layer_ablation.py's arguments
    #: (case, precision), in the order run: what matters most first
    ablation_runs: list[tuple[str, str]]
    idle_s: float
    caps: dict[int, float]  # part number -> seconds
    budget_s: float


GPU = Sizes(
    batch=256, channels=3, image=32, width=256, heads=8, patch=4, precision="32-true",
    forecast=(4, 250, 5, 25), reader=(4, 300, 5, 30), edges=(2, 200), hooks=(2, 20, 8, 2),
    jobs=(2, 6, 250, 4),
    rq2=["--steps", "300", "--batch-size", "128", "--baseline-s", "2"],
    ablation={
        "bf16-mixed": ["--device", "cuda", "--precision", "bf16-mixed", "--tag", "gpu_bf16",
                       "--repeats", "2", "--replay-s", "1.0"],
        "32-true": ["--device", "cuda", "--precision", "32-true", "--tag", "gpu_fp32",
                    "--repeats", "2", "--replay-s", "1.0"],
    },
    ablation_runs=[("cnn", "bf16-mixed"), ("transformer", "bf16-mixed"), ("cnn", "32-true"),
                   ("transformer", "32-true"), ("resnet", "bf16-mixed"), ("resnet", "32-true")],
    idle_s=3.0, caps={6: 80, 3: 50, 1: 50, 2: 40, 5: 110, 4: 260}, budget_s=480,
)  # fmt: skip

DRY = Sizes(
    batch=16, channels=1, image=8, width=32, heads=2, patch=2, precision="32-true",
    forecast=(2, 16, 3, 2), reader=(2, 12, 3, 2), edges=(1, 30), hooks=(1, 5, 3, 1),
    jobs=(1, 2, 8, 2),
    rq2=["--steps", "2", "--batch-size", "16", "--baseline-s", "0.2", "--shapes", "fashion_mnist"],
    ablation={
        "bf16-mixed": ["--quick", "--device", "cpu", "--precision", "bf16-mixed", "--tag", "dry_bf16"],
        "32-true": ["--quick", "--device", "cpu", "--precision", "32-true", "--tag", "dry_fp32"],
    },
    ablation_runs=[("cnn", "bf16-mixed"), ("transformer", "32-true")],  # both precisions' code, one case each
    idle_s=0.5, caps={6: 240, 3: 90, 1: 90, 2: 90, 5: 120, 4: 180}, budget_s=900,  # caps: against hangs only
)  # fmt: skip

#: A part stopped at its cap is given this long to unwind before the process is stopped outright
#: (the wrapper then resumes with the next part).
GRACE_S = 45.0
#: A part is not started with less than this share of its cap left in the budget.
MIN_CAP_SHARE = 0.4


# --------------------------------------------------------------------------- counters and readers
def open_counter(spec: str) -> Callable[[], float]:
    """A function returning a cumulative energy counter in joules: ``nvml:<uuid>`` (a GPU's
    ``nvmlDeviceGetTotalEnergyConsumption``, read with pynvml directly, none of our reading code)
    or ``file:<path>`` (a powercap ``energy_uj`` file)."""
    kind, _, arg = spec.partition(":")
    if kind == "nvml":
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByUUID(arg)
        return lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0
    if kind == "file":
        path = Path(arg)
        return lambda: int(path.read_text()) / 1e6
    raise ValueError(f"unknown counter {spec!r}")


def reader_main(spec: str, path: str) -> None:
    """The separate reader: ``(unix time at the read's middle, read seconds, joules)`` per line,
    as fast as the counter reads (NVML's energy read takes about 4 ms on an H200; at most one read
    a millisecond, a file counter every 2 ms), until stdin closes. A failed read is left out."""
    read = open_counter(spec)
    pause = 0.002 if spec.startswith("file:") else 0.001
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    rows: list[str] = []
    with open(path, "w") as f:
        while not stop.is_set():
            t0 = time.time()
            try:
                joules = read()
            except Exception:  # a passing failure (NVML busy, a file being replaced): next read
                time.sleep(0.001)
                continue
            t1 = time.time()
            rows.append(f"{0.5 * (t0 + t1):.6f},{t1 - t0:.6f},{joules:.6f}\n")
            if len(rows) >= 500:
                f.writelines(rows)
                f.flush()
                rows.clear()
            if pause:
                time.sleep(pause)
        f.writelines(rows)


def wait_ready(proc: subprocess.Popen) -> bool:
    """Whether ``proc`` printed its ``ready`` line (anything an import printed before it is skipped)."""
    while proc.stdout is not None:
        line = proc.stdout.readline()
        if not line:
            return False
        if line.strip() == "ready":
            return True
    return False


class Reader:
    """Runs :func:`reader_main` in its own process for the ``with`` block; then :meth:`joules`
    gives the counter's energy between two unix times (linear between the reads around each)."""

    def __init__(self, spec: str, path: Path) -> None:
        self.spec, self.path = spec, path
        self.t: Any = None
        self.j: Any = None
        self.read_s: Any = None

    def __enter__(self) -> Reader:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--reader", self.spec, str(self.path)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if not wait_ready(self.proc):
            self.proc.kill()
            raise RuntimeError(f"the counter reader did not start ({self.spec})")
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        import numpy as np

        text = self.path.read_text() if self.path.exists() else ""
        rows = np.array(
            [[float(x) for x in line.split(",")] for line in text.splitlines() if line.count(",") == 2]
        )
        rows = rows.reshape(-1, 3)
        self.t, self.read_s, self.j = rows[:, 0], rows[:, 1], rows[:, 2]

    def joules(self, start: float, end: float) -> float:
        import numpy as np

        if self.t is None or len(self.t) < 2 or start < self.t[0] or end > self.t[-1]:
            return float("nan")
        return float(np.interp(end, self.t, self.j) - np.interp(start, self.t, self.j))

    def union_joules(self, spans: list[tuple[float, float]]) -> float:
        """Energy over the union of spans (overlaps counted once)."""
        from lightning_green.testing import merge_spans

        return sum(self.joules(s, e) for s, e in merge_spans(spans))

    def stats(self) -> dict[str, Any]:
        """Reads, time per read, and how often the counter's value changed (its update period)."""
        import numpy as np

        if self.t is None or len(self.t) < 3:
            return {"reads": 0 if self.t is None else len(self.t), "read_ms_median": float("nan"),
                    "reads_per_s": None, "update_period_ms_median": None, "update_j_median": None}  # fmt: skip
        changed = self.t[1:][np.diff(self.j) > 0]
        steps = np.diff(self.j)[np.diff(self.j) > 0]
        return {
            "reads": len(self.t),
            "read_ms_median": float(np.median(self.read_s) * 1000),
            "reads_per_s": float(len(self.t) / (self.t[-1] - self.t[0])) if len(self.t) > 1 else None,
            "update_period_ms_median": float(np.median(np.diff(changed)) * 1000)
            if len(changed) > 2
            else None,
            "update_j_median": float(np.median(steps)) if len(steps) else None,
        }


# --------------------------------------------------------------------------- the machine
def gpu_identity() -> tuple[dict[str, Any], str | None]:
    """The GPU that CUDA device 0 is, from NVML alone (no CUDA context in this process), and why
    NVML cannot be read where it cannot."""
    try:
        import pynvml

        from lightning_green.energy.nvml import visible_devices

        pynvml.nvmlInit()
        first = (visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES")) or ["0"])[0]
        handle = (
            pynvml.nvmlDeviceGetHandleByIndex(int(first))
            if first.isdigit()
            else pynvml.nvmlDeviceGetHandleByUUID(first)
        )

        def text(v: Any) -> str:
            return v.decode() if isinstance(v, bytes) else str(v)

        info: dict[str, Any] = {
            "gpu": text(pynvml.nvmlDeviceGetName(handle)),
            "uuid": text(pynvml.nvmlDeviceGetUUID(handle)),
            "driver": text(pynvml.nvmlSystemGetDriverVersion()),
            "nvml": text(pynvml.nvmlSystemGetNVMLVersion()),
            "cuda_driver": pynvml.nvmlSystemGetCudaDriverVersion(),
            "gpus_on_node": pynvml.nvmlDeviceGetCount(),
        }
        for key, fn in (
            ("power_limit_w", lambda: pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000),
            ("power_now_w", lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000),
            ("utilisation_pct", lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
            ("energy_counter_j", lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000),
            ("mig_mode", lambda: pynvml.nvmlDeviceGetMigMode(handle)[0]),
        ):
            try:
                info[key] = fn()
            except Exception as err:
                info[key] = f"unavailable ({err})"
        if not isinstance(info["energy_counter_j"], float):
            return info, f"the GPU has no energy counter ({info['energy_counter_j']})"
        return info, None
    except Exception as err:
        return {"gpu": "none"}, f"NVML cannot be read here ({type(err).__name__}: {err})"


def software() -> dict[str, str]:
    import lightning
    import torch

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": str(torch.version.cuda),
        "lightning": lightning.__version__,
        "cpu_cores": str(os.cpu_count()),
    }


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


# --------------------------------------------------------------------------- the suite's state
@dataclass
class Suite:
    out: Path
    work: Path
    dry: bool
    sizes: Sizes
    device: str  # "cuda" or "cpu"
    machine: dict[str, Any]
    #: The counter a separate reader reads (``nvml:<uuid>`` or, in a dry run, ``file:<path>``).
    counter: str | None = None
    #: Why no counter can be read (the parts that need one are skipped with it).
    no_counter: str | None = None
    #: What stands in for NVML in a dry run.
    stand_in: str | None = None
    backend: str = "nvml"
    rapl_root: str | None = None
    idle_key: str = "gpu:0"
    idle_w: float | None = None
    partial: dict[str, Any] = field(default_factory=dict)

    def monitor(self, output_dir: Path, **kw: Any):
        """An EnergyMonitor reading the suite's counter (NVML, or the emulated package in a dry run)."""
        from lightning_green import EnergyMonitor

        kw.setdefault("baseline_s", 0)
        if self.rapl_root is not None:
            kw.setdefault("rapl_root", self.rapl_root)
        return EnergyMonitor(backend=self.backend, output_dir=output_dir, **kw)


class PartTimeout(BaseException):
    """A part ran past its cap (a BaseException, so that no ``except Exception`` swallows it)."""


@dataclass(frozen=True)
class Part:
    number: int
    key: str
    title: str
    run: Callable[[Suite], dict[str, Any]]


def skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


# --------------------------------------------------------------------------- training helpers
def transformer(s: Suite, depth: int):
    from lightning_green.models import LitClassifier, TransformerClassifier

    z = s.sizes
    return LitClassifier(
        TransformerClassifier(depth=depth, width=z.width, heads=z.heads, patch=z.patch,
                              in_channels=z.channels, image_size=z.image)
    )  # fmt: skip


def loader(s: Suite, steps: int, pool: int = 8, seed: int = 0):
    """``steps`` batches cycling over ``pool`` random batches held on the device (no host copies,
    no loader workers: the GPU's work is the model's)."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    z = s.sizes
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(pool, z.batch, z.channels, z.image, z.image, generator=g).to(s.device)
    y = torch.randint(0, 10, (pool, z.batch), generator=g).to(s.device)

    class Batches(Dataset):
        def __len__(self) -> int:
            return steps

        def __getitem__(self, i: int):
            return x[i % pool], y[i % pool]

    return DataLoader(Batches(), batch_size=None, shuffle=False, num_workers=0)


def trainer(s: Suite, callbacks: list, epochs: int, steps: int, val_steps: int = 0, sanity: int = 0):
    import lightning.pytorch as pl

    return pl.Trainer(
        accelerator="gpu" if s.device == "cuda" else "cpu", devices=1, precision=s.sizes.precision,
        max_epochs=epochs, limit_train_batches=steps, limit_val_batches=val_steps,
        num_sanity_val_steps=sanity, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks,
    )  # fmt: skip


def fit(s: Suite, callbacks: list, depth: int, epochs: int, steps: int, val_steps: int = 0, sanity: int = 0):
    import lightning.pytorch as pl

    pl.seed_everything(0, verbose=False)
    t = trainer(s, callbacks, epochs, steps, val_steps, sanity)
    val = loader(s, val_steps, seed=1) if val_steps else None
    t.fit(transformer(s, depth), train_dataloaders=loader(s, steps), val_dataloaders=val)
    return t


def pct(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:+.2%}"


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def med(xs: list[float]) -> float | None:
    import statistics

    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------------- part 6: one GPU, two jobs
def job_main(spec: dict[str, Any]) -> None:
    """One training job of part 6, in its own process: import, say ``ready``, wait for ``go``, then
    make its CUDA context and train (a job waiting for its turn holds no context on the GPU)."""
    import torch

    if spec["device"] == "cpu":
        torch.set_num_threads(1)
    s = Suite(Path(spec["out"]), Path(spec["out"]), spec["dry"], DRY if spec["dry"] else GPU,
              spec["device"], {}, backend=spec["backend"], rapl_root=spec["rapl_root"])  # fmt: skip
    import lightning.pytorch as pl

    from lightning_green import EnergyMonitor  # noqa: F401 - imported before the start line, not after

    print("ready", flush=True)
    os.dup2(2, 1)  # from here on the log: nobody reads the pipe
    if sys.stdin.readline().strip() != "go":
        return

    def orphaned() -> None:  # the suite is gone: stop rather than train on under later parts
        sys.stdin.read()
        os._exit(3)

    threading.Thread(target=orphaned, daemon=True).start()
    pl.seed_everything(0, verbose=False)
    steps, epochs = s.sizes.jobs[2], s.sizes.jobs[3]
    monitor = s.monitor(Path(spec["out"]), attribution="auto", idle_w={spec["idle_key"]: spec["idle_w"]})
    trainer(s, [monitor], epochs, steps).fit(
        transformer(s, spec["depth"]), train_dataloaders=loader(s, steps)
    )


@dataclass
class Job:
    name: str
    proc: subprocess.Popen
    log: Path
    out: Path

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()


def start_job(s: Suite, name: str, depth: int) -> Job:
    out, log = s.work / f"p6_{name}", s.work / f"p6_{name}.log"
    spec = {"out": str(out), "dry": s.dry, "device": s.device, "backend": s.backend, "rapl_root": s.rapl_root,
            "depth": depth, "idle_key": s.idle_key, "idle_w": s.idle_w}  # fmt: skip
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--job", json.dumps(spec)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)  # fmt: skip
    return Job(name, proc, log, out)


def run_phases(s: Suite, jobs: dict[str, int], phases: list[tuple[str, list[str]]]) -> dict[str, Path]:
    """Start every phase's jobs at once (their imports overlap), then release one phase at a time,
    its jobs together, and wait for them. Returns each ``<phase>_<job>``'s records folder."""
    started: dict[str, Job] = {}
    try:
        for phase, names in phases:
            for n in names:
                started[f"{phase}_{n}"] = start_job(s, f"{phase}_{n}", jobs[n])
        for key, job in started.items():
            if not wait_ready(job.proc):
                job.proc.wait()
                raise RuntimeError(f"job {key} did not start: {tail(job.log)}")
        for phase, names in phases:
            batch = [started[f"{phase}_{n}"] for n in names]
            for job in batch:
                job.send("go")
            for job in batch:
                if job.proc.wait() != 0:
                    raise RuntimeError(f"job {job.name} failed: {tail(job.log)}")
    finally:
        for job in started.values():
            if job.proc.poll() is None:
                job.proc.kill()
                job.proc.wait()
            for pipe in (job.proc.stdin, job.proc.stdout):
                if pipe is not None:
                    pipe.close()
    return {key: job.out for key, job in started.items()}


def tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text()[-chars:]
    except OSError:
        return "(no log)"


def job_figures(out: Path, reader: Reader) -> dict[str, Any]:
    from lightning_green.records import read_summary, read_windows

    windows = [w for w in read_windows(out) if w.stage == "train"]
    summary = read_summary(out)
    spans = [(w.start_time, w.end_time) for w in windows]
    methods = sorted({m for w in windows for m in w.attribution.values()})
    shares = [d.get("share") for w in windows for d in w.domains if d.get("share") is not None]
    return {
        "energy_j": summary["total_j"],
        "dynamic_j": summary["total_dynamic_j"],
        "node_j": summary["total_node_j"],
        "reader_j": sum(reader.joules(a, b) for a, b in spans),
        "seconds": sum(w.seconds for w in windows),
        "spans": spans,
        "attribution": methods,
        "share_median": med(shares) if shares else None,
        "epochs": [{"seconds": w.seconds, "energy_j": w.energy_j, "dynamic_j": w.dynamic_j, "node_j": w.node_j,
                    "attribution": w.attribution} for w in windows],
    }  # fmt: skip


def part_shared_gpu(s: Suite) -> dict[str, Any]:
    if s.counter is None:
        return skipped(f"no NVML: {s.no_counter}")
    if s.idle_w is None:
        return skipped("no idle power was measured at the start")
    da, db, steps, epochs = s.sizes.jobs
    jobs = {"A": da, "B": db}
    alone: dict[str, Any] = {}
    together: dict[str, Any] = {}
    s.partial.update(alone=alone, together=together)
    with Reader(s.counter, s.work / "p6_reader.csv") as reader:
        outs = run_phases(s, jobs, [("alone", ["A"]), ("alone", ["B"]), ("together", ["A", "B"])])
    for name in jobs:
        alone[name] = job_figures(outs[f"alone_{name}"], reader)
        together[name] = job_figures(outs[f"together_{name}"], reader)
    claimed = sum(f["energy_j"] for f in together.values())
    node = reader.union_joules([sp for f in together.values() for sp in f["spans"]])
    lines = [
        f"jobs: transformer depth {da} (A) and {db} (B), width {s.sizes.width}, batch {s.sizes.batch}, "
        f"{epochs} epochs x {steps} steps, {s.sizes.precision}; idle {s.idle_w:.1f} W ({s.idle_key}, measured "
        f"before any CUDA context); EnergyMonitor(attribution='auto')",
        "alone: attributed energy / the separate reader over its windows (target >= 0.99)",
    ]
    data: dict[str, Any] = {"alone": alone, "together": together, "lone_ratio": {}, "dynamic_error": {}}
    for n, f in alone.items():
        ratio = f["energy_j"] / f["reader_j"] if f["reader_j"] else float("nan")
        data["lone_ratio"][n] = ratio
        lines.append(
            f"  {n}: {f['energy_j']:.1f} J of {f['reader_j']:.1f} J -> {ratio:.4f} "
            f"({f['seconds']:.1f} s, {', '.join(f['attribution']) or 'not split'})"
        )
    data["together_ratio"] = claimed / node if node else float("nan")
    lines.append(
        f"together: energies claimed / reader over the union of their windows (target [0.90, 1.05]): "
        f"{claimed:.1f} / {node:.1f} J = {data['together_ratio']:.3f}"
    )
    lines.append(
        "attributed dynamic energy together vs the same job's dynamic energy alone (target within 15%)"
    )
    for n in jobs:
        a, c = alone[n]["dynamic_j"], together[n]["dynamic_j"]
        err = c / a - 1 if a and c is not None else float("nan")
        data["dynamic_error"][n] = err
        lines.append(
            f"  {n}: {c if c is None else round(c, 1)} J together vs {a if a is None else round(a, 1)} J alone "
            f"-> {pct(err)} (share median {fmt(together[n]['share_median'])}, "
            f"{', '.join(together[n]['attribution']) or 'not split'}, {together[n]['seconds']:.1f} s)"
        )
    errs = [abs(e) for e in data["dynamic_error"].values() if e == e]
    headline = (
        f"dynamic together vs alone: {', '.join(f'{n} {pct(e)}' for n, e in data['dynamic_error'].items())} "
        f"(target within 15%); claimed/node {data['together_ratio']:.3f} (target [0.90, 1.05]); lone "
        + ", ".join(f"{n} {r:.4f}" for n, r in data["lone_ratio"].items())
    )
    data["passed"] = bool(errs) and max(errs) <= 0.15 and 0.90 <= data["together_ratio"] <= 1.05
    return {"status": "ran", "headline": headline, "lines": lines, "data": data}


# --------------------------------------------------------------------------- part 3: the forecast
def part_forecast(s: Suite) -> dict[str, Any]:
    import lightning.pytorch as pl

    from lightning_green.records import read_summary, read_windows

    depth, steps, epochs, val_steps = s.sizes.forecast

    class Record(pl.Callback):
        def __init__(self) -> None:
            self.inside: float | None = None
            self.after: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            value = trainer.callback_metrics.get("energy/forecast_fit_j")
            if self.inside is None and trainer.current_epoch == 0 and value is not None:
                self.inside = float(value)

        def on_train_epoch_end(self, trainer, pl_module):
            value = trainer.callback_metrics.get("energy/forecast_fit_j")
            self.after.append(float(value) if value is not None else float("nan"))

    fits: list[dict[str, Any]] = []
    s.partial["fits"] = fits
    labels = ("fit 1 (CUDA cold)", "fit 2 (CUDA warm)") if s.device == "cuda" else ("fit 1", "fit 2")
    for i, label in enumerate(labels):
        d = s.work / f"p3_fit{i + 1}"
        rec = Record()
        fit(s, [s.monitor(d), rec], depth, epochs, steps, val_steps, sanity=2)
        final = read_summary(d)["total_j"]
        train = [w for w in read_windows(d) if w.stage == "train"]
        fits.append({
            "fit": label, "final_j": final, "inside_epoch1_j": rec.inside, "after_epoch_j": rec.after,
            "inside_epoch1_error": (rec.inside - final) / final if rec.inside is not None else None,
            "after_epoch_error": [(f - final) / final for f in rec.after],
            "epoch_s": [w.seconds for w in train], "epoch_j": [w.energy_j for w in train],
        })  # fmt: skip
    lines = [
        f"transformer depth {depth}, width {s.sizes.width}, batch {s.sizes.batch}, {epochs} epochs x {steps} steps, "
        f"{val_steps} validation steps per epoch, 2 sanity steps, {s.sizes.precision}; forecast warm-up: "
        "EnergyMonitor's default (10 batches)",
    ]
    for f in fits:
        lines.append(
            f"  {f['fit']}: final {f['final_j']:.1f} J; forecast inside epoch 1 {pct(f['inside_epoch1_error'])}; "
            "after epoch "
            + "  ".join(f"{i + 1}: {pct(e)}" for i, e in enumerate(f["after_epoch_error"]))
            + f"; epochs {', '.join(f'{x:.2f}' for x in f['epoch_s'])} s"
        )
    first = {f["fit"]: f["after_epoch_error"][0] for f in fits if f["after_epoch_error"]}
    headline = (
        "forecast after epoch 1: "
        + ", ".join(f"{k} {pct(e)}" for k, e in first.items())
        + " (target within 5%)"
    )
    data = {"fits": fits, "passed": bool(first) and max(abs(e) for e in first.values()) <= 0.05}
    return {"status": "ran", "headline": headline, "lines": lines, "data": data}


# --------------------------------------------------------------------------- part 1: monitor vs reader
def part_monitor_vs_reader(s: Suite) -> dict[str, Any]:
    if s.counter is None:
        return skipped(f"no NVML: {s.no_counter}")
    from lightning_green.records import read_windows

    depth, steps, epochs, val_steps = s.sizes.reader
    rows: list[dict[str, Any]] = []
    s.partial["windows"] = rows
    with Reader(s.counter, s.work / "p1_reader.csv") as reader:
        dirs = {}
        for mode in ("sampled", "sync_reads"):
            dirs[mode] = s.work / f"p1_{mode}"
            # The whole device's figure, as the reader sees it (no split among processes)
            monitor = s.monitor(dirs[mode], sync_reads=mode == "sync_reads", attribution="device")
            fit(s, [monitor], depth, epochs, steps, val_steps)
    for mode, d in dirs.items():
        for w in read_windows(d):
            ref = reader.joules(w.start_time, w.end_time)
            rows.append({
                "mode": mode, "stage": w.stage, "epoch": w.epoch, "seconds": w.seconds, "monitor_j": w.energy_j,
                "reader_j": ref, "error": (w.energy_j - ref) / ref if ref else float("nan"),
                "source": w.sources.get("gpu") or w.sources.get("cpu"),
            })  # fmt: skip
    stats = reader.stats()
    lines = [
        f"transformer depth {depth}, batch {s.sizes.batch}, {epochs} epochs x {steps} steps + {val_steps} validation "
        f"steps; separate reader: {stats['reads']} reads, {stats['read_ms_median']:.2f} ms each, counter updated "
        f"every {fmt(stats['update_period_ms_median'])} ms (median step {fmt(stats['update_j_median'])} J)",
        "mode | stage | epoch | seconds | monitor J | reader J | error",
    ]
    lines += [
        f"{r['mode']} | {r['stage']} | {r['epoch']} | {r['seconds']:.3f} | {r['monitor_j']:.2f} | {r['reader_j']:.2f} | "
        f"{pct(r['error'])}"
        for r in rows
    ]
    summary: dict[str, Any] = {}
    for mode in dirs:
        for stage in ("train", "validate"):
            errs = [
                abs(r["error"])
                for r in rows
                if r["mode"] == mode and r["stage"] == stage and r["error"] == r["error"]
            ]
            secs = [r["seconds"] for r in rows if r["mode"] == mode and r["stage"] == stage]
            if errs:
                summary[f"{mode}_{stage}"] = {"median_abs_error": med(errs), "max_abs_error": max(errs),
                                              "windows": len(errs), "median_s": med(secs)}  # fmt: skip
    headline = "; ".join(
        f"{k}: median |error| {v['median_abs_error']:.3%}, max {v['max_abs_error']:.3%} ({v['windows']} windows of "
        f"~{v['median_s']:.2f} s)"
        for k, v in summary.items()
    )
    train = summary.get("sampled_train")
    data = {"windows": rows, "reader": stats, "summary": summary,
            "passed": bool(train) and train["max_abs_error"] <= 0.01}  # fmt: skip
    return {"status": "ran", "headline": headline + " (target within 1% for windows of seconds)",
            "lines": lines, "data": data}  # fmt: skip


# --------------------------------------------------------------------------- part 2: edge cost
def part_edge_cost(s: Suite) -> dict[str, Any]:
    import lightning.pytorch as pl
    import torch

    depth, steps = s.sizes.edges
    if s.dry:
        from common import SlowCpuCounter

        meters = {"sampled": SlowCpuCounter(True), "sync_reads": SlowCpuCounter(False)}
    elif s.counter is None:
        return skipped(f"no NVML: {s.no_counter}")
    else:
        from lightning_green.energy import NvmlMeter

        meters = {
            "sampled": NvmlMeter([0], sync=False),
            "sync_reads": NvmlMeter([0], sync=False, sync_reads=True),
        }
    sync = torch.cuda.synchronize if s.device == "cuda" else (lambda: None)
    costs: dict[str, list[float]] = {f"{m}_{e}": [] for m in meters for e in ("begin", "end")}
    costs["sync"] = []  # the wait for the step's queued work at the edge (not the meters' cost)
    s.partial["edge_seconds"] = costs

    class Edges(pl.Callback):
        """Every training step is a window of each meter; the step's queued work is waited for
        first (timed apart), then each edge is timed alone, alternating which meter goes first."""

        def _edge(self, batch_idx: int, which: str) -> None:
            t0 = time.perf_counter()
            sync()
            costs["sync"].append(time.perf_counter() - t0)
            order = list(meters) if batch_idx % 2 == 0 else list(meters)[::-1]
            for name in order:
                t0 = time.perf_counter()
                if which == "begin":
                    meters[name].begin_window("step", sync=False)
                else:
                    meters[name].end_window("step", sync=False)
                costs[f"{name}_{which}"].append(time.perf_counter() - t0)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._edge(batch_idx, "begin")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self._edge(batch_idx, "end")

    try:
        fit(s, [Edges()], depth, 1, steps)
    finally:
        for m in meters.values():
            m.close()
    ms = {k: (med(v[5:]) or 0.0) * 1000 for k, v in costs.items()}
    p95 = {k: sorted(v[5:])[int(0.95 * (len(v) - 6))] * 1000 for k, v in costs.items() if len(v) > 6}
    raw = raw_costs(s)
    hooks = hook_costs(s)
    lines = [
        f"{steps} training steps (transformer depth {depth}), a window of each meter around every step:",
        "  per edge on the training thread, median (p95): "
        + ", ".join(f"{k} {ms[k]:.3f} ms ({p95.get(k, float('nan')):.3f})" for k in ms),
        f"  raw: {raw}",
        "  EnergyMonitor's time in its hooks per epoch: "
        + ", ".join(
            f"{k} {v['ms_per_epoch']:.2f} ms ({v['epoch_ms']:.0f} ms epochs)" for k, v in hooks.items()
        ),
    ]
    sampled = max(ms["sampled_begin"], ms["sampled_end"])
    headline = (
        f"per edge: sampled {ms['sampled_begin']:.3f}/{ms['sampled_end']:.3f} ms (begin/end; target <= 0.2), "
        f"sync_reads {ms['sync_reads_begin']:.3f}/{ms['sync_reads_end']:.3f} ms (the edge's sync waited "
        f"{ms['sync']:.3f} ms for queued work); "
        "hooks per epoch " + ", ".join(f"{k} {v['ms_per_epoch']:.2f} ms" for k, v in hooks.items())
    )
    data = {"edge_ms": ms, "edge_ms_p95": p95, "raw": raw, "hooks": hooks, "passed": sampled <= 0.2}
    out = {"status": "ran", "headline": headline, "lines": lines, "data": data}
    if s.dry:
        out["stand_in"] = (
            "a counter read taking 4 ms over this process's CPU time (benchmarks/common.py's SlowCpuCounter)"
        )
    return out


def raw_costs(s: Suite) -> dict[str, Any]:
    """One NVML energy read, one power read, one device sync with nothing queued (milliseconds)."""
    if s.dry or s.counter is None:
        return {"skipped": f"no NVML: {s.no_counter or 'a dry run reads none'}"}
    import pynvml
    import torch

    handle = pynvml.nvmlDeviceGetHandleByUUID(s.machine["uuid"])
    out = {}
    for key, fn, n in (
        ("energy_read_ms", lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle), 50),
        ("power_read_ms", lambda: pynvml.nvmlDeviceGetPowerUsage(handle), 200),
        ("sync_ms", torch.cuda.synchronize, 200),
    ):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[key] = round((med(times) or 0.0) * 1000, 4)
    return out


def hook_costs(s: Suite) -> dict[str, dict[str, float]]:
    """EnergyMonitor's own time (inside its hooks) per epoch, sampled vs sync_reads, interleaved:
    the median over a fit's epochs from one epoch start to the next, so neither the set-up nor the
    last window's wait for the sample after it (``settle``, up to one sampling interval) counts."""
    import lightning.pytorch as pl
    from common import timed_callback

    from lightning_green import EnergyMonitor

    per_epoch = ("on_train_epoch_start", "on_train_batch_end", "on_train_epoch_end", "on_validation_start",
                 "on_validation_epoch_end", "on_validation_end")  # fmt: skip
    TimedMonitor = timed_callback(EnergyMonitor, per_epoch)

    class Marks(pl.Callback):  # after the monitor: its hook time so far at each epoch's start
        def __init__(self, monitor: Any) -> None:
            self.monitor, self.marks = monitor, []
            self.wall: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.marks.append(self.monitor.hook_seconds)
            self.wall.append(time.perf_counter())

    depth, steps, epochs, fits = s.sizes.hooks
    seconds: dict[str, list[float]] = {"sampled": [], "sync_reads": []}
    epoch_s: list[float] = []
    for i in range(fits):
        for mode in list(seconds) if i % 2 == 0 else list(seconds)[::-1]:
            d = s.work / f"p2_hooks_{mode}_{i}"
            meter = None
            if s.dry:
                from common import SlowCpuCounter

                meter = SlowCpuCounter(mode == "sampled")
                mon = TimedMonitor(output_dir=d, meter=meter, baseline_s=0, attribution="device")
            else:
                mon = TimedMonitor(backend="nvml", output_dir=d, sync_reads=mode == "sync_reads", baseline_s=0,
                                   attribution="device")  # fmt: skip
            marks = Marks(mon)
            try:
                fit(s, [mon, marks], depth, epochs, steps)
            finally:
                if meter is not None:
                    meter.close()
            seconds[mode] += [b - a for a, b in zip(marks.marks, marks.marks[1:], strict=False)]
            epoch_s += [b - a for a, b in zip(marks.wall, marks.wall[1:], strict=False)]
    return {
        m: {"ms_per_epoch": (med(v) or 0.0) * 1000, "epoch_ms": (med(epoch_s) or 0.0) * 1000}
        for m, v in seconds.items()
    }


# --------------------------------------------------------------------------- part 5: the 2x2x2 design
def part_paper_rq2(s: Suite) -> dict[str, Any]:
    import paper_rq2_gpu

    args = [*s.sizes.rq2, "--tag", "suite_dry" if s.dry else "suite", "--out", str(s.out)]
    data = paper_rq2_gpu.main(args)
    effects = {k: v for k, v in data.items() if k.endswith(("_energy_j", "_dynamic_j"))}
    lines = [f"python benchmarks/paper_rq2_gpu.py {' '.join(args)}  (full table: paper_rq2_gpu_*.txt)"]
    parts = []
    for key, v in effects.items():
        label = "total" if key.endswith("_energy_j") else "dynamic"
        shape = key.removesuffix("_energy_j").removesuffix("_dynamic_j")
        eta = v["eta"]
        text = (
            f"{shape} {label}: 4 -> 1 conv cuts {v['cut_pct']:.1f}%, eta^2 conv {eta.get('conv', float('nan')):.3f} / "
            f"linear {eta.get('linear', float('nan')):.3f} / ReLU {eta.get('activation', float('nan')):.3f}"
        )
        lines.append("  " + text)
        parts.append(text)
    sources = sorted({r["source"] for r in data["rows"]})
    lines.append(f"  sources: {'; '.join(sources)}")
    headline = "; ".join(parts) or "no effects computed"
    return {
        "status": "ran",
        "headline": headline,
        "lines": lines,
        "data": {"effects": effects, "rows": data["rows"]},
    }


# --------------------------------------------------------------------------- part 4: the ablation
def part_layer_ablation(s: Suite) -> dict[str, Any]:
    """``layer_ablation.py`` once per (case, precision) on a GPU, the two main cases in both
    precisions first, so that what the budget cuts is the least needed; each run apart."""
    import layer_ablation

    results: dict[str, dict[str, Any]] = {}
    s.partial["precisions"] = results
    lines, failures = [], []
    for case, precision in s.sizes.ablation_runs:
        args = list(s.sizes.ablation[precision])
        i = args.index("--tag")  # its own files: layer_ablation_<tag>_<case>.*
        args[i + 1] = f"{args[i + 1]}_{case}"
        args += ["--only", case]
        # on a GPU the suite's meter (NVML); in a dry run the CPU-time estimate (an emulated package
        # shared with the whole machine would only add noise to a check that the code runs)
        argv = [*args, *([] if s.dry else ["--backend", s.backend]), "--out", str(s.out)]
        lines.append(f"python benchmarks/layer_ablation.py {' '.join(argv)}")
        try:
            r = layer_ablation.main(argv)
            if not r["cases"]:
                raise ValueError(f"layer_ablation.py has no case {case!r}")
        except Exception as err:  # one case failing keeps the others
            failures.append(f"{case} {precision}: {type(err).__name__}: {err}"[:500])
            lines.append(f"  failed: {failures[-1]}")
            continue
        for name, c in r["cases"].items():
            row = {"measured_drop_j": c["measured_drop_j"], "measured_drop_range_j": c["measured_drop_range_j"],
                   "errors": {m: v["error"] for m, v in c["modes"].items()},
                   "profiler_step_vs_monitor": c["profiler_step_vs_monitor"], "step_s": c["step_s"]}  # fmt: skip
            results.setdefault(precision, {})[name] = row
            lines.append(
                f"  {precision} {name}: measured drop {row['measured_drop_j']:.4f} J/step; errors "
                + ", ".join(f"{m} {pct(e)}" for m, e in row["errors"].items())
                + f"; step {row['step_s'] * 1000:.1f} ms"
            )
    worst: dict[str, dict[str, float]] = {}
    for precision, by_case in results.items():
        for row in by_case.values():
            for mode, e in row["errors"].items():
                if e is not None and e == e:
                    w = worst.setdefault(precision, {})
                    w[mode] = max(w.get(mode, 0.0), abs(e))
    headline = "; ".join(
        f"{p} ({', '.join(results[p])}): worst |error| " + ", ".join(f"{m} {e:.1%}" for m, e in w.items())
        for p, w in worst.items()
    )
    data = {"precisions": results, "worst_error_by_mode": worst, "failures": failures,
            "passed": bool(worst) and all(min(w.values()) <= 0.10 for w in worst.values())}  # fmt: skip
    if not results:
        raise RuntimeError("no ablation ran: " + "; ".join(failures))
    return {
        "status": "ran",
        "headline": (headline or "no figures")
        + " (target within 10% on a GPU)"
        + (f"; {len(failures)} run(s) failed" if failures else ""),
        "lines": lines,
        "data": data,
    }


PARTS = [
    Part(6, "shared_gpu", "two processes sharing one GPU: attributed dynamic energy vs alone", part_shared_gpu),
    Part(3, "forecast", "the forecast after epoch 1 on the transformer vs the final energy", part_forecast),
    Part(1, "monitor_vs_reader", "EnergyMonitor (background sampling) vs a separate NVML reader, per window",
         part_monitor_vs_reader),
    Part(2, "edge_cost", "the training thread's cost per window edge, sampled vs sync_reads", part_edge_cost),
    Part(5, "paper_rq2", "the study's 2x2x2 design on total and dynamic energy", part_paper_rq2),
    Part(4, "layer_ablation", "per-layer energy against ablation, bf16-mixed and fp32", part_layer_ablation),
]  # fmt: skip


# --------------------------------------------------------------------------- running the parts
def _alarm(signum: int, frame: Any) -> None:
    raise PartTimeout


def run_part(s: Suite, state: dict[str, Any], part: Part, deadline: float, archive: Path | None) -> None:
    key = str(part.number)
    cap = min(s.sizes.caps[part.number], deadline - time.time())
    record: dict[str, Any] = {"part": part.number, "key": part.key, "title": part.title}
    if cap < MIN_CAP_SHARE * s.sizes.caps[part.number]:
        record.update(
            skipped(f"out of the suite's time budget ({max(0.0, deadline - time.time()):.0f} s left)")
        )
        finish_part(s, state, record, archive)
        return
    record.update(status="running", cap_s=round(cap, 1), started=time.time())
    state["parts"][key] = record
    write_summary(s, state, archive)
    print(f"\n=== part {part.number} ({part.key}): {part.title}; cap {cap:.0f} s", flush=True)
    s.partial = {}
    t0 = time.monotonic()

    def hung() -> None:  # stuck where no signal reaches (a C call): record it, stop; the wrapper resumes
        record.update(status="timeout", reason=f"still running {GRACE_S:.0f} s past its cap of {cap:.0f} s "
                      "(stuck outside Python); the suite process was stopped", data=s.partial)  # fmt: skip
        finish_part(s, state, record, archive, t0)
        os._exit(75)

    watchdog = threading.Timer(cap + GRACE_S, hung)
    watchdog.daemon = True
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, cap)
    watchdog.start()
    try:
        result = part.run(s)
    except PartTimeout:
        result = {"status": "timeout", "reason": f"stopped at its cap of {cap:.0f} s", "data": s.partial}
    except Exception as err:
        result = {"status": "failed", "reason": f"{type(err).__name__}: {err}"[:2000],
                  "traceback": traceback.format_exc()[-6000:], "data": s.partial}  # fmt: skip
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        watchdog.cancel()
    if s.stand_in and result.get("status") == "ran" and part.number in (1, 6):
        result.setdefault("stand_in", s.stand_in)
    record.update(result)
    finish_part(s, state, record, archive, t0)


def finish_part(
    s: Suite, state: dict[str, Any], record: dict[str, Any], archive: Path | None, t0: float | None = None
) -> None:
    if t0 is not None:
        record["seconds"] = round(time.monotonic() - t0, 1)
    record.pop("started", None)
    state["parts"][str(record["part"])] = record
    (s.out / f"part{record['part']}_{record['key']}.json").write_text(
        json.dumps(record, indent=2, default=str)
    )
    write_summary(s, state, archive)
    status = record["status"] + (f": {record['reason']}" if record.get("reason") else "")
    print(f"=== part {record['part']} ({record['key']}) {status}\n{record.get('headline', '')}", flush=True)


def brief(record: dict[str, Any]) -> dict[str, Any]:
    """A part's record for summary.json: everything but the bulky data (its part file has that)."""
    out = {k: v for k, v in record.items() if k not in ("data", "traceback", "lines")}
    if isinstance(record.get("data"), dict) and "passed" in record["data"]:
        out["passed"] = record["data"]["passed"]
    return out


#: Not on the GPU machine's image: nothing the suite runs may import them.
ABSENT_THERE = ("hydra", "omegaconf", "ray", "zeus")


def write_summary(s: Suite, state: dict[str, Any], archive: Path | None) -> None:
    state["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    state["imported_but_absent_on_gpu_machine"] = sorted(
        {m.split(".")[0] for m in sys.modules} & set(ABSENT_THERE)
    )
    state["wall_s"] = round(time.time() - state["started_at"], 1)
    summary = {**{k: v for k, v in state.items() if k != "parts"},
               "parts": {k: brief(v) for k, v in state["parts"].items()}}  # fmt: skip
    (s.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    m = s.machine
    lines = [
        "lightning-green GPU suite"
        + (" -- DRY RUN on the CPU: checks the suite runs, measures no GPU" if s.dry else ""),
        f"GPU: {m.get('gpu')} (driver {m.get('driver', '-')}, NVML {m.get('nvml', '-')}, CUDA driver "
        f"{m.get('cuda_driver', '-')}, power limit {m.get('power_limit_w', '-')} W, uuid {m.get('uuid', '-')})",
        f"software: {state.get('software')}",
        f"started {state['started']}, {state['wall_s']:.0f} s so far of a {state['budget_s']:.0f} s budget; idle "
        f"power {state.get('idle_w')} ({state.get('idle_how')})",
        f"command: {state['command']}",
    ]
    if s.no_counter:
        lines.append(f"counter: none ({s.no_counter})")
    if s.stand_in:
        lines.append(f"stand-in for NVML: {s.stand_in}")
    for part in PARTS:
        r = state["parts"].get(str(part.number))
        if r is None:
            chosen = part.number in state.get("parts_selected", [part.number])
            lines += [
                "",
                f"[{part.number}] {part.key}: {'not run yet' if chosen else 'not selected (--parts)'} -- {part.title}",
            ]
            continue
        status = r["status"] + (f": {r['reason']}" if r.get("reason") else "")
        took = f", {r['seconds']:.0f} s" if "seconds" in r else ""
        lines += ["", f"[{part.number}] {part.key} -- {part.title}: {status}{took}"]
        if r.get("stand_in"):
            lines.append(f"  stand-in: {r['stand_in']}")
        if r.get("headline"):
            lines.append(f"  {r['headline']}")
        if isinstance(r.get("data"), dict) and "passed" in r["data"]:
            lines.append(f"  target met: {r['data']['passed']}")
        lines += [f"    {line}" for line in r.get("lines", [])]
    (s.out / "summary.txt").write_text("\n".join(lines) + "\n")
    if archive is not None:
        pack(s, state, archive)


def pack(s: Suite, state: dict[str, Any], archive: Path) -> None:
    """The results folder as one .tar.gz (the device machine sends back at most 8 files), with the
    summary beside it; written aside and renamed, so a run cut short still leaves a whole archive."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(s.out, arcname=state["name"])
    os.replace(tmp, archive)
    for name in ("summary.txt", "summary.json"):
        shutil.copyfile(s.out / name, archive.parent / name)


# --------------------------------------------------------------------------- set-up
def measure_idle(s: Suite) -> tuple[float | None, str]:
    """Idle power of the counter's device over ``idle_s``, before this process makes a CUDA context."""
    if s.counter is None:
        return None, f"not measured: {s.no_counter}"
    read = open_counter(s.counter)
    t0, e0 = time.monotonic(), read()
    time.sleep(s.sizes.idle_s)
    t1, e1 = time.monotonic(), read()
    how = f"{s.counter.split(':')[0]} counter over {t1 - t0:.1f} s before any CUDA context of this process"
    util = s.machine.get("utilisation_pct")
    if isinstance(util, int) and util > 5:
        how += f"; the GPU was {util}% utilised at the start (another process?)"
    return (e1 - e0) / (t1 - t0), how


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny sizes, no NVML: checks the suite runs (< 1 min)"
    )
    p.add_argument("--out", type=Path, default=None, help="results folder (default: a fresh temporary one)")
    p.add_argument(
        "--archive",
        type=Path,
        default=None,
        help="also keep FILE.tar.gz of the folder (and the summary beside it) up to date",
    )
    p.add_argument(
        "--budget-s", type=float, default=None, help="the whole suite's seconds (default: GPU 480, dry 900)"
    )
    p.add_argument(
        "--parts", default=None, help="comma-separated part numbers to run, e.g. 6,3,1 (default: all)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out: parts already recorded are kept"
    )
    p.add_argument("--reader", nargs=2, metavar=("COUNTER", "FILE"), help=argparse.SUPPRESS)
    p.add_argument("--job", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def suite(args: argparse.Namespace, command: str) -> Suite:
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch: the dry run never touches a GPU
        info: dict[str, Any] = {"gpu": "none (dry run)"}
        no_counter: str | None = "dry run: NVML is not read"
    else:
        info, no_counter = gpu_identity()
        if no_counter is not None:
            import torch

            if not torch.cuda.is_available():
                raise SystemExit(f"no GPU ({no_counter}); `--dry-run` runs the suite on the CPU")
            if info["gpu"] == "none":
                info["gpu"] = torch.cuda.get_device_name(0)
    sizes = DRY if args.dry_run else GPU
    if args.budget_s:
        sizes = dataclasses.replace(sizes, budget_s=args.budget_s)
    if args.out is None:
        name = "dry-run" if args.dry_run else slug(info["gpu"])
        args.out = Path(tempfile.mkdtemp(prefix=f"gpu_suite_{name}_"))
    elif args.out.exists() and any(args.out.iterdir()) and not args.resume:
        raise SystemExit(
            f"{args.out} is not empty: pass --resume to continue the run there, or another --out"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    s = Suite(args.out, Path(tempfile.mkdtemp(prefix="gpu_suite_work_")), args.dry_run, sizes,
              "cpu" if args.dry_run else "cuda", info, no_counter=None if args.dry_run else no_counter)  # fmt: skip
    if not args.dry_run and no_counter is None:
        s.counter = f"nvml:{info['uuid']}"
    elif not args.dry_run:
        # No NVML energy counter: what needs it is skipped; the rest runs with what EnergyMonitor finds
        s.backend = "auto"
    return s


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.reader:
        reader_main(*args.reader)
        return 0
    if args.job:
        job_main(json.loads(args.job))
        return 0
    command = "python benchmarks/gpu_suite.py " + " ".join(argv if argv is not None else sys.argv[1:])
    s = suite(args, command)
    sys.path.insert(0, str(HERE))  # paper_rq2_gpu, layer_ablation, common
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning_green"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if s.dry:
        import torch

        torch.set_num_threads(1)
    state_file = s.out / "summary.json"
    if args.resume and state_file.exists():
        state = json.loads(state_file.read_text())
        for k, brief_record in list(state["parts"].items()):
            full = s.out / f"part{k}_{brief_record['key']}.json"
            if full.exists():  # finished (or recorded by the watchdog): its full record
                state["parts"][k] = json.loads(full.read_text())
            # else still "running": the process died in it, and it is recorded as failed below
        state.setdefault("resumed", []).append(time.strftime("%Y-%m-%d %H:%M:%S"))
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        state = {
            "name": f"{stamp}_{'dry-run' if s.dry else slug(s.machine['gpu'])}",
            "dry_run": s.dry, "machine": s.machine, "software": software(), "command": command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "started_at": time.time(),
            "budget_s": s.sizes.budget_s, "sizes": s.sizes.__dict__, "parts": {},
        }  # fmt: skip
    deadline = state["started_at"] + state["budget_s"]
    with stand_in_counter(s):
        if "idle_w" not in state:
            state["idle_w"], state["idle_how"] = measure_idle(s)
        s.idle_w = state["idle_w"]
        wanted = {int(x) for x in args.parts.split(",")} if args.parts else {p.number for p in PARTS}
        state["parts_selected"] = sorted(wanted | {int(k) for k in state["parts"]})
        for part in PARTS:
            prior = state["parts"].get(str(part.number))
            if prior is not None and prior.get("status") == "running":
                prior.update(status="failed", reason="the suite process died during this part (see its log)")
                finish_part(s, state, prior, args.archive)
                continue
            if prior is not None or part.number not in wanted:
                continue
            run_part(s, state, part, deadline, args.archive)
    write_summary(s, state, args.archive)
    print("\n" + (s.out / "summary.txt").read_text())
    print(f"written to {s.out}" + (f" and {args.archive}" if args.archive else ""))
    shutil.rmtree(s.work, ignore_errors=True)
    return 0


@contextmanager
def stand_in_counter(s: Suite) -> Iterator[None]:
    """In a dry run, an emulated RAPL package stands in for the GPU's counter: the separate reader
    reads its file, the monitors read it through ``backend="rapl"``."""
    if not s.dry:
        yield
        return
    from lightning_green.testing import EmulatedRapl

    with EmulatedRapl(s.work / "powercap", idle_w=10.0, watts_per_core=15.0) as rapl:
        s.counter = f"file:{rapl.root / 'intel-rapl:0' / 'energy_uj'}"
        s.backend, s.rapl_root, s.idle_key = "rapl", str(rapl.root), "cpu:0"
        s.stand_in = (
            "an emulated RAPL package (lightning_green.testing.EmulatedRapl: 10 W + 15 W per busy core of this "
            "machine) read by EnergyMonitor(backend='rapl') and, as a file, by the separate reader"
        )
        yield


if __name__ == "__main__":
    sys.exit(main())
