"""EnergyMonitor's cost to training (target: <= 0.2 ms per window edge on the training thread with a
slow counter; overhead <= 1% of fit time for epochs of 100 ms or more).

Part 1, a slow counter: a counter whose every read takes 4 ms (as NVML's energy read on an H200),
over a real signal (this process's CPU time x 12 W), read two ways on the same training windows:
sampled in the background and interpolated at the edges (the default), and read directly at the
edge (``sync_reads=True``). Prints the training thread's time per edge for each, the sampled
windows' error against the direct reads, and the fit time of short epochs with each.

Part 2, the default meter on this machine (the CPU-time estimate): same model, data and seed;
runs interleaved (with/without alternate first) so drift hits both. Two workloads: digits (tiny
~60 ms epochs, the worst case for a per-epoch cost) and 32x32 synthetic images (epochs of about a
second).
Usage: python benchmarks/monitor_overhead.py [--repeats 7] [--epochs 30 4] [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings

import lightning.pytorch as pl
import torch
from common import SlowCpuCounter, add_out_argument, interleaved, machine, median, save, timed_callback

from lightning_green import EnergyMonitor
from lightning_green.data import DigitsDataModule, SyntheticDataModule
from lightning_green.energy.base import CounterMeter
from lightning_green.models import LitClassifier, SimpleCNN

WORKLOADS = {
    # name: (datamodule factory, model factory, training samples per epoch)
    "digits": (
        lambda: DigitsDataModule(batch_size=64),
        lambda: SimpleCNN(conv_layers=2, linear_layers=2),
        1259,
    ),
    "synthetic32": (
        lambda: SyntheticDataModule(samples=4096, in_channels=3, image_size=32, batch_size=64),
        lambda: SimpleCNN(conv_layers=3, linear_layers=2, base_channels=4, in_channels=3, image_size=32),
        4096 - 2 * 614,
    ),
}


HOOKS = (
    "setup", "teardown", "on_train_start", "on_train_epoch_start", "on_train_batch_end", "on_train_epoch_end",
    "on_validation_start", "on_validation_epoch_end", "on_validation_end",
)  # fmt: skip
TimedMonitor = timed_callback(EnergyMonitor, HOOKS)
HOOK_SHARES: dict[str, list[float]] = {}


def fit_seconds(workload: str, epochs: int, monitor: bool, workdir: str) -> float:
    pl.seed_everything(0, verbose=False)
    make_dm, make_net, _ = WORKLOADS[workload]
    dm = make_dm()
    model = LitClassifier(make_net())
    callbacks = [TimedMonitor(output_dir=workdir)] if monitor else []
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=pl.loggers.CSVLogger(workdir),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    seconds = time.perf_counter() - t0
    if monitor:
        HOOK_SHARES.setdefault(workload, []).append(callbacks[0].hook_seconds / seconds)
    return seconds


class BothWays(pl.Callback):
    """Measures every train epoch with a sampled and a direct meter, timing each one's edges."""

    def __init__(self) -> None:
        self.sampled, self.direct = SlowCpuCounter(True), SlowCpuCounter(False)
        self.cost = {"sampled": [], "direct": []}
        self.pairs: list[tuple[float, float]] = []

    def _edge(self, fn, kind):
        t0 = time.perf_counter()
        out = fn()
        self.cost[kind].append(time.perf_counter() - t0)
        return out

    def on_train_epoch_start(self, trainer, pl_module):
        self._edge(lambda: self.sampled.begin_window("e", sync=False), "sampled")
        self._edge(lambda: self.direct.begin_window("e", sync=False), "direct")

    def on_train_epoch_end(self, trainer, pl_module):
        a = self._edge(lambda: self.sampled.end_window("e", sync=False), "sampled")
        b = self._edge(lambda: self.direct.end_window("e", sync=False), "direct")
        self.pairs.append((a.joules, b.joules))


def both_ways(workload: str, epochs: int) -> tuple[dict[str, float], list[float], float]:
    """Per-edge cost of each way, and the sampled windows' relative errors against direct reads."""
    make_dm, make_net, _ = WORKLOADS[workload]
    both = BothWays()
    trainer = pl.Trainer(max_epochs=epochs, logger=False, callbacks=[both], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0)  # fmt: skip
    trainer.fit(LitClassifier(make_net()), datamodule=make_dm())
    both.sampled.close()
    errors = [abs(a - b) / b for a, b in both.pairs[1:] if b > 0]
    ms = {k: median(v) * 1000 for k, v in both.cost.items()}
    return ms, errors, median([b for _, b in both.pairs])


