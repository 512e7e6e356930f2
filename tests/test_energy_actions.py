"""Measurement off the training thread, forecasts, running totals, and the callbacks that act on energy."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from lightning import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_green import EnergyBudget, EnergyEfficientStopping, EnergyMonitor
from lightning_green.callbacks.forecast import FitForecaster
from lightning_green.data import DigitsDataModule
from lightning_green.energy.base import Channel, CounterMeter, CounterSampler
from lightning_green.models import LitClassifier, SimpleCNN
from lightning_green.records import read_summary, read_windows


@pytest.fixture(autouse=True)
def one_thread():
    """CPU-time estimates follow threads: pin them so runs are comparable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _trainer(*callbacks: Callback, **kw) -> Trainer:
    kw.setdefault("max_epochs", 4)
    kw.setdefault("enable_checkpointing", False)
    return Trainer(
        callbacks=list(callbacks), logger=False, enable_progress_bar=False, enable_model_summary=False, **kw
    )


def _model() -> LitClassifier:
    return LitClassifier(SimpleCNN(conv_layers=1, linear_layers=1))


# ---------------------------------------------------------------- counter reads off the training thread
class SlowCounter(CounterMeter):
    """A 100 W energy counter whose every read takes 4 ms, like NVML's on an H200."""

    name = "slow"

    def __init__(self, sampled: bool) -> None:
        self.reader_threads: list[str] = []
        super().__init__(sample_interval_s=0.01 if sampled else None)
        self.start_sampling()

    @property
    def channels(self):
        return (Channel("gpu", "0", "measured:slow-test-counter"),)

    def read_counters(self):
        import threading

        self.reader_threads.append(threading.current_thread().name)
        time.sleep(0.002)
        value = 100.0 * time.monotonic()  # the counter's value in the middle of its 4 ms read
        time.sleep(0.002)
        return {"gpu:0": value}


def _edge_costs(meter: CounterMeter, windows: int = 25, length_s: float = 0.06) -> tuple[list[float], list]:
    costs, readings = [], []
    for _ in range(windows):
        t0 = time.perf_counter()
        meter.begin_window("w", sync=False)
        costs.append(time.perf_counter() - t0)
        time.sleep(length_s)
        t0 = time.perf_counter()
        readings.append(meter.end_window("w", sync=False))
        costs.append(time.perf_counter() - t0)
    return costs, readings


def test_sampled_edges_cost_microseconds_and_match_the_counter():
    # How fast an edge is lives in benchmarks/monitor_overhead.py; here: the slow read never runs
    # on the training thread, and the interpolated figures match the counter.
    sampled = SlowCounter(sampled=True)
    try:
        reads_before = len(sampled.reader_threads)
        _, readings = _edge_costs(sampled)
        on_caller = [t for t in sampled.reader_threads[reads_before:] if t == "MainThread"]
    finally:
        sampled.close()
    assert len(sampled.reader_threads) > reads_before and on_caller == []
    errors = [abs(r.joules - 100.0 * r.seconds) for r in readings]
    # A 100 W counter: joules = 100 x seconds, within the error a late sleep inside a read causes
    # (its value and its midpoint stamp move apart by the overshoot: 20 ms on a loaded machine = 2 J).
    assert max(errors) < 100.0 * 0.02
    assert "interpolated" in readings[0].assumptions["slow_edges"]

    direct = SlowCounter(sampled=False)
    costs, readings = _edge_costs(direct, windows=5)
    assert direct.reader_threads.count("MainThread") >= 10  # both edges of each window, on the caller
    assert min(costs[1::2]) > 4e-3  # a read sleeps 4 ms, so a direct edge pays at least that
    assert readings[0].joules == pytest.approx(100.0 * readings[0].seconds, abs=1.0)


def test_sampler_interpolates_between_samples_and_extrapolates_before_the_next():
    now = {"t": 0.0}
    value = {"v": 0.0}
    sampler = CounterSampler(lambda: {"gpu:0": value["v"]}, interval_s=3600, clock=lambda: now["t"])
    try:
        # the first sample: t=0, 0 J (stamped at the midpoint of its read: the clock did not move)
        now["t"] = 1.0
        edge = sampler.edge()
        now["t"], value["v"] = 2.0, 200.0
        sampler.sample()
        assert sampler.values(edge)["gpu:0"] == pytest.approx(100.0)  # halfway between 0 J and 200 J
        now["t"] = 3.0
        late = sampler.edge()
        assert sampler.values(late)["gpu:0"] == pytest.approx(300.0)  # 100 W of the last interval
        now["t"], value["v"] = 4.0, 500.0
        sampler.sample()
        assert sampler.values(late)["gpu:0"] == pytest.approx(350.0)  # settled: between 200 J and 500 J
    finally:
        sampler.close()


