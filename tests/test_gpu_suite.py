"""The GPU suite's dry run (``benchmarks/gpu_suite.sh --dry-run``): every part runs its code on the
CPU with stand-ins for the counters, so the one command a lent GPU gets never rots. About 45 s on an
idle 2-core machine (four job processes import Lightning at once), hence slow."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = {"1": "monitor_vs_reader", "2": "edge_cost", "3": "forecast", "4": "layer_ablation",
         "5": "paper_rq2", "6": "shared_gpu"}  # fmt: skip


@pytest.mark.slow
def test_the_dry_run_reports_every_part_and_writes_the_summary(tmp_path):
    out, archive = tmp_path / "suite", tmp_path / "device_out" / "gpu_suite.tar.gz"
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", _python())}
    r = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--dry-run", "--out", str(out), "--archive", str(archive)],
        capture_output=True, text=True, timeout=580, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True
    assert summary["imported_but_absent_on_gpu_machine"] == []  # no Hydra, Ray or Zeus on the GPU image
    assert {k: p["key"] for k, p in summary["parts"].items()} == PARTS
    for number, part in summary["parts"].items():
        # every part's code runs on the CPU (a stand-in counter where it needs one); none failed
        assert part["status"] == "ran", (number, part.get("reason"))
        record = json.loads((out / f"part{number}_{part['key']}.json").read_text())
        assert record["headline"] and record["lines"], number
    for number in ("1", "2", "6"):  # the counter-reading parts say what stood in for NVML
        assert summary["parts"][number]["stand_in"]
    edge = json.loads((out / "part2_edge_cost.json").read_text())
    assert "no NVML" in edge["data"]["raw"]["skipped"]  # what only NVML itself can show: skipped, with why

    text = (out / "summary.txt").read_text()
    assert text.startswith("lightning-green GPU suite -- DRY RUN")
    for number, key in PARTS.items():
        assert f"[{number}] {key} -- " in text
    # the files a lent machine sends back: the whole folder as one archive, the summary beside it
    assert (archive.parent / "summary.txt").read_text() == text
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert f"{summary['name']}/summary.json" in names
    assert {f"{summary['name']}/part{n}_{k}.json" for n, k in PARTS.items()} <= names


def _python() -> str:
    import sys

    return sys.executable
