"""Real infrastructure: bind-mounted output folders, records deleted mid-fit, impossible settings."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import PYTHON
from hydra import compose, initialize_config_dir
from lightning import Trainer
from lightning.pytorch.callbacks import Callback

import lightning_green.records as records
from lightning_green import EnergyMonitor
from lightning_green.carbon import CarbonModel
from lightning_green.config import CONF_DIR, ConfigError, check_threads, usable_cpus
from lightning_green.data import DigitsDataModule
from lightning_green.experiment import build_run
from lightning_green.models import LitClassifier, SimpleCNN
from lightning_green.records import RecordWriter, WindowRecord, read_summary, read_windows


# ---------------------------------------------------------------- private mount namespaces
@functools.cache
def mount_namespace_problem() -> str | None:
    """Why bind mounts in a private mount namespace cannot be made here; ``None`` when they can."""
    if os.geteuid() != 0:
        return "bind mounts in a private mount namespace need root"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "needs unshare and mount"
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"lightning-green-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        r = subprocess.run(
            ["unshare", "-m", "mount", "--bind", str(probe), str(probe)], capture_output=True, text=True
        )
    finally:
        probe.rmdir()
    return None if r.returncode == 0 else f"unshare -m / mount --bind not permitted ({r.stderr.strip()})"


def in_mount_namespace(
    mounts: list[tuple[Path, Path, bool]], commands: list[list[str]], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``commands`` (one after another, stopping at the first failure) in a private mount
    namespace where each ``(source, target, read_only)`` is bind-mounted; skip where that is not
    permitted. Nothing is mounted outside the namespace, and it ends with the commands."""
    problem = mount_namespace_problem()
    if problem:
        pytest.skip(problem)
    steps = []
    for source, target, read_only in mounts:
        target.mkdir(parents=True, exist_ok=True)
        steps.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(str(target))}")
        if read_only:  # a bind mount takes ro only on a remount
            steps.append(f"mount -o remount,bind,ro {shlex.quote(str(target))}")
    steps += [shlex.join(c) for c in commands]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.run(
        ["unshare", "-m", "bash", "-c", " && ".join(steps)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


# ---------------------------------------------------------------- 1. a bind-mounted output folder
ATOMIC_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import lightning_green.records as records

    out, outer = Path(sys.argv[1]), Path(sys.argv[2])
    # The folder is a mount point of the same file system (same st_dev): the temporary file goes in it.
    assert records.temporary_path(out / "a.json").parent == out, records.temporary_path(out / "a.json")
    records.write_json_atomic(out / "a.json", {"n": 1})
    # A mount the check cannot see (no /proc/self/mountinfo): the rename's EXDEV is retried inside.
    records._is_mount_point = lambda folder, parent: False
    assert records.temporary_path(out / "a.json").parent == outer
    records.write_json_atomic(out / "a.json", {"n": 2})
    print("written", json.loads((out / "a.json").read_text())["n"])
    """
)


@pytest.mark.slow
def test_a_bind_mounted_output_folder_gets_the_summary_and_run_json(tmp_path: Path):
    from test_cli import CLI, TINY

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    script = tmp_path / "atomic.py"
    script.write_text(ATOMIC_SCRIPT)
    r = in_mount_namespace(
        [(src, out, False)],
        [
            [PYTHON, str(script), str(out), str(tmp_path)],
            [CLI, "train", *TINY, "threads=1", f"output_dir={out}", f"hydra.run.dir={tmp_path / 'run'}"],
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "written 2" in r.stdout
    assert "cross-device" not in r.stderr
    # What was written through the mount is in its source folder.
    assert json.loads((src / "a.json").read_text()) == {"n": 2}
    summary = read_summary(src)
    assert summary["finished"] is True and summary["records_unwritten"] == 0
    run = records.read_run(src)
    assert run.total_j == pytest.approx(sum(w.energy_j for w in read_windows(src)), rel=1e-6)
    # No temporary file is left behind, in the folder or beside it.
    assert not list(src.glob(".*.tmp")) and not list(tmp_path.glob(".*.tmp"))


# ---------------------------------------------------------------- 3. records deleted mid-fit
def _record(i: int) -> WindowRecord:
    return WindowRecord(
        run_id="r", stage="train", epoch=i, global_step=i, start_time=float(i), end_time=i + 1.0,
        seconds=1.0, energy_j=float(i + 1), domains=[], sources={}, complete=True,
    )  # fmt: skip


class DeleteFolder(Callback):
    """Deletes the records folder at the end of training epoch ``epoch``, as a clean-up script might."""

    def __init__(self, folder: Path, epoch: int) -> None:
        self.folder, self.epoch = folder, epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            shutil.rmtree(self.folder)


def test_records_folder_deleted_mid_fit_keeps_every_window(tmp_path: Path):
    out = tmp_path / "out"
    monitor = EnergyMonitor(output_dir=out, rapl_root=tmp_path / "no-rapl")
    trainer = Trainer(
        callbacks=[monitor, DeleteFolder(out, epoch=1)],
        max_epochs=3,
        limit_train_batches=4,
        limit_val_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with pytest.warns(RuntimeWarning, match="deleted or replaced during the run"):
        trainer.fit(LitClassifier(SimpleCNN(conv_layers=1, linear_layers=1)), datamodule=DigitsDataModule())
    windows = read_windows(out)
    assert len(windows) == monitor.summary().windows
    assert [w.epoch for w in windows if w.stage == "train"] == [0, 1, 2]
    assert sum(w.energy_j for w in windows) == pytest.approx(monitor.total_j, rel=1e-9)
    assert read_summary(out)["total_j"] == pytest.approx(monitor.total_j, rel=1e-9)


@pytest.mark.parametrize("how", ["folder deleted", "file replaced"])
def test_record_writer_writes_its_records_again_when_the_file_vanishes(tmp_path: Path, how: str):
    path = tmp_path / "out" / "energy.jsonl"
    writer = RecordWriter(path)
    writer.write_many([_record(0), _record(1)])
    if how == "folder deleted":
        shutil.rmtree(path.parent)
    else:  # another file moved onto it: a different inode, without our lines
        (tmp_path / "other.jsonl").write_text(records.to_json(_record(9)) + "\n")
        os.replace(tmp_path / "other.jsonl", path)
    # close() alone restores them: the file may vanish after the last window.
    with pytest.warns(RuntimeWarning, match="wrote this run's 2 earlier record"):
        writer.close()
    assert sorted(w.epoch for w in read_windows(path)) == ([0, 1] if how == "folder deleted" else [0, 1, 9])
    writer.write(_record(2))  # the restored file is the one appended to now: nothing written twice
    writer.close()
    assert sorted(w.epoch for w in read_windows(path) if w.epoch != 9) == [0, 1, 2]


def test_record_writer_writes_nothing_twice_when_its_file_is_replaced_by_a_copy(tmp_path: Path):
    path = tmp_path / "energy.jsonl"
    writer = RecordWriter(path)
    writer.write_many([_record(0), _record(1)])
    # `sed -i`, an editor's save, a sync tool copying back: a new file holding the same lines, or
    # fewer of them (the first cut off).
    (tmp_path / "copy").write_bytes(path.read_bytes().split(b"\n", 1)[1])
    os.replace(tmp_path / "copy", path)
    with pytest.warns(RuntimeWarning, match="wrote this run's 1 earlier record"):
        writer.write(_record(2))
    writer.close()
    assert sorted(w.epoch for w in read_windows(path)) == [0, 1, 2]


def test_record_writer_keeps_a_bounded_memory_of_what_it_wrote(tmp_path: Path, monkeypatch):
    path = tmp_path / "energy.jsonl"
    line = len(records.to_json(_record(0))) + 1
    monkeypatch.setattr(records, "KEEP_WRITTEN_BYTES", 2 * line + line // 2)  # two records fit
    writer = RecordWriter(path)
    for i in range(4):
        writer.write(_record(i))
    path.unlink()
    with pytest.warns(RuntimeWarning, match="the 2 oldest were beyond"):
        writer.write(_record(4))
    writer.close()
    assert [w.epoch for w in read_windows(path)] == [2, 3, 4]


# ---------------------------------------------------------------- 9. physically impossible settings
def _compose(overrides: list[str], tmp_path: Path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    cfg.output_dir = str(tmp_path / "out")
    return cfg


def test_threads_are_bounded_by_the_cpus_of_this_process():
    most = 4 * usable_cpus()
    check_threads(None)
    check_threads(1)
    check_threads(most)
    for bad in (0, most + 1, 1000, True, 2.0):
        with pytest.raises(ConfigError, match=rf"threads must be null .* >= 1 and <= {most} .*got {bad!r}$"):
            check_threads(bad)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "threads=1000",
            r"threads must be null \(PyTorch's default\) or an integer >= 1 and <= \d+ \(4 x the ",
        ),
        (
            "energy.carbon_intensity=1e308",
            r"energy\.carbon_intensity must be a finite number >= 0 and <= 5000 \(gCO2e per kWh\), got 1e\+308; "
            r"the dirtiest grids are about 1000-1300 g/kWh",
        ),
        (
            "energy.carbon_intensity='6000'",
            r"energy\.carbon_intensity must be .* <= 5000 .*got 6000\.0",
        ),
        (
            "energy.pue=7",
            r"energy\.pue must be a finite number >= 1 and <= 5 .*got 7\.0; data centres average 1\.58",
        ),
    ],
)
def test_impossible_settings_fail_before_training(override: str, message: str, tmp_path: Path):
    with pytest.raises(ConfigError, match=message) as err:
        build_run(_compose([override], tmp_path))
    assert "\n" not in str(err.value)


def test_the_dirtiest_grid_and_a_poor_facility_are_accepted():
    model = CarbonModel("TM", pue=2.5)  # Turkmenistan, the table's dirtiest grid
    assert model.intensity_g_per_kwh > 1000
    assert CarbonModel(5000, pue=5).co2e_g(3.6e6) == pytest.approx(25000)


def test_an_impossible_live_value_is_not_used():
    from lightning_green.carbon import Intensity, IntensityProvider

    class Broken(IntensityProvider):
        def current(self) -> Intensity:
            return Intensity(1e308, "XX", "a broken feed", "test", method="live:test")

    model = CarbonModel(Broken())
    with pytest.warns(UserWarning, match="provider failed .*intensity must be .*<= 5000"):
        assert model.intensity_g_per_kwh == 475.0  # the table's world average, labelled


# ---------------------------------------------------------------- 16. an unusable output folder
@pytest.mark.parametrize(
    ("where", "problem"),
    [
        ("file", "is a file, not a folder"),
        ("under a file", "cannot be created (Not a directory)"),
        ("/proc", "cannot be created"),
    ],
)
def test_an_unusable_output_folder_fails_before_training(tmp_path: Path, where: str, problem: str):
    (tmp_path / "a-file").write_text("x")
    path = {
        "file": tmp_path / "a-file",
        "under a file": tmp_path / "a-file" / "out",
        "/proc": Path("/proc/lightning-green-out"),
    }[where]
    cfg = _compose([], tmp_path)
    cfg.output_dir = str(path)
    with pytest.raises(ConfigError, match="^" + re.escape(f"output_dir={path}: {problem}")) as err:
        build_run(cfg)
    assert "\n" not in str(err.value)


def test_a_new_output_folder_is_made_before_training(tmp_path: Path):
    cfg = _compose([], tmp_path)
    cfg.output_dir = str(tmp_path / "a" / "b")
    build_run(cfg)
    assert (tmp_path / "a" / "b").is_dir()
