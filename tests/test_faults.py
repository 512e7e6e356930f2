"""Nothing lost, nothing silently wrong: crashes, torn files, bad numbers, full disks, failing meters."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, make_rapl_tree, set_uj
from lightning import Trainer
from lightning.pytorch.callbacks import Callback

from lightning_green import EnergyMonitor, LayerEnergyProfiler
from lightning_green.data import DigitsDataModule
from lightning_green.energy import RaplMeter
from lightning_green.energy.base import Channel, CounterMeter
from lightning_green.models import LitClassifier, SimpleCNN
from lightning_green.records import (
    RecordError,
    RecordWriter,
    WindowRecord,
    iter_records,
    read_summary,
    read_windows,
)


def _trainer(monitor: EnergyMonitor | None, *callbacks: Callback, **kw) -> Trainer:
    kw.setdefault("max_epochs", 4)
    return Trainer(
        callbacks=[*([monitor] if monitor else []), *callbacks],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kw,
    )


def _model() -> LitClassifier:
    return LitClassifier(SimpleCNN(conv_layers=1, linear_layers=1))


class RaiseAt(Callback):
    """Raises ``exc`` in the middle of training epoch ``epoch`` (after a few steps)."""

    def __init__(self, epoch: int, exc: BaseException) -> None:
        self.epoch, self.exc = epoch, exc

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 3:
            raise self.exc


# ---------------------------------------------------------------- 1. crash or Ctrl-C mid-fit
@pytest.mark.parametrize("exc", [RuntimeError("boom at epoch 2"), KeyboardInterrupt()])
def test_crash_mid_fit_records_the_open_window_and_the_summary(tmp_path: Path, exc: BaseException):
    out = tmp_path / "out"
    monitor = EnergyMonitor(output_dir=out)
    trainer = _trainer(monitor, RaiseAt(2, exc))
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises((RuntimeError, SystemExit)):  # Lightning turns Ctrl-C into exit(1)
            trainer.fit(_model(), datamodule=DigitsDataModule())
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after a KeyboardInterrupt

    windows = read_windows(out)
    train = [w for w in windows if w.stage == "train"]
    assert [w.epoch for w in train] == [0, 1, 2]
    assert all(w.complete and w.interrupted is None for w in train[:2])
    cut = train[2]
    assert not cut.complete and cut.energy_j > 0
    assert type(exc).__name__ in cut.interrupted
    summary = read_summary(out)
    assert summary["finished"] is False
    assert type(exc).__name__ in summary["ended_by"]
    assert summary["windows"] == len(windows) and summary["interrupted_windows"] == 1
    assert summary["total_j"] == pytest.approx(sum(w.energy_j for w in windows))
    assert summary["complete"] is False
    assert monitor.meter is None  # released

    # The same monitor fits again: a new run, no "window already open".
    first_run = monitor.run_id
    _trainer(monitor, max_epochs=1).fit(_model(), datamodule=DigitsDataModule())
    summary = read_summary(out)
    assert summary["finished"] is True and summary["run_id"] != first_run
    assert summary["previous_run_id"] == first_run
    second = [w for w in read_windows(out) if w.run_id == summary["run_id"]]
    assert summary["total_j"] == pytest.approx(sum(w.energy_j for w in second))


# ---------------------------------------------------------------- 8. two fits, resume lineage
def test_two_fits_are_two_runs_and_resume_keeps_lineage(tmp_path: Path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    out = tmp_path / "out"
    monitor = EnergyMonitor(output_dir=out)
    _trainer(monitor, max_epochs=1).fit(_model(), datamodule=DigitsDataModule())
    first = read_summary(out)
    _trainer(monitor, max_epochs=2).fit(_model(), datamodule=DigitsDataModule())
    second = read_summary(out)
    assert first["run_id"] != second["run_id"] and second["previous_run_id"] == first["run_id"]
    by_run: dict[str, list[WindowRecord]] = {}
    for w in read_windows(out):
        by_run.setdefault(w.run_id, []).append(w)
    assert [w.epoch for w in by_run[second["run_id"]] if w.stage == "train"] == [0, 1]
    assert second["total_j"] == pytest.approx(sum(w.energy_j for w in by_run[second["run_id"]]))

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    t = Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        callbacks=[EnergyMonitor(output_dir=out), ckpt],
        default_root_dir=tmp_path,
    )
    t.fit(_model(), datamodule=DigitsDataModule())
    base = read_summary(out)
    resumed = EnergyMonitor(output_dir=out)
    t2 = Trainer(
        max_epochs=2, logger=False, enable_progress_bar=False, enable_checkpointing=False, callbacks=[resumed]
    )
    t2.fit(_model(), datamodule=DigitsDataModule(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    summary = read_summary(out)
    assert summary["resumed_from"] == [base["run_id"]]
    assert summary["carried_over_j"] == pytest.approx(base["total_j"])
    own = sum(w.energy_j for w in read_windows(out) if w.run_id == summary["run_id"])
    assert summary["total_j"] == pytest.approx(base["total_j"] + own)


# ---------------------------------------------------------------- 2. torn lines
def test_append_after_a_torn_line_starts_a_fresh_line_and_the_reader_skips_torn_lines(tmp_path: Path):
    out = tmp_path / "o"
    _trainer(EnergyMonitor(output_dir=out), max_epochs=1).fit(_model(), datamodule=DigitsDataModule())
    path = out / "energy.jsonl"
    n = len(read_windows(path))
    with open(path, "a") as f:
        f.write('{"kind": "window", "stage": "tra')  # a run died mid-line (kill, full disk)
    _trainer(EnergyMonitor(output_dir=out), max_epochs=1).fit(_model(), datamodule=DigitsDataModule())
    with pytest.warns(UserWarning, match="torn line"):
        windows = read_windows(path)
    assert len(windows) == 2 * n  # the second run's first record is intact
    # A garbage line in the middle is skipped too, never failing the file.
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "garbage{", *lines[1:]]) + "\n")
    with pytest.warns(UserWarning, match="torn line"):
        assert len(read_windows(path)) == 2 * n


# ---------------------------------------------------------------- 5. impossible values
def _record_line(**over) -> str:
    base = {
        "run_id": "r", "stage": "train", "epoch": 0, "global_step": 1, "start_time": 1.0, "end_time": 2.0,
        "seconds": 1.0, "energy_j": 5.0, "domains": [{"domain": "cpu", "device": "0", "joules": 5.0,
        "source": "measured:rapl", "complete": True}], "sources": {"cpu": "measured:rapl"}, "complete": True,
        "kind": "window", "schema": 1,
    }  # fmt: skip
    base.update(over)
    return json.dumps(base)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"energy_j": math.nan}, "energy_j"),
        ({"energy_j": math.inf}, "energy_j"),
        ({"energy_j": -1000.0}, "energy_j"),
        ({"energy_j": "12"}, "energy_j"),
        ({"schema": 99}, "schema 99"),
        ({"kind": "bogus"}, "kind"),
        ({"domains": [{"domain": "cpu", "device": "0", "joules": -3.0, "source": "x"}]}, "domains[0].joules"),
    ],
)
def test_impossible_values_are_errors_naming_file_line_and_field(tmp_path: Path, override, field):
    path = tmp_path / "energy.jsonl"
    path.write_text(_record_line() + "\n" + _record_line(**override) + "\n")
    with pytest.raises(RecordError, match=rf"energy.jsonl:2: .*{re.escape(field)}"):
        read_windows(path)


def test_valid_records_still_read(tmp_path: Path):
    path = tmp_path / "energy.jsonl"
    path.write_text(_record_line() + "\n")
    assert read_windows(path)[0].energy_j == 5.0


# ---------------------------------------------------------------- 6. non-finite numbers, booleans
@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (lambda: EnergyMonitor(carbon_intensity=math.nan), "carbon_intensity"),
        (lambda: EnergyMonitor(pue=math.inf), "pue"),
        (lambda: EnergyMonitor(pue=True), "pue"),
        (lambda: EnergyMonitor(watts_per_core=math.inf), "watts_per_core"),
        (lambda: EnergyMonitor(watts_per_core=True), "watts_per_core"),
        (lambda: EnergyMonitor(backend=1), "backend"),
        (lambda: LayerEnergyProfiler(replay_window_s=math.inf), "replay_window_s"),
        (lambda: LayerEnergyProfiler(meter="estimate"), "meter"),
        (lambda: LayerEnergyProfiler(plot="no"), "plot"),
        (lambda: LitClassifier(SimpleCNN(), lr=math.inf), "lr"),
        (lambda: LitClassifier(SimpleCNN(), beta1=True), "beta1"),
        (lambda: LitClassifier(SimpleCNN(), weight_decay=math.nan), "weight_decay"),
        (lambda: RaplMeter("/nonexistent", poll_interval_s=math.nan), "poll_interval_s"),
        (lambda: DigitsDataModule(val_fraction=math.nan), "val_fraction"),
    ],
)
def test_non_finite_and_boolean_numbers_are_rejected_naming_the_argument(factory, field):
    with pytest.raises(ValueError, match=field) as err:
        factory()
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- 7. RAPL: implausible decreases
RANGE_UJ = 262_143_328_850  # a real package's max_energy_range_uj


@pytest.mark.parametrize(
    ("start", "after", "complete", "joules"),
    [
        (RANGE_UJ - 2_000_000, 1_000_000, True, 3.0),  # a real wrap: 2 J to the top, 1 J after
        (5_000_000_000, 1_000, False, 0.0),  # the zone was re-created with a reset counter
        (5_000_000_000, 4_999_999_999, False, 0.0),  # read 1 uJ lower than before
        (5_000_000_000, 5_003_000_000, True, 3.0),  # plain forward step
    ],
)
def test_rapl_takes_only_plausible_decreases_as_wraps(
    tmp_path: Path, monkeypatch, start, after, complete, joules
):
    import lightning_green.energy.rapl as rapl

    clock = iter(range(0, 10_000, 2))  # every counter read is 2 s after the previous one
    monkeypatch.setattr(rapl.time, "monotonic", lambda: float(next(clock)))
    root = make_rapl_tree(tmp_path / "powercap", {0: start}, max_uj=RANGE_UJ)
    meter = RaplMeter(root, poll_interval_s=None)
    meter.start()
    set_uj(root, "intel-rapl:0", after)
    reading = meter.stop()
    (cpu,) = reading.domains
    assert cpu.complete is complete and reading.complete is complete
    assert cpu.joules == pytest.approx(joules)
    assert cpu.joules < 1000  # never 257,145 J or 262,143 J from a glitch
    # The next window, with no glitch, is complete again.
    meter.start()
    set_uj(root, "intel-rapl:0", after + 500_000)
    assert meter.stop().complete
    meter.close()


def test_rapl_says_which_zones_it_could_not_read(tmp_path: Path):
    root = make_rapl_tree(tmp_path / "powercap", {0: 100, 1: 100})
    (root / "intel-rapl:1" / "energy_uj").write_text("not a number\n")
    meter = RaplMeter(root, poll_interval_s=None)
    assert [c.device for c in meter.channels] == ["0"]
    assert "NOT measured" in meter.describe() and "intel-rapl:1" in meter.describe()
    meter.start()
    reading = meter.stop()
    assert any("intel-rapl:1" in z for z in reading.assumptions["rapl_skipped_zones"])
    meter.close()


# ---------------------------------------------------------------- 10. profiler with a 0 J / failing meter
class FrozenMeter(CounterMeter):
    """A counter that never advances (windows shorter than its update period read 0 J)."""

    name = "frozen"

    @property
    def channels(self):
        return (Channel("gpu", "0", "measured:frozen-test-counter"),)

    def read_counters(self):
        return {"gpu:0": 1234.0}


class OSErrorMeter(FrozenMeter):
    """Raises OSError from end_window, as a vanished device does."""

    def _end(self, name, token):
        raise OSError(errno.ENODEV, "device vanished")


@pytest.mark.parametrize("meter_cls", [FrozenMeter, OSErrorMeter])
@pytest.mark.parametrize("mode", ["allocate", "replay"])
def test_profiler_with_a_zero_or_failing_meter_finishes_training_and_says_why(
    tmp_path: Path, meter_cls, mode
):
    prof = LayerEnergyProfiler(
        warmup_steps=1, profile_steps=2, every_n_steps=6, mode=mode, replay_window_s=0.01,
        meter=meter_cls(), output_dir=tmp_path, plot=True,
    )  # fmt: skip
    trainer = _trainer(EnergyMonitor(output_dir=tmp_path), prof, max_epochs=1, limit_train_batches=10)
    with pytest.warns(UserWarning, match="no figure"):
        trainer.fit(_model(), datamodule=DigitsDataModule())
    assert trainer.global_step == 10  # training went on
    rows = prof.rows()
    assert all(r["joules_per_step"] is None and r["share"] is None and not r["complete"] for r in rows)
    assert all(r["note"] for r in rows)
    layers = list(iter_records(tmp_path / "energy.jsonl", "layer"))
    assert layers and all(r.joules_per_step is None and not r.complete and r.note for r in layers)
    text = (tmp_path / "layers.csv").read_text()
    assert "nan" not in text.lower() and "run_id" in text.splitlines()[0]


# ---------------------------------------------------------------- 1/10. failing meter in EnergyMonitor
def test_a_meter_raising_in_end_window_never_ends_the_fit(tmp_path: Path):
    out = tmp_path / "out"
    monitor = EnergyMonitor(output_dir=out)

    class Break(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                est = monitor.meter.meters[0]

                def broken(name, token):
                    raise OSError(errno.EIO, "read error")

                est._end = broken

    with pytest.warns(UserWarning, match="meter failed"):
        _trainer(monitor, Break(), max_epochs=3).fit(_model(), datamodule=DigitsDataModule())
    windows = read_windows(out)
    train = {w.epoch: w for w in windows if w.stage == "train"}
    assert train[0].complete and not train[1].complete and not train[2].complete
    assert all(d["joules"] is None for d in train[2].domains)  # no figure, not a zero
    summary = read_summary(out)
    assert summary["finished"] is True and summary["complete"] is False


# ---------------------------------------------------------------- 12. full disk
def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return r.returncode == 0


def _fill(path: Path) -> None:
    """Write to ``path`` until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_a_full_disk_loses_no_record_and_not_the_training(tmp_path: Path, monkeypatch):
    disk = tmp_path / "disk"
    real = _mount_tmpfs(disk, "256k")
    out = disk / "out"
    filler = disk / "filler"
    full = {"on": False}
    if not real:  # no tmpfs here (not root): inject ENOSPC into the writer's writes instead
        import lightning_green.records as records

        real_write = records._write_all

        def write_all(fd, data):
            if full["on"]:
                os.write(fd, data[: len(data) // 2])  # a partial write, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        monkeypatch.setattr(records, "_write_all", write_all)

    class Disk(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                full["on"] = True
                if real:
                    _fill(filler)
            if trainer.current_epoch == 3:
                full["on"] = False
                filler.unlink(missing_ok=True)

    monitor = EnergyMonitor(output_dir=out)
    try:
        with pytest.warns(RuntimeWarning, match="cannot write"):
            _trainer(monitor, Disk(), max_epochs=4).fit(_model(), datamodule=DigitsDataModule())
        windows = read_windows(out)  # every line parses: no torn record
        assert [w.epoch for w in windows if w.stage == "train"] == [0, 1, 2, 3]  # kept, then written
        assert read_summary(out)["total_j"] == pytest.approx(sum(w.energy_j for w in windows))

        # A disk that stays full to the end: the training still ends normally, records stay in memory.
        full["on"] = True
        if real:
            _fill(filler)
        m2 = EnergyMonitor(output_dir=out)
        t = _trainer(m2, max_epochs=2)
        with pytest.warns(RuntimeWarning, match="cannot write"):
            t.fit(_model(), datamodule=DigitsDataModule())
        assert t.current_epoch == 2
        assert m2.summary()["records_unwritten"] > 0 and m2.summary()["complete"] is False
        assert m2.total_j > 0
        assert all(json.loads(line) for line in (out / "energy.jsonl").read_text().splitlines())
    finally:
        full["on"] = False
        if real:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def test_record_writer_cuts_back_a_failed_write(tmp_path: Path, monkeypatch):
    import lightning_green.records as records

    path = tmp_path / "energy.jsonl"
    path.write_text(_record_line() + "\n")
    writer = RecordWriter(path)
    rec = read_windows(path)[0]
    real_write = records._write_all

    def half_then_full(fd, data):
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records, "_write_all", half_then_full)
    with pytest.warns(RuntimeWarning, match="cannot write"):
        assert writer.write(rec) is False
    assert path.read_text().count("\n") == 1 and writer.pending  # nothing half-written, kept in memory
    monkeypatch.setattr(records, "_write_all", real_write)
    assert writer.write(rec) is True and not writer.pending
    writer.close()
    assert len(read_windows(path)) == 3


def test_records_are_fsynced_in_the_background_not_per_write(tmp_path: Path, monkeypatch):
    import lightning_green.records as records

    synced = []
    real = os.fsync
    monkeypatch.setattr(records.os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    path = tmp_path / "energy.jsonl"
    path.write_text(_record_line() + "\n")
    rec = read_windows(path)[0]
    writer = RecordWriter(path, fsync_every_s=3600)
    for _ in range(5):
        writer.write(rec)
    assert synced == []  # no fsync on the caller's thread per write
    writer.close()
    assert len(synced) == 1  # one at the end
    inline = RecordWriter(path, fsync_every_s=None)
    inline.write(rec)
    assert len(synced) == 2


# ---------------------------------------------------------------- 13. concurrent writers
PROFILE_SCRIPT = textwrap.dedent(
    """
    import sys
    from lightning import Trainer
    from lightning_green import EnergyMonitor, LayerEnergyProfiler
    from lightning_green.data import DigitsDataModule
    from lightning_green.models import LitClassifier, SimpleCNN

    out = sys.argv[1]
    Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_checkpointing=False,
            callbacks=[EnergyMonitor(output_dir=out),
                       LayerEnergyProfiler(warmup_steps=1, profile_steps=2, every_n_steps=3, plot=False)]
            ).fit(LitClassifier(SimpleCNN(conv_layers=1)), datamodule=DigitsDataModule())
    """
)


@pytest.mark.slow
def test_three_profiled_trainings_share_one_folder(tmp_path: Path):
    out = tmp_path / "shared"
    script = tmp_path / "prof.py"
    script.write_text(PROFILE_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([PYTHON, str(script), str(out)], cwd=REPO, env=env, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=300)[1].decode()[-2000:] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert not list(out.glob(".*tmp")) and not list(out.parent.glob(".*tmp"))  # no stray temporary files
    records = list(iter_records(out / "energy.jsonl"))
    assert len({r.run_id for r in records if r.kind == "layer"}) == 3
    assert len({r.run_id for r in records if r.kind == "window"}) == 3
    header, *rows = (out / "layers.csv").read_text().splitlines()
    assert header.startswith("run_id,") and len({r.split(",")[0] for r in rows}) == 1  # names its run


# ---------------------------------------------------------------- 3. interrupted & resumed study (see test_tune_ray)
def test_study_counts_the_energy_of_interrupted_attempts(tmp_path: Path):
    import pandas as pd

    from lightning_green.tune.study import add_attempts, keep_attempts

    exp = tmp_path / "ray" / "study"
    trial = exp / "train_trial_x_00002_2"
    trial.mkdir(parents=True)
    (trial / "energy.jsonl").write_text(_record_line(run_id="attempt1", energy_j=0.69, domains=[]) + "\n")
    keep_attempts(exp, tmp_path / "attempts")  # before the resume
    # Ray restarts the trial; its folder's records are replaced by the new attempt's.
    (trial / "energy.jsonl").write_text(
        _record_line(run_id="attempt2", energy_j=1.5, domains=[], start_time=9.0) + "\n"
    )
    (trial / "run.json").write_text(json.dumps({"run_id": "attempt2"}))
    df = pd.DataFrame({"path": [str(trial)]})
    add_attempts(df, exp, tmp_path / "attempts")
    assert df["other_attempts_j"].tolist() == [pytest.approx(0.69)]
    # Counted once even when the folder still holds both attempts' records.
    (trial / "energy.jsonl").write_text(
        _record_line(run_id="attempt1", energy_j=0.69, domains=[])
        + "\n"
        + _record_line(run_id="attempt2", energy_j=1.5, domains=[], start_time=9.0)
        + "\n"
    )
    add_attempts(df, exp, tmp_path / "attempts")
    assert df["other_attempts_j"].tolist() == [pytest.approx(0.69)]


def test_atomic_json_keeps_the_old_file_when_a_write_fails(tmp_path: Path):
    from lightning_green.records import write_json_atomic

    write_json_atomic(tmp_path / "a.json", {"x": 1})
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "a.json", {"x": math.nan})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert not list(tmp_path.glob(".*tmp")) and not list(tmp_path.parent.glob(".a.json.*tmp"))
    # The temporary file is written beside the folder, not in it: a folder synchroniser (Ray Tune's
    # artifact sync) that lists the folder mid-write never sees a file that then vanishes.
    from lightning_green.records import temporary_path

    assert temporary_path(tmp_path / "a.json").parent == tmp_path.parent
