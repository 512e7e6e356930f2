"""The real CLI on bad input and damaged folders: one line naming the problem, exit status 2, no traceback."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from test_cli import CLI, TINY, cli

from lightning_green.records import read_run, read_windows
from lightning_green.report.cli import main as report_main


def _one_line_error(r, *needles: str) -> str:
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if re.match(r"lightning-green( report)?: ", line)]
    assert len(lines) == 1, r.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_non_finite_config_value_is_one_line_before_training(tmp_path: Path):
    # Every numeric field is checked in test_config_tree (in-process); here, what the user sees.
    r = cli("train", "energy.pue=nan", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    _one_line_error(r, "invalid configuration: energy.pue", "finite number")
    assert not (tmp_path / "run" / "energy.jsonl").exists()


def test_a_key_that_moved_is_one_line_naming_its_new_key(tmp_path: Path):
    # energy.budget_j and the other budget, stopping and profiler keys now live in their callback's
    # own file (conf/callbacks/): the old override says where, before anything trains.
    r = cli("train", "energy.budget_j=5000", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    line = _one_line_error(r, "energy.budget_j moved: use callbacks.energy_budget.max_j=5000")
    assert line.endswith("callbacks.energy_budget.max_j=5000"), line
    assert not (tmp_path / "run" / "energy.jsonl").exists()
    r = cli("profile", "energy.profile_layers=true", f"hydra.run.dir={tmp_path / 'p'}", cwd=tmp_path)
    _one_line_error(r, "energy.profile_layers moved: use callbacks.layer_profiler._enabled_=true")
    r = cli("tune", "energy.stop_gain_per_kj=0.5", f"hydra.run.dir={tmp_path / 't'}", cwd=tmp_path)
    _one_line_error(
        r, "energy.stop_gain_per_kj moved: use callbacks.energy_efficient_stopping.min_gain_per_kj=0.5"
    )
    assert not (tmp_path / "t" / "study.json").exists()  # before Ray starts


def test_a_config_group_set_to_null(tmp_path: Path):
    r = cli("train", "model=null", cwd=tmp_path)
    _one_line_error(r, "model=null: the model group needs one of cnn,")
    # logger=null is what a Lightning user writes for "no logger": Hydra's ~logger
    from lightning_green.cli import _group_nulls

    assert _group_nulls(["logger=null", "trainer.logger=x"]) == (["~logger", "trainer.logger=x"], None)


def test_unusable_backend_and_missing_dataset_are_one_line(tmp_path: Path):
    r = cli("train", "energy.backend=rapl", f"energy.rapl_root={tmp_path / 'none'}", *TINY, cwd=tmp_path)
    _one_line_error(r, "energy.backend=rapl", "energy.backend=auto")
    r = cli("train", "data=mnist", f"data.data_dir={tmp_path / 'data'}", *TINY, cwd=tmp_path)
    _one_line_error(r, "data=mnist", "data.download=true")


def test_profile_with_fewer_steps_than_warmup_says_nothing_was_profiled(tmp_path: Path):
    out = tmp_path / "p"
    r = cli(
        "profile",
        "trainer.limit_train_batches=3",
        "profiler.warmup_steps=5",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    _one_line_error(r, "nothing was profiled", "profiler.warmup_steps")
    assert "layers.csv" not in r.stdout
    assert not (out / "layers.csv").exists() and not (out / "layer_energy.png").exists()


def test_report_counts_each_runs_own_energy_in_a_shared_folder(tmp_path: Path, capsys):
    run = tmp_path / "run"
    for _ in range(2):  # two runs into one folder: one energy.jsonl, the second run.json wins
        r = cli("train", *TINY, f"hydra.run.dir={run}", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
    rec = read_run(run)
    assert len({w.run_id for w in read_windows(run)}) == 2
    r = cli("report", str(run), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(run / "summary.csv") as f:
        row, other = list(csv.DictReader(f))
    assert float(row["energy_j"]) == pytest.approx(rec.energy_j, rel=1e-6)
    assert float(row["total_j"]) == pytest.approx(rec.total_j, rel=1e-6)
    # The first run's run.json was overwritten; its energy is still in the report, from its records.
    first = [w for w in read_windows(run) if w.run_id != rec.run_id]
    assert other["status"].startswith("partial: another run's run.json")
    assert float(other["total_j"]) == pytest.approx(sum(w.energy_j for w in first), rel=1e-6)

    # Damaged folders, through the report command's own entry point (in-process: faster).
    lines = (run / "energy.jsonl").read_text().splitlines()
    (run / "energy.jsonl").write_text("\n".join([lines[0], "{garbage", *lines[1:]]) + "\n")
    with pytest.warns(UserWarning, match="torn line"):
        assert report_main([str(run)]) == 0  # a garbage line mid-file is skipped with a warning

    bad = json.loads(lines[1])
    bad["energy_j"] = "12"
    (run / "energy.jsonl").write_text("\n".join([lines[0], json.dumps(bad), *lines[2:]]) + "\n")
    _in_process_error(report_main, [str(run)], capsys, "energy.jsonl:2", "energy_j")

    (run / "energy.jsonl").write_text("\n".join(lines) + "\n")
    text = (run / "run.json").read_text()
    (run / "run.json").write_text(text[: len(text) // 2])
    _in_process_error(report_main, [str(run)], capsys, "run.json", "truncated")


def _in_process_error(main, argv: list[str], capsys, *needles: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lightning-green report: "), err
    for needle in needles:
        assert needle in err[0], err[0]


def test_study_without_trials_is_one_line(tmp_path: Path):
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.json").write_text(
        json.dumps({"kind": "study", "strategy": {"name": "random"}, "seed": 0})
    )
    _one_line_error(cli("report", str(study), cwd=tmp_path), "trials.csv")


def test_tune_and_compare_fail_before_ray_starts(tmp_path: Path):
    out = tmp_path / "c"
    r = cli("compare", "compare.seeds=[]", f"hydra.run.dir={out}", cwd=tmp_path)
    _one_line_error(r, "compare.seeds")
    assert not (out / "compare.json").exists()
    r = cli(
        "tune", "tune.ray_address=127.0.0.1:1", f"hydra.run.dir={tmp_path / 't'}", cwd=tmp_path, timeout=60
    )
    _one_line_error(r, "tune.ray_address=127.0.0.1:1", "nothing answers")
    r = cli("tune", "tune.resume=true", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    _one_line_error(r, "tune.resume=true", "no study to resume")
    r = cli("tune", "tune.energy_budget_j=nan", f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path)
    _one_line_error(r, "tune.energy_budget_j", "finite")


@pytest.mark.slow
def test_ddp_through_the_console_script(tmp_path: Path):
    run = tmp_path / "ddp"
    env_port = str(29600 + os.getpid() % 1000)
    os.environ["MASTER_PORT"] = env_port
    try:
        r = cli(
            "train", "trainer=ddp", "trainer.accelerator=cpu", *TINY, f"hydra.run.dir={run}",
            "callbacks.layer_profiler._enabled_=true", "profiler.warmup_steps=1", "profiler.profile_steps=2",
            cwd=tmp_path, timeout=300, exe=CLI,
        )  # fmt: skip
    finally:
        os.environ.pop("MASTER_PORT", None)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    windows = read_windows(run)
    assert windows and all(w.world_size == 2 for w in windows)
    keys = {d["device"] for w in windows for d in w.domains}
    assert keys == {"rank0/process", "rank1/process"}
    assert read_run(run).energy_j > 0
    with open(run / "layers.csv") as f:  # each rank profiles its own device; rank 0 writes its figures
        layers = list(csv.DictReader(f))
    assert layers and {(r["rank"], r["world_size"]) for r in layers} == {("0", "2")}
    shutil.rmtree(run / "checkpoints", ignore_errors=True)


def test_budget_from_the_config_tree_stops_the_run(tmp_path: Path):
    run = tmp_path / "run"
    r = cli(
        "train",
        "callbacks.energy_budget.max_j=0.01",
        "trainer.max_epochs=3",
        *(t for t in TINY if not t.startswith("trainer.max_epochs")),
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run / "energy_summary.json").read_text())
    assert summary["stopped_by"].startswith("EnergyBudget: spent")
    assert read_run(run).epochs == 1


@pytest.mark.skipif(shutil.which("srun") is not None, reason="this machine is a SLURM node")
def test_slurm_launcher_off_a_cluster_is_one_line(tmp_path: Path):
    r = cli("train", "-m", "hydra/launcher=slurm", "trainer.max_epochs=1", cwd=tmp_path)
    _one_line_error(r, "no srun found", "hydra/launcher=local")


@pytest.mark.slow
def test_a_gpu_request_on_a_cluster_without_gpus_fails_before_trials(tmp_path: Path):
    from conftest import run_in_loopback_netns

    r = run_in_loopback_netns(
        [CLI, "tune", "tune.gpus_per_trial=1", "trainer=gpu", f"hydra.run.dir={tmp_path / 'gpu'}"],
        timeout=120, cwd=tmp_path,
    )  # fmt: skip
    _one_line_error(r, "tune.gpus_per_trial=1", "0 GPU(s)", "tune.gpus_per_trial=0 trainer=cpu")
    assert not (tmp_path / "gpu" / "trials.csv").exists()


def test_an_unusable_output_folder_is_one_line_before_training(tmp_path: Path):
    # An existing file and a path under /proc are checked in-process (test_infra_faults); here, what
    # the user sees, and a read-only mount, whose rename used to fail with "Invalid cross-device link".
    (tmp_path / "a-file").write_text("x")
    r = cli("train", f"output_dir={tmp_path / 'a-file'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    _one_line_error(r, f"invalid configuration: output_dir={tmp_path / 'a-file'}: is a file, not a folder")
    assert not (tmp_path / "run" / "energy.jsonl").exists()
    from test_infra_faults import in_mount_namespace

    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    r = in_mount_namespace(
        [(src, ro, True)],
        [[CLI, "train", *TINY, f"output_dir={ro}", f"hydra.run.dir={tmp_path / 'run2'}"]],
        cwd=tmp_path,
    )
    line = _one_line_error(r, f"output_dir={ro}: is not writable (Read-only file system)")
    assert "cross-device" not in r.stderr, line
    assert not list(src.iterdir())