# ---------------------------------------------------------------- running totals at any hook
def test_total_logged_at_validation_includes_the_paused_training():
    monitor = EnergyMonitor(output_dir=None)
    seen = []

    class Spy(Callback):
        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                paused = sum(r.joules for r in monitor._segments.get("train", ()))
                seen.append((float(trainer.callback_metrics["energy/total_j"]), monitor.total_j, paused))

    _trainer(monitor, Spy(), max_epochs=2).fit(_model(), datamodule=DigitsDataModule())
    assert len(seen) == 2  # one validation per epoch, each while its train window was paused
    for logged, closed, paused in seen:
        assert paused > 0 and logged == pytest.approx(closed + paused)


# ---------------------------------------------------------------- forecast
def test_forecaster_maths_by_hand():
    f = FitForecaster()
    assert f.predict(10.0, 5, 10.0, 100, None, 0) is None  # not warm yet
    f.warm(batches=10, train_j=50.0)  # warm-up: 5 J a batch
    p = f.predict(spent_j=80.0, batches=20, train_j=70.0, total_batches=40, val_j_per_run=None,
                  val_runs_left=2, val_batches_per_run=6)  # fmt: skip
    # 2 J/batch after warm-up; 20 batches left; validation assumed at 1/3 of a training batch
    assert p.fit_j == pytest.approx(80.0 + 2.0 * 20 + 2 * (2.0 * 6 / 3))
    assert p.val_assumed
    p = f.predict(
        spent_j=110.0, batches=30, train_j=100.0, total_batches=40, val_j_per_run=4.0, val_runs_left=1
    )
    # rate (100-50)/(30-10) = 2.5; chunk rates 2.0 and 3.0 give the interval
    assert p.fit_j == pytest.approx(110.0 + 2.5 * 10 + 4.0)
    assert (p.low_j, p.high_j) == (
        pytest.approx(110.0 + 2.0 * 10 + 4.0),
        pytest.approx(110.0 + 3.0 * 10 + 4.0),
    )
    assert f.predict(1.0, 30, 1.0, float("inf"), None, 0) is None  # no known end


class BatchCounter(CounterMeter):
    """A counter that advances by known joules per batch: 5 J for each of the first 4 training
    batches (warm-up), 1 J for later ones, 0.5 J per validation batch."""

    name = "batch-counter"

    def __init__(self) -> None:
        super().__init__()
        self.joules = 0.0

    @property
    def channels(self):
        return (Channel("gpu", "0", "measured:batch-test-counter"),)

    def read_counters(self):
        return {"gpu:0": self.joules}


class Spend(Callback):
    def __init__(self, meter: BatchCounter) -> None:
        self.meter, self.train_batches = meter, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_batches += 1
        self.meter.joules += 5.0 if self.train_batches <= 4 else 1.0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.meter.joules += 0.5