def slow_counter_part(workdir: str, repeats: int) -> tuple[list[str], dict]:
    ms, errors, joules = both_ways("digits", 40)
    ms_long, errors_long, joules_long = both_ways("synthetic32", 5)
    ms = {k: median([ms[k], ms_long[k]]) for k in ms}

    def short_fit(meter: CounterMeter | None) -> float:  # 8 small steps per epoch, as in the issue
        pl.seed_everything(0, verbose=False)
        cbs = [EnergyMonitor(output_dir=workdir, meter=meter)] if meter is not None else []
        t = pl.Trainer(max_epochs=20, logger=False, callbacks=cbs, enable_checkpointing=False,
                       enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                       limit_train_batches=8, limit_val_batches=2)  # fmt: skip
        t0 = time.perf_counter()
        t.fit(LitClassifier(SimpleCNN(conv_layers=2, linear_layers=2)), datamodule=DigitsDataModule())
        return time.perf_counter() - t0

    sampled_meter, direct_meter = SlowCpuCounter(True), SlowCpuCounter(False)
    short_fit(None)
    times = interleaved(
        {
            "none": lambda: short_fit(None),
            "sampled": lambda: short_fit(sampled_meter),
            "direct": lambda: short_fit(direct_meter),
        },
        repeats,
    )
    sampled_meter.close()
    ratio = {
        k: median([t / n for t, n in zip(times[k], times["none"], strict=True)])
        for k in ("sampled", "direct")
    }
    lines = [
        "[slow counter] a counter read takes 4 ms (as NVML on an H200); 40 digits epochs measured both ways",
        f"  training thread per window edge: sampled {ms['sampled']:.3f} ms (target <= 0.2 ms), "
        f"direct {ms['direct']:.3f} ms",
        f"  sampled window vs direct read of the same epoch (background reads every 50 ms): digits epochs "
        f"(~60 ms, ~{joules:.2f} J): median error {median(errors) * 100:.2f}%, max {max(errors) * 100:.2f}% over "
        f"{len(errors)} epochs; synthetic32 epochs (~2 s, ~{joules_long:.1f} J): median "
        f"{median(errors_long) * 100:.3f}%, max {max(errors_long) * 100:.3f}% over {len(errors_long)} epochs",
        f"  fit time with EnergyMonitor / without, 20 epochs of 8 steps (~{median(times['none']) / 20 * 1000:.0f} ms), "
        f"median of {repeats} interleaved runs: sampled {ratio['sampled']:.3f}, direct {ratio['direct']:.3f}",
    ]
    data = {"edge_ms": ms, "errors": errors, "errors_long": errors_long, "times": times, "fit_ratio": ratio}
    return lines, data


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--epochs", type=int, nargs=2, default=[30, 4], help="epochs for digits, synthetic32")
    add_out_argument(p)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    lines = [
        f"EnergyMonitor overhead on CPU: same model, data and seed, {args.repeats} interleaved pairs per workload",
        f"machine: {machine()}",
    ]
    data = {"args": vars(args)}
    with tempfile.TemporaryDirectory() as d:
        part1, data["slow_counter"] = slow_counter_part(d, args.repeats)
    lines += ["", *part1]
    for (workload, (_, _, samples)), epochs in zip(WORKLOADS.items(), args.epochs, strict=True):
        with tempfile.TemporaryDirectory() as d:
            fit_seconds(workload, 1, True, d)  # warm-up: imports, allocator, first-epoch effects
            times = interleaved(
                {
                    "without": lambda w=workload, e=epochs, d=d: fit_seconds(w, e, False, d),
                    "with": lambda w=workload, e=epochs, d=d: fit_seconds(w, e, True, d),
                },
                args.repeats,
            )
        tw, tn = median(times["with"]), median(times["without"])
        pairs = [w / n for w, n in zip(times["with"], times["without"], strict=True)]
        overhead = median(pairs) - 1
        hook_share = median(HOOK_SHARES[workload])
        lines += [
            "",
            f"[{workload}] {epochs} epochs, {samples * epochs / tn:,.0f} samples/s without the monitor, "
            f"epoch ~{tn / epochs * 1000:.0f} ms",
            f"  median fit time without: {tn:.3f} s   with: {tw:.3f} s",
            f"  throughput ratio (with/without, medians): {tn / tw:.4f}",
            f"  overhead (median of per-pair ratios): {overhead * 100:+.2f}%  (target <= 1%)",
            f"  per-pair ratios: {', '.join(f'{r:.3f}' for r in pairs)}",
            f"  time inside EnergyMonitor's hooks: {hook_share * 100:.2f}% of fit time "
            f"({hook_share * tn / epochs * 1000:.2f} ms per epoch)  <- the monitor's own cost (target <= 1%)",
        ]
        data[workload] = {"times": times, "overhead": overhead, "epochs": epochs, "hook_share": hook_share}
    lines.append(
        f"\ncommand: python benchmarks/monitor_overhead.py --repeats {args.repeats} --epochs {args.epochs[0]} {args.epochs[1]}"
    )
    save("monitor_overhead", "\n".join(lines) + "\n", data, args.out)


if __name__ == "__main__":
    main()
