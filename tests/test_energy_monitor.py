"""EnergyMonitor with a real Trainer on the embedded digits data."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, make_rapl_tree
from lightning import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_green import EnergyMonitor
from lightning_green.data import DigitsDataModule
from lightning_green.energy.base import Channel, CounterMeter
from lightning_green.models import LitClassifier, SimpleCNN
from lightning_green.records import iter_records, read_summary, read_windows

KEYS = [
    "energy/train_epoch_j",
    "energy/val_epoch_j",
    "energy/test_j",
    "energy/total_j",
    "energy/total_kwh",
    "energy/co2e_g",
    "power/train_avg_w",
    "time/train_epoch_s",
    "energy/forecast_fit_j",
]


def _trainer(tmp_path: Path, monitor: EnergyMonitor, **kw) -> Trainer:
    kw.setdefault("max_epochs", 3)
    kw.setdefault("logger", CSVLogger(tmp_path / "logs", name="run"))
    kw.setdefault("accelerator", "cpu")  # the same meters on every machine: no GPU here
    return Trainer(
        callbacks=[monitor, *kw.pop("callbacks", [])],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kw,
    )


def _model() -> LitClassifier:
    return LitClassifier(SimpleCNN(conv_layers=1, linear_layers=2))


def test_records_totals_and_logged_keys(tmp_path: Path):
    monitor = EnergyMonitor(rapl_root=tmp_path / "no-rapl")  # auto falls back to the estimate anywhere
    trainer = _trainer(tmp_path, monitor)
    dm = DigitsDataModule()
    trainer.fit(_model(), datamodule=dm)
    trainer.test(_model(), datamodule=dm)

    out = Path(trainer.logger.log_dir)
    windows = read_windows(out)
    stages = [(w.stage, w.epoch) for w in windows]
    assert [s for s in stages if s[0] == "train"] == [("train", 0), ("train", 1), ("train", 2)]
    assert [s for s in stages if s[0] == "validate"] == [("validate", 0), ("validate", 1), ("validate", 2)]
    assert stages[0] == ("sanity_check", 0) and stages[-1][0] == "test"
    for w in windows:
        assert w.energy_j > 0 and w.seconds > 0 and w.complete
        assert w.sources == {"cpu": "estimated:cpu-time"}
        assert w.domains[0]["source"] == "estimated:cpu-time"

    # Validation is measured apart: each epoch's validation runs inside its train epoch's span
    # (before on_train_epoch_end), and the train window paused for it.
    trains = [w for w in windows if w.stage == "train"]
    vals = [w for w in windows if w.stage == "validate"]
    for t, v in zip(trains, vals, strict=True):
        assert t.start_time < v.start_time < v.end_time <= t.end_time + 1e-6
        assert t.seconds <= (t.end_time - t.start_time) - v.seconds + 1e-6

    summary = read_summary(out)
    assert summary["finished"] is True
    assert summary["total_j"] == pytest.approx(sum(w.energy_j for w in windows))
    assert summary["stage_j"]["train"] == pytest.approx(sum(w.energy_j for w in trains))
    assert summary["assumptions"]["cpu_model"] == "cpu-time"
    assert monitor.total_j == pytest.approx(summary["total_j"])
    assert trainer.callback_metrics["energy/total_j"].item() == pytest.approx(summary["total_j"], rel=1e-5)
    assert summary["total_kwh"] == pytest.approx(summary["total_j"] / 3.6e6)
    assert summary["co2e_g"] == pytest.approx(summary["total_kwh"] * 475.0)

    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for key in KEYS:
        assert any(r.get(key) not in (None, "") for r in rows), key
    train_j = [float(r["energy/train_epoch_j"]) for r in rows if r.get("energy/train_epoch_j")]
    assert train_j == pytest.approx([w.energy_j for w in trains], rel=1e-5)
    power = [float(r["power/train_avg_w"]) for r in rows if r.get("power/train_avg_w")]
    assert power == pytest.approx([w.energy_j / w.seconds for w in trains], rel=1e-4)


class WorkCounter(CounterMeter):
    """A counter that rises by a fixed energy per batch: 1 J a training batch, 0.5 J a validation
    batch, 5 J for the first training batch (warm-up), so the fit's energy is known in advance."""

    name = "work"

    def __init__(self) -> None:
        super().__init__()
        self.j = 0.0

    @property
    def channels(self):
        return (Channel("gpu", "0", "measured:work-counter"),)

    def read_counters(self):
        return {"gpu:0": self.j}


