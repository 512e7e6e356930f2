"""The real `lightning-green` CLI: train, multirun, report, submitit, and a non-editable install."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO
from helpers import zygote
from helpers.grid_server import grid_server

from lightning_green.records import read_run, read_windows

CLI = str(Path(sys.executable).with_name("lightning-green"))
TINY = [
    # no RAPL, whatever the host has (trainer=cpu: no GPU either), so every figure is the estimate
    "energy.rapl_root=/nonexistent-powercap",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
]


def cli(*args: str, cwd: Path, timeout: float = 300, exe: str | None = None) -> subprocess.CompletedProcess:
    """``lightning-green *args`` in ``cwd``: the console script ``exe`` as a process of its own, or
    by default its function in a child forked from a process that has imported Lightning
    (tests/helpers/zygote.py: the same process but for the import, which costs about 5 s here)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    if exe is None:
        return zygote.shared().run(None, cwd, env, timeout, argv=["lightning-green", *args])
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_help_lists_commands(tmp_path: Path):
    r = cli("--help", cwd=tmp_path)
    assert r.returncode == 0 and "train" in r.stdout and "report" in r.stdout
    r = cli("bogus", cwd=tmp_path)
    assert r.returncode == 2 and "unknown command" in r.stderr


def test_train_single_run_writes_records_and_summary(tmp_path: Path):
    r = cli("train", *TINY, "threads=1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "test accuracy" in r.stdout and "estimated:cpu-time" in r.stdout
    # one line saying what is measured (fit and test share the monitor), and the whole records path
    assert (r.stdout + r.stderr).count("lightning-green EnergyMonitor:") == 1
    assert str(tmp_path / "run") in r.stdout
    # Hydra's job log holds what Lightning and lightning-green logged: the run folder alone says what
    # was measured and how
    assert "lightning-green EnergyMonitor:" in (tmp_path / "run" / "train.log").read_text()
    run = read_run(tmp_path / "run")
    assert run.test_acc is not None and 0 <= run.test_acc <= 1
    # where and how it computed: the pinned thread count, host, load at start and end
    assert run.machine["threads"] == 1 and run.machine["host"] and run.machine["cpus"] >= 1
    assert run.machine["load_avg_end"] is None or run.machine["other_load"] >= 0
    # the notebook loader: one row per window, numbers as numbers
    from lightning_green.report import load_records

    windows_df = load_records(tmp_path / "run")
    assert set(windows_df["stage"]) >= {"train", "validate", "test"}
    assert windows_df["energy_j"].dtype.kind == "f" and windows_df["cpu_j"].sum() == pytest.approx(
        windows_df["energy_j"].sum()
    )
    assert run.energy_j > 0 and run.sources == {"cpu": "estimated:cpu-time"}
    windows = read_windows(tmp_path / "run")
    # windows are written as they close: the epoch-end validation closes before its train epoch
    assert [w.stage for w in windows] == ["sanity_check", "validate", "train", "test"]
    assert (tmp_path / "run" / "metrics.csv").is_file()  # the default CSV logger, in the run folder


def test_multirun_then_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    sweep = tmp_path / "sweep"
    r = cli("train", "-m", "model.conv_layers=1,2", "model.linear_layers=1,2", *TINY, f"hydra.sweep.dir={sweep}",
            cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1", "2", "3"]
    # The jobs share one process: its warm-up runs once, before job 0's windows, not inside them.
    warmups = [read_run(sweep / str(j)).machine["process_warmup_s"] for j in range(4)]
    assert warmups[0] > 0 and warmups[1:] == [0.0, 0.0, 0.0]
    r = cli("report", str(sweep), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["model.conv_layers"]), int(r["model.linear_layers"])) for r in rows] == [
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
    ]
    for row in rows:
        assert float(row["energy_j"]) > 0 and row["source"] == "cpu=estimated:cpu-time"
        assert float(row["dynamic_j"]) == pytest.approx(float(row["energy_j"]))  # an estimate is dynamic
        assert int(row["params"]) > 0 and int(row["flops_per_sample"]) > 0 and row["status"] == "finished"
    assert int(rows[2]["flops_per_sample"]) > int(rows[0]["flops_per_sample"])
    for name in ("summary.md", "main_effects.csv", "accuracy_vs_energy.png", "energy_by_factor.png"):
        assert (sweep / name).stat().st_size > 0, name
    assert "eta^2" in (sweep / "summary.md").read_text()  # a 2x2 factorial design: main effects
    with open(sweep / "main_effects.csv") as f:
        effects = list(csv.DictReader(f))
    assert {r["response"] for r in effects} == {"energy_j", "dynamic_j"}
    assert {r["factor"] for r in effects} == {"model.conv_layers", "model.linear_layers"}

    # one factor (conv layers at one linear depth): a plain comparison, no eta^2 = 1.000
    one = tmp_path / "one"
    for job in ("0", "2"):
        shutil.copytree(sweep / job, one / job)
    r = cli("report", str(one), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    text = (one / "summary.md").read_text()
    assert (
        "Not a factorial design" in text and "eta^2 =" not in text and not (one / "main_effects.csv").exists()
    )

    # a crashed run (records, no run.json) is reported as partial, not refused
    (one / "2" / "run.json").unlink()
    r = cli("report", str(one), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(one / "summary.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert rows["2"]["status"].startswith("partial") and float(rows["2"]["energy_j"]) > 0
    assert rows["2"]["model.conv_layers"] == "2" and rows["0"]["status"] == "finished"

    # named runs and folders of runs side by side (in-process: the same main the CLI calls)
    from lightning_green.report.cli import main as report_main
    from lightning_green.report.runs import load_runs, point_label

    cmp = tmp_path / "cmp"
    assert report_main([str(sweep / "0"), str(sweep / "3"), str(one), "--out", str(cmp)]) == 0
    printed = capsys.readouterr().out
    assert "| run " in printed and str(cmp / "summary.csv") in printed  # the table on the console too
    with open(cmp / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == [str(sweep / "0"), str(sweep / "3"), f"{one}/0", f"{one}/2"]
    assert [r["status"][:7] for r in rows] == ["finishe", "finishe", "finishe", "partial"]
    assert (cmp / "accuracy_vs_energy.png").stat().st_size > 0
    # plots label points by the swept values, not by run folder
    df = load_runs(sweep)
    assert (
        point_label(df.iloc[3], ["model.conv_layers", "model.linear_layers"])
        == "conv_layers=2, linear_layers=2"
    )
    assert report_main([str(sweep), str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_invalid_override_fails_before_training(tmp_path: Path):
    r = cli("train", "model.conv_layers=0", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert r.returncode == 2  # a one-line message, not a traceback
    assert "model.conv_layers must be an integer >= 1, got 0" in r.stderr
    assert not (tmp_path / "run" / "energy.jsonl").exists()
    r = cli("train", "model=lstm", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert r.returncode != 0 and "model" in r.stderr and "cnn" in r.stderr  # lists the available options


def test_report_on_empty_folder_is_a_clear_error(tmp_path: Path):
    r = cli("report", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and "no run.json" in r.stderr


@pytest.mark.slow
def test_submitit_local_launcher_runs_two_jobs(tmp_path: Path):
    sweep = tmp_path / "sweep"
    r = cli(
        "train",
        "-m",
        "hydra/launcher=local",
        "model.conv_layers=1,2",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    runs = sorted(p.parent.name for p in sweep.rglob("run.json"))
    assert runs == ["0", "1"]
    assert list(sweep.rglob("*_submitted.pkl")) or list(sweep.rglob(".submitit"))  # went through submitit


@pytest.mark.slow
def test_non_editable_install_runs_with_shipped_configs(tmp_path: Path):
    wheel_dir = tmp_path / "wheel"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # Reuse this environment's heavy dependencies (torch, ...) without its editable lightning_green:
    # a path added by a .pth file does not run the .pth files inside it (the editable finder).
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    site.mkdir(parents=True, exist_ok=True)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    vpy = venv / "bin" / "python"
    wheel = next(wheel_dir.glob("lightning_green-*.whl"))
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    probe = subprocess.run(
        [str(vpy), "-c", "import lightning_green, sys; print(lightning_green.__file__)"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert str(site) in probe.stdout, probe.stdout + probe.stderr  # the installed copy, not the checkout
    r = subprocess.run(
        [str(vpy), "-m", "lightning_green.cli", "train", *TINY, f"hydra.run.dir={work / 'run'}"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_run(work / "run").energy_j > 0


def test_profile_command_and_profiler_switched_on_from_config(tmp_path: Path):
    r = cli("profile", "trainer.limit_train_batches=12", f"hydra.run.dir={tmp_path / 'p'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Energy per layer type" in r.stdout and "Conv" in r.stdout and "unattributed" in r.stdout
    with open(tmp_path / "p" / "layer_types.csv") as f:
        types = {row["layer_type"] for row in csv.DictReader(f)}
    assert {"Conv", "Linear", "ReLU", "unattributed"} <= types

    r = cli(
        "train",
        "energy=profile",
        *TINY,
        "trainer.limit_train_batches=10",
        f"hydra.run.dir={tmp_path / 't'}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "t" / "layers.csv").is_file() and (tmp_path / "t" / "layer_energy.png").is_file()
    with open(tmp_path / "t" / "metrics.csv") as f:
        assert any(row.get("layer_energy/Conv_j") for row in csv.DictReader(f))


def test_train_logs_energy_to_mlflow_and_wandb_beside_csv(tmp_path: Path):
    from helpers.wandb_offline import history
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "ml"
    # with live GB intensity from a loopback server in the Carbon Intensity API's format
    with grid_server([150.0]) as (server, url):
        r = cli("train", "logger=[csv,mlflow,wandb]", "logger.wandb.offline=true", *TINY,
                f"hydra.run.dir={run_dir}", "energy.carbon_live=uk:13", f"energy.carbon_live_url={url}",
                cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert server.requests and set(server.requests) == {"/regional/regionid/13"}
    assert "150.0 g/kWh" in r.stdout and "live:uk-carbon-intensity" in r.stdout  # said on the console
    carbon = read_run(run_dir).carbon
    assert carbon["place"] == "GB-region-13" and carbon["effective_g_per_kwh"] == pytest.approx(150.0)
    assert (run_dir / "metrics.csv").is_file()  # the CSV logger too
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("lightning-green").experiment_id])
    stored = run.data.metrics
    assert stored["energy/total_j"] > 0 and "energy/train_epoch_j" in stored
    assert stored["carbon/intensity_g_per_kwh"] == 150.0
    # the last value logged is after the test run: the run's total
    assert stored["energy/total_j"] == pytest.approx(read_run(run_dir).total_j, rel=0.05)
    assert not (tmp_path / "mlruns").exists()  # nothing written outside the run folder
    # W&B, offline: read back what it stored in its run log
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
    logged = [row for row in history(wandb_run) if "energy/total_j" in row]
    assert logged and logged[-1]["energy/total_j"] == pytest.approx(stored["energy/total_j"])
    assert logged[-1]["carbon/intensity_g_per_kwh"] == 150.0
    assert any("energy/train_epoch_j" in row for row in logged)
    assert not (tmp_path / "wandb").exists()


def test_a_run_on_a_loaded_machine_says_so_and_the_report_shows_it(tmp_path: Path):
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        r = cli("train", "threads=1", "trainer.max_epochs=2", "energy.rapl_root=/nonexistent-powercap",
                f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)  # fmt: skip
    finally:
        hog.kill()
        hog.wait()
    assert r.returncode == 0, r.stderr[-3000:]
    machine = read_run(tmp_path / "run").machine
    assert machine["other_cpu_cores"] > 0.5  # the busy loop kept a core busy
    assert "other processes kept" in r.stderr
    r = cli("report", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "measured while other processes kept more than" in (tmp_path / "run" / "summary.md").read_text()
