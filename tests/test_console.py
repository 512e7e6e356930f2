"""What ``report``, ``tune`` and ``compare`` print fits in 100 columns (the files keep every
column), and says what a newcomer looks for: the trials best first by the study's objective (named),
and the best configuration with its accuracy and energy."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_plots import fake_runs, fake_trials, write_comparison, write_study

from lightning_green.report import console
from lightning_green.report.console import WIDTH, console_table, fits
from lightning_green.report.ranking import best_trial, rank_trials
from lightning_green.report.runs import main_effects, runs_console, write_tables


def _fits(text: str) -> None:
    too_long = [line for line in text.splitlines() if len(line) > WIDTH]
    assert not too_long, too_long


def test_console_doctest():
    assert doctest.testmod(console).failed == 0


def test_a_wide_table_keeps_its_first_columns_and_the_ends_of_run_folders():
    df = pd.DataFrame({
        "run": [f"/a/very/long/path/to/a/multirun/2026-01-01_00-00-00/{i}" for i in range(12)],
        **{f"model.factor_{k}": np.arange(12) * k for k in range(6)},
        "test_acc": np.linspace(0.8, 0.9, 12), "energy_j": np.linspace(10, 1000, 12),
        "source": ["cpu=estimated:cpu-time, gpu=measured:nvml"] * 12, "status": ["finished"] * 12,
    })  # fmt: skip
    text = console_table(df, ["run", "test_acc", "energy_j", *df.columns[1:7], "source", "status"])
    _fits(text)
    header = text.splitlines()[0]
    assert header.startswith("| run") and "test_acc" in header and "energy_j" in header
    assert "| factor_0 |" in header  # headers lose their prefixes, never their names
    assert text.splitlines()[2].split("|")[1].strip().endswith("00-00-00/0")  # the run's end kept
    assert text.splitlines()[-1].split("|")[1].strip().endswith("/11")
    assert console_table(df.head(1), ["run"], width=20).count("\n") == 2 and fits(
        console_table(df, width=20), 20
    )


@pytest.mark.parametrize("n", [2, 8, 30])
def test_runs_report_fits_in_100_columns(n: int, tmp_path: Path):
    df = fake_runs(n, mixed=n == 30)
    df.loc[0, "status"] = "partial: no run.json (crashed or interrupted); energy from its records"
    df.loc[1, "other_cpu_cores"] = 0.9
    effects = main_effects(df) if n == 8 else None
    write_tables(df, tmp_path, effects)
    text = runs_console(tmp_path)
    _fits(text)
    assert "| run " in text and f"{n} runs in multirun/2026-01-01_00-00-00/" in text
    assert "| partial " in text and "were measured while other processes" in text
    assert ("Main effects on training energy" in text) == (n == 8)
    assert max(map(len, (tmp_path / "summary.md").read_text().splitlines())) > WIDTH  # the file keeps it all


@pytest.mark.parametrize("strategy", ["bayes", "multi", "efficient"])
def test_report_on_a_study_lists_trials_by_its_objective(
    strategy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    from lightning_green.report.cli import main

    monkeypatch.chdir(tmp_path)
    trials = fake_trials(30, 3)
    write_study(Path("study"), trials, strategy)
    assert main(["study"]) == 0
    out = capsys.readouterr().out
    _fits(out)
    ranked, objective = rank_trials({"strategy": {"name": strategy}, "accuracy_metric": "val_acc",
                                     "energy_metric": "energy_j", "target_fraction": 0.95}, trials)  # fmt: skip
    assert f"Trials, best first by {objective.text}" in " ".join(out.split())
    rows = [line.split("|") for line in out.splitlines() if line.startswith("|")]
    printed = [r[2].strip() for r in rows if r[1].strip().isdigit()]
    assert printed == list(ranked["trial_id"][:10])
    summary = (Path("study") / "summary.md").read_text()
    assert objective.text in summary
    best, _ = best_trial({"strategy": {"name": strategy}, "target_fraction": 0.95}, trials)
    assert f"trial {best['trial_id']}: accuracy {best['accuracy']:.4f}" in " ".join(out.split())
    assert f"optimizer.lr={best['param.optimizer.lr']:.6g}" in out
    acc, en = trials["accuracy"].to_numpy(), trials["energy_j"].to_numpy()
    if strategy == "efficient":  # the cheapest trial at 95% of the best accuracy
        reached = acc >= 0.95 * acc.max()
        assert best["energy_j"] == en[reached].min() and objective.text.startswith("least energy_j")
        assert list(ranked["energy_j"][: reached.sum()]) == sorted(en[reached])
    else:
        assert best["accuracy"] == acc.max()


def test_ranking_puts_failed_and_unknown_trials_last():
    trials = fake_trials(6, 1)
    trials.loc[0, "accuracy"] = 0.999
    trials.loc[0, "status"] = "ERROR"
    trials.loc[1, "accuracy"] = np.nan
    ranked, _ = rank_trials({"strategy": {"name": "random"}}, trials)
    assert list(ranked.index[-2:]) == [1, 0]
    assert list(ranked["accuracy"][:4]) == sorted(trials["accuracy"][2:], reverse=True)


@pytest.mark.parametrize("n,seeds", [(2, 1), (8, 3), (30, 2)])
def test_report_on_a_comparison_fits_and_names_the_best_configuration(
    n: int, seeds: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    from lightning_green.report.cli import main

    monkeypatch.chdir(tmp_path)
    write_comparison(Path("cmp"), n, seeds)
    assert main(["cmp"]) == 0
    out = capsys.readouterr().out
    _fits(out)
    assert "| strategy | seeds | best acc | trials J |" in out and "Differences" in out
    flat = " ".join(out.split())
    assert "Best configuration of all" in flat and "Cheapest trial to reach the target" in flat
    assert "optimizer.lr=" in out and "model.conv_layers=" in out
    assert max(map(len, (Path("cmp") / "compare.md").read_text().splitlines())) > WIDTH


def test_tune_prints_the_best_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from lightning_green.tune_cli import _print_study

    out = write_study(tmp_path / "s", fake_trials(16, 2), "random")
    _print_study(out)
    text = capsys.readouterr().out
    _fits(text.replace(str(out), "<out>"))
    best = fake_trials(16, 2).sort_values("accuracy").iloc[-1]
    flat = " ".join(text.split())
    assert f"Best configuration (highest val_acc, ties by lower energy_j), trial {best['trial_id']}" in flat
    assert f"training energy {best['energy_j']:.1f} J" in flat and "| rank |" not in text