def test_forecast_after_the_first_epoch_discounts_warm_up(tmp_path: Path):
    meter = BatchCounter()
    monitor = EnergyMonitor(output_dir=tmp_path, meter=meter)
    forecasts = []

    class Grab(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            forecasts.append(monitor.forecast)

    # Spend runs first, so each batch's joules are on the counter before the monitor looks.
    trainer = _trainer(Spend(meter), monitor, Grab(), max_epochs=4, num_sanity_val_steps=0)
    trainer.fit(_model(), datamodule=DigitsDataModule())
    final = monitor.total_j
    val_batches = trainer.num_val_batches[0]  # 5 on digits
    # 4 epochs x 20 batches: 4 x 5 J + 76 x 1 J, and 4 validations x 0.5 J per batch
    assert final == pytest.approx(4 * 5 + 76 * 1 + 4 * val_batches * 0.5)
    first = forecasts[0]
    assert first.fit_j == pytest.approx(final)  # exact once warm-up is left out
    assert first.low_j <= first.fit_j <= first.high_j and not first.val_assumed
    epoch0 = sum(w.energy_j for w in read_windows(tmp_path) if w.epoch == 0)
    assert abs(4 * epoch0 - final) / final > 0.15  # a mean over whole epochs (the old forecast) is far off
    assert read_summary(tmp_path)["forecast"]["fit_j"] == pytest.approx(forecasts[-1].fit_j)


# ---------------------------------------------------------------- EnergyBudget
def test_budget_spent_stops_at_the_step_that_reaches_it(tmp_path: Path):
    monitor = EnergyMonitor(output_dir=tmp_path)
    budget = EnergyBudget(max_j=2.0, check_every_n_steps=1)
    spent = []

    class Spy(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            spent.append(monitor.spent_j())

    trainer = _trainer(monitor, Spy(), budget, max_epochs=50)
    trainer.fit(_model(), datamodule=DigitsDataModule())
    # It stopped after the step whose check reached the budget: the step before was under it.
    assert trainer.global_step == len(spent) and spent[-2] < 2.0 <= monitor.total_j
    assert trainer.current_epoch < 49
    summary = read_summary(tmp_path)
    assert summary["stopped_by"].startswith("EnergyBudget: spent") and summary["finished"] is True
    assert budget.stopped and summary["total_j"] >= 2.0


def test_budget_forecast_stops_early_and_warn_only_warns(tmp_path: Path):
    monitor = EnergyMonitor(output_dir=tmp_path / "f")
    trainer = _trainer(
        monitor, EnergyBudget(max_j=5.0, check="forecast", check_every_n_steps=1), max_epochs=200
    )
    trainer.fit(_model(), datamodule=DigitsDataModule())
    summary = read_summary(tmp_path / "f")
    assert "forecast" in summary["stopped_by"] and summary["total_j"] < 5.0
    assert trainer.global_step < 20  # acted inside the first epoch (20 batches), once the forecast existed

    monitor = EnergyMonitor(output_dir=tmp_path / "w")
    trainer = _trainer(monitor, EnergyBudget(max_j=0.3, on_exceed="warn"), max_epochs=2)
    with pytest.warns(UserWarning, match="training goes on"):
        trainer.fit(_model(), datamodule=DigitsDataModule())
    assert trainer.current_epoch == 2 and read_summary(tmp_path / "w")["stopped_by"] is None


def test_budget_holds_across_a_checkpoint_resume(tmp_path: Path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    monitor = EnergyMonitor(output_dir=tmp_path / "a")
    t = _trainer(
        monitor,
        EnergyBudget(max_j=1.0, check_every_n_steps=1),
        ckpt,
        max_epochs=50,
        enable_checkpointing=True,
    )
    t.fit(_model(), datamodule=DigitsDataModule())
    steps = t.global_step
    resumed = EnergyMonitor(output_dir=tmp_path / "b")
    t2 = _trainer(resumed, EnergyBudget(max_j=1.0, check_every_n_steps=1), max_epochs=50)
    t2.fit(_model(), datamodule=DigitsDataModule(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert t2.global_step <= steps + 1  # the carried-over energy is already over budget
    assert read_summary(tmp_path / "b")["stopped_by"].startswith("EnergyBudget")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "budget"),
        ({"max_j": float("nan")}, "max_j"),
        ({"max_kwh": True}, "max_kwh"),
        ({"max_j": 1, "on_exceed": "halt"}, "on_exceed"),
        ({"max_j": 1, "check": "both"}, "check"),
        ({"max_j": 1, "check_every_n_steps": 0}, "check_every_n_steps"),
    ],
)
def test_budget_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        EnergyBudget(**kwargs)


def test_budget_and_stopping_need_a_monitor():
    for cb in (EnergyBudget(max_j=1), EnergyEfficientStopping()):
        with pytest.raises(MisconfigurationException, match="EnergyMonitor"):
            _trainer(cb, max_epochs=1).fit(_model(), datamodule=DigitsDataModule())


# ---------------------------------------------------------------- EnergyEfficientStopping
class Scripted(LitClassifier):
    """Logs a scripted ``val_acc`` per epoch, so where the gain falls is known."""

    CURVE = [0.5, 0.7, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.log("val_acc", self.CURVE[self.current_epoch])


def test_efficient_stopping_stops_where_the_gain_per_kj_falls(tmp_path: Path):
    stop = EnergyEfficientStopping(monitor="val_acc", min_gain_per_kj=1.0, patience=2)
    monitor = EnergyMonitor(output_dir=tmp_path)
    trainer = _trainer(monitor, stop, max_epochs=10)
    trainer.fit(Scripted(SimpleCNN(conv_layers=1)), datamodule=DigitsDataModule())
    # gains: epochs 1 and 2 (+0.2 for a few joules: far above 1 per kJ), then 0 at 3 and 4 -> stop
    assert stop.stopped_epoch == 4 and trainer.current_epoch == 5
    assert "EnergyEfficientStopping" in read_summary(tmp_path)["stopped_by"]
    assert stop.last_gain_per_kj == 0.0


def test_efficient_stopping_state_survives_a_resume(tmp_path: Path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = EnergyEfficientStopping(monitor="val_acc", min_gain_per_kj=1.0, patience=2)
    t = _trainer(EnergyMonitor(output_dir=tmp_path), first, ckpt, max_epochs=4, enable_checkpointing=True)
    t.fit(Scripted(SimpleCNN(conv_layers=1)), datamodule=DigitsDataModule())
    assert first.wait_count == 1 and t.current_epoch == 4  # epoch 3 gained nothing: 1 of 2
    second = EnergyEfficientStopping(monitor="val_acc", min_gain_per_kj=1.0, patience=2)
    t2 = _trainer(EnergyMonitor(output_dir=tmp_path), second, max_epochs=10)
    t2.fit(
        Scripted(SimpleCNN(conv_layers=1)),
        datamodule=DigitsDataModule(),
        ckpt_path=tmp_path / "ckpt" / "last.ckpt",
    )
    assert len(second.history) == 5 and second.stopped_epoch == 4  # the count went on from the checkpoint


def test_efficient_stopping_missing_metric_is_a_clear_error():
    stop = EnergyEfficientStopping(monitor="val_f1")
    with pytest.raises(MisconfigurationException, match=r"val_f1.*available"):
        _trainer(EnergyMonitor(), stop, max_epochs=1).fit(_model(), datamodule=DigitsDataModule())


# ---------------------------------------------------------------- LightningCLI
CLI_SCRIPT = textwrap.dedent(
    """
    from lightning.pytorch.cli import LightningCLI
    from lightning_green.data import DigitsDataModule
    from lightning_green.models import LitClassifier

    LightningCLI(LitClassifier, DigitsDataModule, save_config_callback=None)
    """
)


def test_callbacks_from_lightning_cli(tmp_path: Path):
    script = tmp_path / "cli.py"
    script.write_text(CLI_SCRIPT)
    r = subprocess.run(
        [
            sys.executable, str(script), "fit", "--model.net=lightning_green.models.SimpleCNN",
            "--trainer.max_epochs=20", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.callbacks+=lightning_green.EnergyMonitor", f"--trainer.callbacks.output_dir={tmp_path}",
            "--trainer.callbacks+=lightning_green.EnergyBudget", "--trainer.callbacks.max_j=0.5",
            "--trainer.callbacks.check_every_n_steps=1",
            "--trainer.callbacks+=lightning_green.EnergyEfficientStopping", "--trainer.callbacks.min_gain_per_kj=0.5",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_summary(tmp_path)["stopped_by"].startswith("EnergyBudget")


def test_the_progress_bar_shows_energy_so_far_and_average_power(tmp_path):
    from lightning import Trainer

    from lightning_green import EnergyMonitor
    from lightning_green.callbacks.progress import EnergyProgressBar
    from lightning_green.data import DigitsDataModule
    from lightning_green.models import LitClassifier, SimpleCNN

    seen = []

    class Spy(EnergyProgressBar):
        def get_metrics(self, trainer, pl_module):
            items = super().get_metrics(trainer, pl_module)
            seen.append(items)
            return items

    monitor = EnergyMonitor(output_dir=tmp_path)
    Trainer(max_epochs=1, limit_train_batches=5, limit_val_batches=2, logger=False, enable_checkpointing=False,
            enable_model_summary=False, callbacks=[monitor, Spy()]).fit(
        LitClassifier(SimpleCNN(conv_layers=1)), datamodule=DigitsDataModule()
    )  # fmt: skip
    last = seen[-1]
    assert last["energy"].endswith(" J") and float(last["energy"].split()[0]) > 0
    assert last["power"].endswith(" W") and float(last["power"].split()[0]) > 0
