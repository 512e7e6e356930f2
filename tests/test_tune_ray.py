"""Studies on real Ray, every one in a private network namespace so its traffic stays on loopback."""

from __future__ import annotations

import json
import os
import pickle
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import PYTHON, REPO, run_in_loopback_netns
from helpers.receivers import dumped, prometheus_samples
from omegaconf import OmegaConf

from lightning_green.records import read_run, read_summary, read_windows
from lightning_green.report.pareto import pareto_mask
from lightning_green.report.studies import study_metrics
from lightning_green.tune.cost_aware import startup_points
from lightning_green.tune.space import parse_space

pytestmark = pytest.mark.slow
BIN = Path(os.sys.executable).parent
TINY = [
    "energy.rapl_root=/nonexistent-powercap",  # the estimate, whatever the host has
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    # Ray's own per-trial files (its TensorBoard writer costs ~2 s of CPU per study to import):
    # off here; the tests that leave out this item (efficient, two-node, interrupted) keep them.
    "tune.ray_loggers=false",
]


def bash(script: str, tmp_path: Path, timeout: float = 400, env: dict | None = None):
    """Run ``script`` in loopback-only network and PID namespaces (conftest); it must succeed."""
    path = tmp_path / "run.sh"
    path.write_text("set -euo pipefail\nexport PATH=" + str(BIN) + ":$PATH\n" + textwrap.dedent(script))
    r = run_in_loopback_netns(["bash", str(path)], timeout=timeout, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + "\n--- stderr ---\n" + r.stderr[-5000:]
    return r


#: Pushes to the loopback receiver go straight to it, whatever proxy the machine names.
NO_PROXY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
#: The override that gives every trial (and the study) a Pushgateway exporter at ``$url``.
PUSH = "\"callbacks.energy_monitor.exporters=[{_target_:lightning_green.export.PushgatewayExporter,gateway:'$url'}]\""


def start_gateway(folder: Path) -> str:
    """Shell lines starting a Pushgateway stand-in (tests/helpers/receivers.py; pid in $receiver,
    for the script's trap to kill) inside the test's network namespace; its URL in $url."""
    return f"""
        python {REPO / "tests" / "helpers" / "receivers.py"} {folder} &
        receiver=$!
        for i in $(seq 1 100); do [ -f {folder}/url ] && break; sleep 0.1; done
        url=$(cat {folder}/url)
    """


def pushed_energy(folder: Path, labels: dict[str, str]) -> dict[str, list]:
    """The energy samples of the last push of each group (each push replaces its group), by
    trial id (``"study"`` for the study's own), checked to carry the study's ``labels``."""
    last = {push.path: prometheus_samples(push.body) for push in dumped(folder)}
    out: dict[str, list] = {}
    for path, samples in last.items():
        assert path.startswith("/metrics/job/lightning-green/instance/"), path
        energy = samples["lightning_green_energy_joules_total"]
        trial = energy[0][0].get("trial", "study")
        for lab, _ in energy:  # every figure carries its study, and its trial's id or none
            assert {k: lab.get(k) for k in labels} == labels and lab.get("trial", "study") == trial, lab
        assert trial not in out
        out[trial] = energy
    return out


#: Every strategy: today's, then the peers of efficient (asha, bohb, cfo), in one Ray session.
EVERY_STRATEGY = ["grid", "random", "bayes", "multi", "efficient", "asha", "bohb", "cfo"]


def test_compare_runs_every_strategy_and_writes_table_and_plots(tmp_path: Path):
    out = tmp_path / "cmp"
    every = f"'compare.strategies=[{','.join(EVERY_STRATEGY)}]'"
    # one trial at a time: one trial process per strategy (each imports Lightning, ~5 s of CPU here)
    bash(f"lightning-green compare {every} tune.num_samples=3 tune.max_concurrent=1 'compare.seeds=[0]' {' '.join(TINY)} "
         f"hydra.run.dir={out}\n"
         f"lightning-green report {out}/multi/seed0\n", tmp_path)  # fmt: skip
    table = pd.read_csv(out / "compare.csv").set_index("strategy")
    assert list(table.index) == EVERY_STRATEGY
    for s in table.index:
        # the whole study, measured around it, covers its trials and Ray's own processes
        meta = json.loads((out / s / "seed0" / "study.json").read_text())
        assert meta["study_energy_j"] >= meta["energy_used_j"] > 0
        assert 0 < meta["framework_share"] < 1 and meta["overhead_per_trial_s"] >= 0
        assert "descendant" in meta["study_energy_covers"] or "process" in meta["study_energy_covers"]
        assert meta["strategy"]["name"] == s and meta["num_samples"] == 3 and meta["seed"] == 0
        # the peers: asha and bohb stop trials with ASHA (bohb over HyperBand's brackets: one for a
        # single epoch); cfo runs each trial to its own end
        assert meta["scheduler"] == ("asha" if s in ("efficient", "asha", "bohb") else "fifo"), s
        trials = pd.read_csv(out / s / "seed0" / "trials.csv")
        assert len(trials) == 3 and (trials["status"] == "TERMINATED").all()
        energy = trials["energy_j"].astype(float)
        assert trials["accuracy"].between(0, 1).all() and (np.isfinite(energy) & (energy > 0)).all(), s
        assert (trials["source"] == "cpu=estimated:cpu-time").all()
        for path in trials["path"]:  # each trial's own energy records, written by EnergyMonitor
            windows = read_windows(path)
            assert sum(w.energy_j for w in windows if w.stage != "test") == pytest.approx(
                trials.set_index("path").loc[path, "energy_j"], rel=1e-6
            )
        order = sorted(
            trials["order"]
        )  # Ray's creation counter: 0-based for grid/random, 1-based for searchers
        assert order == list(range(order[0], order[0] + 3))
    grid = pd.read_csv(out / "grid" / "seed0" / "trials.csv")
    assert (
        len(
            {
                (a, b, c)
                for a, b, c in grid[
                    ["param.optimizer.lr", "param.optimizer.beta1", "param.optimizer.beta2"]
                ].itertuples(index=False)
            }
        )
        == 3
    )
    # the multi-objective study returns its non-dominated set
    multi = pd.read_csv(out / "multi" / "seed0" / "trials.csv", dtype={"trial_id": str})
    front = pd.read_csv(out / "multi" / "seed0" / "pareto.csv", dtype={"trial_id": str})
    expected = multi[pareto_mask(multi["accuracy"], multi["energy_j"])]
    assert sorted(front["trial_id"]) == sorted(expected["trial_id"]) and len(front) >= 1
    for _, f in front.iterrows():
        assert not ((multi["accuracy"] >= f["accuracy"]) & (multi["energy_j"] <= f["energy_j"])
                    & ((multi["accuracy"] > f["accuracy"]) | (multi["energy_j"] < f["energy_j"]))).any()  # fmt: skip
    # multi starts from the cost-aware start-up points, in order (Optuna's enqueued trials; the
    # study's space has one model, so every FLOPs count is the same)
    space = parse_space(OmegaConf.load(REPO / "lightning_green/conf/tune/space/paper.yaml").params)
    first = startup_points(space, 5, 0, lambda c: 1.0)[:3]
    ran = multi.sort_values("order")[[f"param.{p.key}" for p in space]].to_numpy().ravel().tolist()
    assert ran == pytest.approx([c[p.key] for c in first for p in space], rel=1e-9)
    for name in ("compare.md", "anytime.png", "accuracy_vs_energy.png"):
        assert (out / name).stat().st_size > 0
    text = (out / "compare.md").read_text()
    assert "energy_to_target_j" in text and "study_energy_j" in text and "framework_share" in text
    assert "## Differences" in text and "efficient vs grid" in text
    for s in ("asha", "bohb", "cfo"):  # the peers in the table and in the differences the seeds resolve
        assert f"| {s} " in text and f"- {s} vs grid, best accuracy: " in text, s
    assert (out / "multi" / "seed0" / "summary.md").read_text().count("Pareto set") == 1


def test_two_node_loopback_cluster(tmp_path: Path):
    out, gateway = tmp_path / "study", tmp_path / "gateway"
    port = 26379 + os.getpid() % 1000
    bash(f"""
        {start_gateway(gateway)}
        trap 'ray stop --force >/dev/null 2>&1 || true; kill $receiver 2>/dev/null || true' EXIT
        export RAY_AUTH_MODE=token  # Ray >= 2.59 authenticates local clusters; every node and the driver share the token
        ray start --head --port={port} --num-cpus=1 --include-dashboard=false --disable-usage-stats >/dev/null
        ray start --address=127.0.0.1:{port} --num-cpus=1 --disable-usage-stats >/dev/null
        python -c "import ray, time; ray.init(address='127.0.0.1:{port}'); [time.sleep(0.2) for _ in range(100) if ray.cluster_resources().get('CPU', 0) < 2]"
        lightning-green tune tune.ray_address=127.0.0.1:{port} tune.num_samples=4 tune.max_concurrent=2 tune.reuse_actors=false trainer.max_epochs=1 {PUSH} tune.name=two hydra.run.dir={out}
    """, tmp_path, env=NO_PROXY)  # fmt: skip
    meta = json.loads((out / "study.json").read_text())
    assert meta["cluster"]["nodes"] == 2 and meta["cluster"]["address"] == f"127.0.0.1:{port}"
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 4 and (trials["status"] == "TERMINATED").all()
    assert trials["node_id"].nunique() == 2  # one CPU per node and two at once: both nodes trained
    assert set(trials["node_id"]) <= set(meta["cluster"]["node_ids"])
    # The study's energy is measured on every node (an actor per node), beside the driver's
    nodes = {n.get("node_id"): n for n in meta["nodes"] if n.get("node_id")}
    assert set(meta["cluster"]["node_ids"]) <= set(nodes)
    for node_id in meta["cluster"]["node_ids"]:
        assert nodes[node_id]["energy_j"] > 0 and nodes[node_id]["complete"], nodes[node_id]
    assert any(n.get("node") == "driver" for n in meta["nodes"])
    assert meta["study_energy_j"] == pytest.approx(sum(n["energy_j"] for n in meta["nodes"]), rel=1e-9)
    assert 0 < meta["energy_used_j"] <= meta["study_energy_j"]
    # Trials on both nodes push with their study's labels; the study pushes the driver's and every
    # node's figure (a device of each node's own), adding up to study.json's
    pushed = pushed_energy(gateway, {"study": "two", "strategy": "random", "seed": "0"})
    assert set(pushed) == {*pd.read_csv(out / "trials.csv", dtype={"trial_id": str})["trial_id"], "study"}
    devices = {lab["device"].rsplit("/", 1)[0] for lab, _ in pushed["study"] if "/" in lab["device"]}
    assert len(devices) == 2  # one prefix per node (both on this host: host:node id)
    assert sum(v for _, v in pushed["study"]) == pytest.approx(meta["study_energy_j"], rel=1e-9)


def test_concurrent_trials_on_a_shared_package_claim_no_more_than_the_study(tmp_path: Path):
    """Two trials at once on one (emulated) RAPL package that follows the machine's real CPU use:
    each trial's records carry its CPU-time share of the package, and together the trials claim
    no more than the whole study measured on the same counter. With an exporter in the config
    (a Pushgateway, stood in for by a loopback receiver), each trial pushes its figures labelled
    with the study and itself, and the study pushes its own energy, the figure in study.json."""
    out, root, gateway = tmp_path / "study", tmp_path / "powercap", tmp_path / "gateway"
    bash(f"""
        python -m lightning_green.testing {root} &
        rapl=$!
        {start_gateway(gateway)}
        trap 'kill $rapl $receiver 2>/dev/null || true' EXIT
        for i in $(seq 1 100); do [ -f {root}/intel-rapl:0/energy_uj ] && break; sleep 0.1; done
        lightning-green tune energy.backend=rapl energy.rapl_root={root} tune.max_concurrent=2 tune.num_samples=4 \
          {" ".join(TINY[1:])} {PUSH} hydra.run.dir={out}
    """, tmp_path, env=NO_PROXY)  # fmt: skip
    meta = json.loads((out / "study.json").read_text())
    trials = pd.read_csv(out / "trials.csv", dtype={"trial_id": str})
    assert len(trials) == 4 and (trials["status"] == "TERMINATED").all()
    assert trials["source"].str.contains("measured:rapl").all()
    for path in trials["path"]:
        windows = read_windows(path)
        assert windows and all(w.attribution["cpu"].startswith("attributed:cpu-time-share") for w in windows)
        assert all(w.node_j is not None and w.energy_j <= w.node_j * (1 + 1e-9) for w in windows)
    assert "measured:rapl" in meta["study_energy_source"]
    assert 0 < meta["energy_used_j"] <= meta["study_energy_j"]
    assert meta["energy_used_j"] == pytest.approx(trials["total_j"].sum(), rel=1e-9)
    # What reached the gateway: each trial's energy, labelled with the study and its trial id,
    # is what its records hold; the study's own (stage "study") is the figure in study.json
    pushed = pushed_energy(gateway, {"study": "study", "strategy": "random", "seed": "0"})
    assert set(pushed) == {*trials["trial_id"], "study"}
    for _, trial in trials.iterrows():
        recorded = sum(w.energy_j for w in read_windows(trial["path"]))
        assert sum(v for _, v in pushed[trial["trial_id"]]) == pytest.approx(recorded, rel=1e-9)
    assert {(lab["stage"], lab["run_id"]) for lab, _ in pushed["study"]} == {
        ("study", meta["parts"][-1]["run_id"])
    }
    assert sum(v for _, v in pushed["study"]) == pytest.approx(meta["study_energy_j"], rel=1e-9)


def test_crashed_trials_are_retried_then_reported_failed(tmp_path: Path):
    out = tmp_path / "study"
    env = {"PYTHONPATH": f"{REPO / 'tests' / 'helpers'}:{os.environ.get('PYTHONPATH', '')}"}
    bash(f"""
        lightning-green tune tune/strategy=grid tune.strategy.levels=2 tune.num_samples=4 tune.max_failures=1 tune.max_concurrent=1 \\
          model._target_=crashy.CrashyCNN '+tune.space.params.model.hidden_units={{type: choice, values: [64, 65]}}' \\
          '~tune.space.params.optimizer.beta1' '~tune.space.params.optimizer.beta2' {" ".join(TINY)} hydra.run.dir={out}
    """, tmp_path, env=env)  # fmt: skip
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 4
    ok = trials[trials["param.model.hidden_units"] == 64]
    bad = trials[trials["param.model.hidden_units"] == 65]
    assert len(ok) == 2 and (ok["status"] == "TERMINATED").all() and ok["accuracy"].notna().all()
    for path in ok["path"]:
        assert (Path(path) / "crashed_once").exists()  # it crashed once and the retry finished it
    assert len(bad) == 2 and (bad["status"] == "ERROR").all()
    assert bad["error"].str.contains("always crashes").all()
    assert json.loads((out / "study.json").read_text())["failed"] == 2


def test_a_trial_worker_killed_with_sigkill_keeps_its_attempts_energy(tmp_path: Path):
    """kill -9 of a trial's worker mid-fit: Ray retries the trial, and the killed attempt's
    recorded windows are kept in the trial's folder and counted apart (other_attempts_j)."""
    out, kill = tmp_path / "study", tmp_path / "kill"
    # The second trial's first attempt waits in epoch 1 to be killed. It runs in the first
    # trial's reused worker; its retry in a fresh one: both attempts must write to one folder.
    env = {"PYTHONPATH": f"{REPO / 'tests' / 'helpers'}:{os.environ.get('PYTHONPATH', '')}",
           "LG_KILL_DIR": str(kill), "LG_KILL_AT": "2"}  # fmt: skip
    bash(f"""
        lightning-green tune tune.num_samples=2 tune.max_concurrent=1 tune.max_failures=1 tune.reuse_actors=true \
          '+callbacks.kill._target_=trial_faults.WaitToBeKilled' {" ".join(TINY[:1] + TINY[2:])} trainer.max_epochs=2 \
          hydra.run.dir={out} > tune.log 2>&1 &
        pid=$!
        for i in $(seq 1 3000); do
          ls {kill}/[0-9]* >/dev/null 2>&1 && break
          kill -0 $pid 2>/dev/null || break
          sleep 0.1
        done
        worker=$(basename "$(ls {kill}/[0-9]*)")
        cp "$(cat {kill}/$worker)/energy.jsonl" killed.jsonl
        kill -9 "$worker"
        wait $pid
    """, tmp_path, env=env)  # fmt: skip
    killed = read_windows(tmp_path / "killed.jsonl")
    assert killed and len({w.run_id for w in killed}) == 1
    killed_j = sum(w.energy_j for w in killed)
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 2 and (trials["status"] == "TERMINATED").all() and trials["finished"].all()
    hit = trials[[killed[0].run_id in {w.run_id for w in read_windows(p)} for p in trials["path"]]]
    assert len(hit) == 1, "the killed attempt's windows are in its trial's folder"
    kept = {(w.run_id, w.stage, w.epoch, w.start_time) for w in read_windows(hit["path"].iloc[0])}
    assert {(w.run_id, w.stage, w.epoch, w.start_time) for w in killed} <= kept
    assert hit["other_attempts_j"].iloc[0] == pytest.approx(killed_j, rel=1e-9)
    assert trials["other_attempts_j"].sum() == pytest.approx(killed_j, rel=1e-9)
    meta = json.loads((out / "study.json").read_text())
    assert meta["other_attempts_j"] == pytest.approx(killed_j, rel=1e-9)
    assert meta["energy_used_j"] == pytest.approx(trials["total_j"].sum() + killed_j, rel=1e-9)


def test_a_failed_trials_energy_comes_from_its_records(tmp_path: Path):
    """A trial that raises mid-epoch never reports: its energy is what its records hold (an
    interrupted window included), every attempt's, and the study's tuning energy counts it."""
    once, twice = tmp_path / "once", tmp_path / "twice"
    env = {"PYTHONPATH": f"{REPO / 'tests' / 'helpers'}:{os.environ.get('PYTHONPATH', '')}"}
    fail = "'+callbacks.fail._target_=trial_faults.RaiseMidEpoch'"
    # Each study in namespaces of its own: whatever the first one's failed trial leaves running
    # ends with its namespace, before the second study starts.
    for out, retries in ((once, 0), (twice, 1)):
        bash(f"lightning-green tune tune.num_samples=1 tune.max_failures={retries} {fail} {' '.join(TINY)} "
             f"hydra.run.dir={out}", tmp_path, env=env)  # fmt: skip
    for out, attempts in ((once, 1), (twice, 2)):
        trials = pd.read_csv(out / "trials.csv")
        meta = json.loads((out / "study.json").read_text())
        assert len(trials) == 1 and trials["status"].iloc[0] == "ERROR" and meta["failed"] == 1
        trial = trials.iloc[0]
        windows = read_windows(trial["path"])
        runs = sorted(
            {w.run_id for w in windows}, key=lambda r: min(w.start_time for w in windows if w.run_id == r)
        )
        assert len(runs) == attempts, "every attempt's records are kept"
        last = [w for w in windows if w.run_id == runs[-1]]
        assert any(w.interrupted for w in last) and all(w.stage != "test" for w in last)
        assert trial["energy_from"] == "records"
        assert (
            trial["energy_j"] == pytest.approx(sum(w.energy_j for w in last), rel=1e-9)
            and trial["energy_j"] > 0
        )
        assert trial["total_j"] == pytest.approx(trial["energy_j"], rel=1e-9)
        assert trial["dynamic_j"] == pytest.approx(trial["energy_j"], rel=1e-9)  # the estimate is dynamic
        others = sum(w.energy_j for w in windows if w.run_id != runs[-1])
        assert trial["other_attempts_j"] == pytest.approx(others, rel=1e-9) and (others > 0) == (attempts > 1)
        every = sum(w.energy_j for w in windows)
        assert meta["energy_used_j"] == pytest.approx(every, rel=1e-9)
        assert study_metrics(trials)["total_energy_j"] == pytest.approx(every, rel=1e-9)
        assert study_metrics(trials)["total_dynamic_energy_j"] == pytest.approx(every, rel=1e-9)
        assert meta["framework_energy_j"] is None or meta["framework_energy_j"] >= 0


def test_interrupted_study_resumes_without_rerunning_finished_trials(tmp_path: Path):
    out = tmp_path / "study"
    args = f"tune.num_samples=4 tune.max_concurrent=1 trainer.max_epochs=6 hydra.run.dir={out}"
    # Interrupt once two trials finished and a third is part-way (its first epochs are recorded).
    bash(f"""
        lightning-green tune {args} > first.log 2>&1 &
        pid=$!
        # The study's own progress lines say when two trials ended (the storage folder's copies of
        # a trial's files lag behind it); the third then trains a few of its 6 epochs.
        for i in $(seq 1 2400); do
          [ "$(grep -c ' trial [0-9]* (.*val_acc' first.log 2>/dev/null)" -ge 2 ] && break
          sleep 0.05
        done
        sleep 1.5
        kill -INT $pid 2>/dev/null || true
        wait $pid || true
        # Finished: the trials the study saw end (its line per finished trial; Ray's last state
        # holds them as ended). Not "has run.json": a trial that ends its fit while the study
        # shuts down writes one too, but Ray never took its final result, so resuming runs it
        # again (and counts that first attempt's energy apart), and the storage folder's copies
        # of a trial's files lag behind the trial.
        for id in $(sed -n 's/.* trial [0-9]* (\\([0-9a-f_]*\\)): val_acc.*/\\1/p' first.log); do
          ls {out}/ray/study/*_${{id}}_*/run.json
        done | sort > finished_before.txt
        for f in $(cat finished_before.txt); do python -c "import json,sys; print(json.load(open(sys.argv[1]))['run_id'])" $f; done > ids_before.txt
        # what the interruption cut: every other trial folder's records, kept as they are now
        k=0
        for d in {out}/ray/study/*/; do
          if [ -f "$d/energy.jsonl" ] && ! grep -qx "${{d}}run.json" finished_before.txt; then cp "$d/energy.jsonl" "cut_$k.jsonl"; k=$((k+1)); fi
        done
        ray stop --force >/dev/null 2>&1 || true
        lightning-green tune {args} tune.resume=true
    """, tmp_path, timeout=600)  # fmt: skip
    before = (tmp_path / "finished_before.txt").read_text().split()
    ids_before = (tmp_path / "ids_before.txt").read_text().split()
    assert 2 <= len(before) <= 4
    cut_j = sum(w.energy_j for f in tmp_path.glob("cut_*.jsonl") for w in read_windows(f))
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 4 and (trials["status"] == "TERMINATED").all() and trials["finished"].all()
    meta = json.loads((out / "study.json").read_text())
    assert meta.get("resumed") is True
    for path, run_id in zip(before, ids_before, strict=True):
        assert read_run(Path(path).parent).run_id == run_id  # the finished trial was not trained again
    # The interrupted attempt's energy is kept (in the study folder) and counted, labelled apart:
    # every window it had recorded when the study was cut (however far it had got).
    assert list((out / "attempts").rglob("*.jsonl"))
    assert meta["other_attempts_j"] == pytest.approx(cut_j, rel=1e-9)
    assert meta["energy_used_j"] == pytest.approx(meta["trials_energy_j"] + meta["other_attempts_j"])
    assert trials["other_attempts_j"].sum() == pytest.approx(meta["other_attempts_j"])


def test_ctrl_c_stops_the_whole_compare_and_the_resumed_study_adds_its_parts(tmp_path: Path):
    """Ctrl-C during one strategy's study stops the comparison (exit 130) after it wrote what it
    has, marked incomplete; resuming finishes the cut study (its energy is both runs' together)
    and runs the strategies that never ran; resuming again keeps the complete studies as they are."""
    out = tmp_path / "cmp"
    args = (f"'compare.strategies=[grid,random]' 'compare.seeds=[0]' tune.num_samples=3 tune.max_concurrent=1 "
            f"{' '.join(TINY[:1] + TINY[2:])} trainer.max_epochs=4 hydra.run.dir={out}")  # fmt: skip
    bash(f"""
        lightning-green compare {args} > first.log 2> first.err &
        pid=$!
        # Ctrl-C once grid's first trial has ended (the study's line for it; its second is then under way)
        for i in $(seq 1 3000); do
          grep -q "^grid seed 0 trial 1 " first.log && break
          sleep 0.1
        done
        kill -INT $pid
        rc=0; wait $pid || rc=$?
        echo $rc > first.rc
        cp {out}/compare.md first_compare.md
        ls {out} > first_ls.txt
        cp {out}/grid/seed0/study.json cut_study.json
        lightning-green compare {args} tune.resume=true > second.log 2>&1
        cp {out}/grid/seed0/study.json resumed_study.json
        lightning-green compare {args} tune.resume=true > third.log 2>&1
    """, tmp_path, timeout=600)  # fmt: skip
    assert (tmp_path / "first.rc").read_text().strip() == "130"
    err = (tmp_path / "first.err").read_text()
    assert "interrupted" in err and "tune.resume=true" in err, err[-2000:]
    first = (tmp_path / "first_compare.md").read_text()
    assert "Incomplete comparison" in first and "grid seed 0" in first and "random seed 0" in first
    assert "random" not in (tmp_path / "first_ls.txt").read_text().split()  # the next strategy never ran
    cut = json.loads((tmp_path / "cut_study.json").read_text())
    assert cut["interrupted"] is True and len(cut["parts"]) == 1 and cut["study_energy_j"] > 0
    resumed = json.loads((tmp_path / "resumed_study.json").read_text())
    assert resumed["resumed"] is True and resumed["interrupted"] is False and resumed["trials"] == 3
    assert [p["interrupted"] for p in resumed["parts"]] == [True, False]
    assert resumed["parts"][0]["energy_j"] == pytest.approx(cut["study_energy_j"], rel=1e-12)
    assert resumed["study_energy_j"] == pytest.approx(sum(p["energy_j"] for p in resumed["parts"]), rel=1e-12)
    assert resumed["study_energy_j"] > cut["study_energy_j"]
    assert resumed["framework_energy_j"] is None or resumed["framework_energy_j"] >= 0
    assert resumed["wall_s"] == pytest.approx(sum(p["wall_s"] for p in resumed["parts"]), rel=1e-9)
    second = (out / "compare.md").read_text()
    assert "Incomplete comparison" not in second
    table = pd.read_csv(out / "compare.csv").set_index("strategy")
    assert list(table.index) == ["grid", "random"] and (table["interrupted_seeds"] == 0).all()
    assert (table["study_energy_j"] > 0).all()
    # Resumed once more: both studies are complete and kept as they are
    assert (tmp_path / "third.log").read_text().count("complete, kept as it is") == 2
    assert json.loads((out / "grid" / "seed0" / "study.json").read_text()) == resumed


def test_asha_stops_weak_trials_and_the_energy_budget_stops_the_study(tmp_path: Path):
    asha, budget = tmp_path / "asha", tmp_path / "budget"
    bash(f"""
        lightning-green tune tune.scheduler=asha tune.num_samples=6 trainer.max_epochs=4 hydra.run.dir={asha}
        lightning-green tune tune.energy_budget_j=2.0 tune.num_samples=8 tune.max_concurrent=1 trainer.max_epochs=1 hydra.run.dir={budget}
    """, tmp_path)  # fmt: skip
    trials = pd.read_csv(asha / "trials.csv")
    meta = json.loads((asha / "study.json").read_text())
    stopped = trials[trials["stopped_early"]]
    assert len(stopped) >= 1 and meta["stopped_early"] == len(stopped)
    assert (stopped["epochs"] < 4).all() and (stopped["energy_saved_estimate_j"] > 0).all()
    assert meta["energy_saved_estimate_j"] == pytest.approx(stopped["energy_saved_estimate_j"].sum())
    assert (trials[~trials["stopped_early"]]["energy_saved_estimate_j"] == 0).all()
    # A trial ASHA stopped sent no final report: every figure a comparison sums comes from its
    # records, and the estimate's energy is all dynamic, so the two totals agree.
    cut = trials[~trials["finished"]]
    assert len(cut) >= 1 and (cut["energy_from"] == "records").all()
    for _, trial in cut.iterrows():
        assert trial["total_j"] == pytest.approx(
            sum(w.energy_j for w in read_windows(trial["path"])), rel=1e-9
        )
    assert trials["dynamic_j"].notna().all() and trials["total_dynamic_j"].notna().all()
    m = study_metrics(trials)
    assert m["total_dynamic_energy_j"] == pytest.approx(m["total_energy_j"], rel=1e-9)
    assert m["total_energy_j"] == pytest.approx(meta["energy_used_j"], rel=1e-9)

    meta = json.loads((budget / "study.json").read_text())
    trials = pd.read_csv(budget / "trials.csv")
    assert meta["stopped_by_energy_budget"] is True and meta["energy_used_j"] >= 2.0
    assert len(trials) < 8  # the study ended before its trial budget


def test_efficient_strategy_stops_weak_trials_on_the_architecture_space(tmp_path: Path):
    out = tmp_path / "eff"
    r = bash(f"lightning-green tune tune/strategy=efficient tune/space=architecture tune.num_samples=6 "
         f"tune.target_accuracy=0.5 tune.space.params.trainer.max_epochs.low=3 "
         f"tune.space.params.trainer.max_epochs.high=3 {' '.join(TINY[:1])} "
         f"trainer.limit_train_batches=6 trainer.limit_val_batches=2 trainer.limit_test_batches=2 "
         f"hydra.run.dir={out}", tmp_path)  # fmt: skip
    trials = pd.read_csv(out / "trials.csv")
    meta = json.loads((out / "study.json").read_text())
    assert len(trials) == 6 and meta["scheduler"] == "asha" and meta["target_accuracy"] == 0.5
    searched = {c.removeprefix("param.") for c in trials.columns if c.startswith("param.")}
    assert {"model.conv_layers", "data.batch_size", "trainer.precision"} <= searched
    # epochs are the budget, not searched: every trial may train 3, ASHA (grace period 1) ends weak
    # ones earlier, and a trial stops at the first validation that reaches the target
    assert "trainer.max_epochs" not in searched and meta["max_epochs"] == 3
    short = trials[trials["epochs"] < 3]
    assert len(short) >= 1 and short["stopped_early"].all()
    # finished early (not ended by ASHA, which leaves no final report): StopAtTarget said why
    for _, trial in short[short["finished"]].iterrows():
        why = read_summary(trial["path"])["stopped_by"]
        reached = why.startswith("StopAtTarget: val_acc reached")
        assert reached == (trial["accuracy"] >= 0.5), why
        assert reached or why.startswith("StopAtTarget: val_acc cannot reach 0.5"), why
    assert meta["study_energy_j"] >= meta["energy_used_j"]
    # the searcher learnt from every trial's learning curve (one accuracy per epoch report), as
    # its checkpoint in Ray's experiment folder shows
    state = sorted((out / "ray" / "study").glob("searcher-state-*.pkl"))[-1]
    done = pickle.loads(state.read_bytes())["done"]
    assert sorted(len(curve) for *_, curve in done) == sorted(trials["epochs"].astype(int))
    # one progress line per finished trial, with the running total
    lines = [line for line in r.stdout.splitlines() if line.startswith("efficient seed 0 trial ")]
    assert len(lines) == 6 and "trials so far" in lines[-1]


RAY_USER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import ray
    from ray import tune
    from ray.tune.integration.pytorch_lightning import TuneReportCheckpointCallback
    from lightning import Trainer
    from lightning_green import EnergyMonitor
    from lightning_green.data import DigitsDataModule
    from lightning_green.models import LitClassifier, SimpleCNN

    def trainable(config):
        monitor = EnergyMonitor(output_dir=config["out"])
        report = TuneReportCheckpointCallback({"energy": "energy/total_j"}, on="validation_end", save_checkpoints=False)
        Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                callbacks=[monitor, report]).fit(LitClassifier(SimpleCNN(conv_layers=1)), datamodule=DigitsDataModule())

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    grid = tune.Tuner(trainable, param_space={"out": sys.argv[1]},
                      run_config=tune.RunConfig(storage_path=sys.argv[2], name="user", verbose=0)).fit()
    print("LAST", grid[0].metrics["energy"])
    """
)


def test_a_ray_users_own_script_reports_the_whole_energy_at_validation_end(tmp_path: Path):
    """Ray's documented pattern (TuneReportCheckpointCallback on validation_end) sees every joule."""
    script = tmp_path / "user.py"
    script.write_text(RAY_USER_SCRIPT)
    out = tmp_path / "energy"
    r = run_in_loopback_netns([PYTHON, str(script), str(out), str(tmp_path / "ray")], timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    last = float(r.stdout.split("LAST")[1].split()[0])
    recorded = sum(w.energy_j for w in read_windows(out))
    # Only the instant between the last validation's end and the epoch's end is after the report.
    assert last == pytest.approx(recorded, rel=0.02)