class Work(Callback):
    def __init__(self, counter: WorkCounter) -> None:
        self.counter, self.first = counter, True

    # A batch's energy is spent before the monitor's batch-end hook sees it: count it at the start.
    def on_train_batch_start(self, *args, **kwargs):
        self.counter.j += 5.0 if self.first else 1.0
        self.first = False

    def on_validation_batch_start(self, *args, **kwargs):
        self.counter.j += 0.5


def test_forecast_predicts_fit_energy(tmp_path: Path):
    counter = WorkCounter()
    monitor = EnergyMonitor(output_dir=tmp_path / "out", meter=counter, baseline_s=0)
    forecasts = []

    class Grab(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            forecasts.append(monitor.forecast_fit_j)

    trainer = _trainer(tmp_path, monitor, max_epochs=4, logger=False, callbacks=[Work(counter), Grab()])
    trainer.fit(_model(), datamodule=DigitsDataModule())
    final = monitor.total_j
    assert final == pytest.approx(counter.j)
    assert forecasts[-1] == pytest.approx(final)  # nothing left to run
    # After one epoch, the warm-up left out: the rest of the fit at the measured per-batch and
    # per-validation rates is exactly what the counter went on to add.
    assert forecasts[0] == pytest.approx(final, rel=1e-6)


def test_resume_continues_totals(tmp_path: Path):
    out = tmp_path / "energy"
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = _trainer(tmp_path, EnergyMonitor(output_dir=out), max_epochs=2, callbacks=[ckpt], logger=False)
    trainer.fit(_model(), datamodule=DigitsDataModule())
    first_total = read_summary(out)["total_j"]

    monitor = EnergyMonitor(output_dir=out)
    ckpt2 = ModelCheckpoint(dirpath=tmp_path / "ckpt")
    trainer2 = _trainer(tmp_path, monitor, max_epochs=4, callbacks=[ckpt2], logger=False)
    trainer2.fit(_model(), datamodule=DigitsDataModule(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")

    windows = read_windows(out)
    assert sorted(w.epoch for w in windows if w.stage == "train") == [0, 1, 2, 3]
    summary = read_summary(out)
    assert summary["total_j"] > first_total
    assert summary["total_j"] == pytest.approx(sum(w.energy_j for w in windows))
    assert summary["epochs"] == 4


def test_failing_meter_warns_once_and_training_goes_on(tmp_path: Path):
    monitor = EnergyMonitor(output_dir=tmp_path / "out")
    trainer = _trainer(tmp_path, monitor, max_epochs=3, logger=False)

    class BreakCounter(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                est = monitor.meter.meters[0]

                def broken():
                    raise OSError("counter gone")

                est.read_counters = broken

    trainer.callbacks.insert(0, BreakCounter())
    with pytest.warns(UserWarning, match="incomplete") as caught:
        trainer.fit(_model(), datamodule=DigitsDataModule())
    assert sum("incomplete" in str(w.message) for w in caught) == 1
    windows = read_windows(tmp_path / "out")
    assert trainer.current_epoch == 3  # training went on
    train = {w.epoch: w for w in windows if w.stage == "train"}
    assert train[0].complete and not train[2].complete
    assert train[2].domains[0]["joules"] is None  # not a silent zero
    assert read_summary(tmp_path / "out")["incomplete_windows"] >= 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"backend": "gpu"}, "backend"),
        ({"carbon_intensity": -5}, "carbon_intensity"),
        ({"carbon_intensity": "Germny"}, "carbon_intensity must be .*close: GERMANY"),
        ({"carbon_intensity": True}, "carbon_intensity"),
        ({"carbon_live": "solar"}, "carbon_live must be"),
        ({"pue": 0.5}, "pue"),
        ({"watts_per_core": 0}, "watts_per_core"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        EnergyMonitor(**kwargs)


def test_default_output_dir_without_logger(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = _trainer(tmp_path, EnergyMonitor(), max_epochs=1, logger=False)
    trainer.fit(_model(), datamodule=DigitsDataModule())
    assert (tmp_path / "lightning_green_logs" / "energy.jsonl").is_file()


def test_torn_last_line_is_skipped(tmp_path: Path):
    trainer = _trainer(tmp_path, EnergyMonitor(output_dir=tmp_path / "o"), max_epochs=1, logger=False)
    trainer.fit(_model(), datamodule=DigitsDataModule())
    path = tmp_path / "o" / "energy.jsonl"
    n = len(read_windows(path))
    with open(path, "a") as f:
        f.write('{"kind": "window", "stage": "tra')
    with pytest.warns(UserWarning, match="torn line"):
        assert len(list(iter_records(path))) == n


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from lightning import Trainer
    from lightning.pytorch.callbacks import Callback
    from lightning_green import EnergyMonitor
    from lightning_green.data import DigitsDataModule
    from lightning_green.models import LitClassifier, SimpleCNN

    class Slow(Callback):
        def on_train_batch_end(self, *a):
            time.sleep(0.02)

    Trainer(max_epochs=1000, logger=False, enable_progress_bar=False, enable_checkpointing=False,
            callbacks=[EnergyMonitor(output_dir=sys.argv[1]), Slow()]).fit(
        LitClassifier(SimpleCNN(conv_layers=1)), datamodule=DigitsDataModule())
    """
)


@pytest.mark.slow
def test_sigkill_keeps_every_finished_epoch(tmp_path: Path):
    out = tmp_path / "out"
    script = tmp_path / "train.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen(
        [PYTHON, str(script), str(out)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    records = out / "energy.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if records.exists() and records.read_text().count('"stage": "train"') >= 3:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            time.sleep(0.05)
        else:
            pytest.fail("training did not reach 3 epochs")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    lines = records.read_text().splitlines()
    parsed = [json.loads(line) for line in lines]  # every line parses: no torn record
    train_epochs = [r["epoch"] for r in parsed if r["stage"] == "train"]
    assert len(train_epochs) >= 3
    assert train_epochs == list(range(len(train_epochs)))
    summary = read_summary(out)
    assert summary["finished"] is False
    assert summary["total_j"] == pytest.approx(sum(r["energy_j"] for r in parsed[: summary["windows"]]))


DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    from lightning import Trainer
    from lightning_green import EnergyMonitor
    from lightning_green.data import DigitsDataModule
    from lightning_green.models import LitClassifier, SimpleCNN

    out, backend, rapl_root = sys.argv[1], sys.argv[2], sys.argv[3]
    trainer = Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                      enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                      callbacks=[EnergyMonitor(output_dir=out, backend=backend, rapl_root=rapl_root)])
    trainer.fit(LitClassifier(SimpleCNN(conv_layers=1)), datamodule=DigitsDataModule())
    if trainer.global_rank == 0:
        print("LOGGED", float(trainer.callback_metrics["energy/total_j"]))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["estimate", "rapl"])
def test_ddp_two_processes_count_once(tmp_path: Path, backend: str):
    out = tmp_path / "out"
    root = make_rapl_tree(tmp_path / "powercap", {0: 1000}, dram={0: 10})
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    r = subprocess.run(
        [PYTHON, str(script), str(out), backend, str(root)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    windows = read_windows(out)  # one file, written by rank zero alone
    assert len([w for w in windows if w.stage == "train"]) == 2
    for w in windows:
        assert w.world_size == 2
        keys = sorted(f"{d['domain']}:{d['device']}" for d in w.domains)
        if backend == "estimate":
            assert keys == ["cpu:rank0/process", "cpu:rank1/process"]  # each process's own CPU time
        else:
            assert keys == ["cpu:rank0/0", "dram:rank0/0"]  # node counters read once, by local rank 0
    summary = read_summary(out)
    assert summary["total_j"] == pytest.approx(sum(w.energy_j for w in windows))
    logged = float(r.stdout.split("LOGGED")[1].split()[0])
    assert logged == pytest.approx(summary["total_j"], rel=1e-5)


def test_keys_reach_a_tensorboard_logger(tmp_path: Path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = _trainer(tmp_path, EnergyMonitor(), max_epochs=2, logger=logger)
    trainer.fit(_model(), datamodule=DigitsDataModule())
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"energy/train_epoch_j", "energy/val_epoch_j", "energy/total_j", "power/train_avg_w"} <= tags
    train_j = [e.value for e in events.Scalars("energy/train_epoch_j")]
    windows = [w for w in read_windows(logger.log_dir) if w.stage == "train"]
    assert train_j == pytest.approx([w.energy_j for w in windows], rel=1e-5)


def test_testing_a_checkpoint_does_not_roll_the_totals_back(tmp_path: Path):
    """``trainer.test(ckpt_path=...)`` loads weights from an earlier epoch, not the run's state."""
    monitor = EnergyMonitor(output_dir=tmp_path / "out")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="e{epoch}", save_top_k=-1)  # one per epoch
    trainer = _trainer(tmp_path, monitor, max_epochs=3, callbacks=[ckpt], logger=False)
    model = _model()
    trainer.fit(model, datamodule=DigitsDataModule())
    fit_total, epochs = monitor.total_j, monitor.summary().epochs
    first_epoch = tmp_path / "ckpt" / "eepoch=0.ckpt"  # its state: 1 epoch, a third of the energy
    trainer.test(model, datamodule=DigitsDataModule(), ckpt_path=first_epoch, verbose=False)
    test_j = sum(w.energy_j for w in read_windows(tmp_path / "out") if w.stage == "test")
    summary = read_summary(tmp_path / "out")
    assert summary["total_j"] == pytest.approx(fit_total + test_j)
    assert summary["epochs"] == epochs == 3


def test_two_monitors_in_one_trainer_each_keep_their_own_records(tmp_path: Path):
    a, b = EnergyMonitor(output_dir=tmp_path / "a"), EnergyMonitor(output_dir=tmp_path / "b")
    assert a.state_key != b.state_key
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = _trainer(tmp_path, a, max_epochs=1, logger=False, callbacks=[b, ckpt])
    trainer.fit(_model(), datamodule=DigitsDataModule())
    for folder in ("a", "b"):
        windows = read_windows(tmp_path / folder)
        assert windows and sum(w.energy_j for w in windows) == pytest.approx(
            read_summary(tmp_path / folder)["total_j"]
        )
    # A resumed run writes to a new folder: the checkpoint's one state is still its own.
    resumed = EnergyMonitor(output_dir=tmp_path / "c")
    one = _trainer(tmp_path, resumed, max_epochs=2, logger=False)
    one.fit(_model(), datamodule=DigitsDataModule(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    # two states in that checkpoint: which one is this run's is ambiguous, so neither is taken
    assert resumed.summary().resumed_from == []


def test_callbacks_find_the_monitor_through_one_accessor(tmp_path: Path):
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from lightning_green import EnergyBudget

    trainer = _trainer(tmp_path, EnergyMonitor(output_dir=tmp_path), max_epochs=1, logger=False)
    assert EnergyMonitor.of(trainer) is trainer.callbacks[0]
    bare = Trainer(max_epochs=1, callbacks=[EnergyBudget(max_j=1.0)], logger=False, enable_progress_bar=False)
    with pytest.raises(MisconfigurationException, match=r"^EnergyBudget reads an EnergyMonitor: add one"):
        bare.fit(_model(), datamodule=DigitsDataModule())
    monitor = EnergyMonitor()
    with pytest.deprecated_call(match="energy_monitor="):
        assert EnergyBudget(max_j=1.0, monitor=monitor).energy_monitor is monitor
