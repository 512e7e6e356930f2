"""Running a Ray Tune study and saving its results table (reports on it are in :mod:`lightning_green.report.studies`).

A study folder holds ``study.json`` (what was searched, how, on which Ray), ``trials.csv`` (one
row per trial: parameters, accuracy, energy, status, in creation order) and ``ray/`` (Ray's own
experiment folder, one sub-folder per trial with that trial's energy records).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from lightning_green.config import ConfigError, to_container
from lightning_green.records import (
    RECORDS_FILE,
    RUN_FILE,
    STUDY_FILE,
    TRIALS_FILE,
    read_json,
    read_windows,
    trial_energy_j,
    write_json_atomic,
)
from lightning_green.tune.node_energy import NodeMeters
from lightning_green.tune.space import flatten, parse_space
from lightning_green.tune.strategies import check_strategy, search_setup
from lightning_green.tune.trainable import EPOCH_METRICS

#: Energy records of trial attempts that were interrupted (kept when a study is resumed).
ATTEMPTS_DIR = "attempts"


def init_ray(tune_cfg: DictConfig) -> dict[str, Any]:
    """Start or join Ray; returns a description of the cluster (nodes, CPUs, GPUs).

    ``tune.ray_address=null`` means a fresh Ray on this machine: ``ray.init()`` without an address
    would instead join whatever ``$RAY_ADDRESS`` or ``/tmp/ray/ray_current_cluster`` names, and a
    file left by a killed ``ray start`` names a dead cluster. ``address="local"`` makes Ray start
    its own and ignore both; ``tune.ray_address=auto`` is how to ask for the joining.
    """
    import ray

    if not ray.is_initialized():
        if tune_cfg.ray_address and tune_cfg.ray_address != "local":
            ray.init(address=tune_cfg.ray_address, log_to_driver=False, configure_logging=False)
        else:
            # Unset while Ray starts, so that the processes it starts (raylet, then every trial's
            # worker) do not inherit an address of another cluster either.
            joinable = os.environ.pop("RAY_ADDRESS", None)
            if joinable:
                print(
                    f"lightning-green: tune.ray_address=null starts a fresh Ray on this machine; "
                    f"RAY_ADDRESS={joinable} is not joined (tune.ray_address=auto joins it)",
                    file=sys.stderr,
                    flush=True,
                )
            try:
                ray.init(
                    address="local",
                    num_cpus=tune_cfg.num_cpus or os.cpu_count(),
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            finally:
                if joinable is not None:
                    os.environ["RAY_ADDRESS"] = joinable
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    res = ray.cluster_resources()
    return {
        "address": tune_cfg.ray_address or "local",
        "nodes": len(nodes),
        "node_ids": [n["NodeID"] for n in nodes],
        "cpus": res.get("CPU", 0),
        "gpus": res.get("GPU", 0),
    }


def trial_lines(label: str, accuracy: str, energy: str) -> Any:
    """A Ray Tune callback printing one line per finished trial: the study, the trial, its
    accuracy and joules, and the study's running total of trial energy."""
    from ray import tune

    class TrialLines(tune.Callback):
        def __init__(self) -> None:
            self.total_j = 0.0
            self.done = 0

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._line(trial, "")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._line(trial, " FAILED")

        def _line(self, trial: Any, status: str) -> None:
            r = trial.last_result or {}
            joules = r.get("total_j", r.get(energy))
            self.total_j += float(joules or 0.0)
            self.done += 1
            acc = r.get(accuracy)
            print(
                f"{label} trial {self.done} ({trial.trial_id}){status}: {accuracy} "
                f"{'-' if acc is None else f'{acc:.4f}'}, {'-' if joules is None else f'{joules:.1f}'} J "
                f"after {r.get('training_iteration', 0)} report(s); trials so far {self.total_j:.1f} J",
                flush=True,
            )

    return TrialLines()


def energy_budget_stopper(budget_j: float, metric: str) -> Any:
    """A Ray Tune stopper that ends the whole study once its trials together used ``budget_j`` joules
    (each trial's latest cumulative ``metric``)."""
    from ray import tune

    class EnergyBudgetStopper(tune.Stopper):
        def __init__(self) -> None:
            self.used: dict[str, float] = {}

        def __call__(self, trial_id: str, result: dict) -> bool:
            if result.get(metric) is not None:
                self.used[trial_id] = float(result[metric])
            return False

        def stop_all(self) -> bool:
            return sum(self.used.values()) >= budget_j

    return EnergyBudgetStopper()


def prepare(cfg: DictConfig) -> tuple[list, dict[str, Any]]:
    """Validate everything a study needs before Ray starts; returns (params, base config).

    The base config is resolved except for the ``callbacks`` group, whose nodes keep their
    interpolations (``${output_dir}``, ``${energy.*}``) so that each trial's folder reaches them.
    """
    check_strategy(cfg.tune.strategy, cfg.tune)
    from lightning_green.config import check_trainer

    check_trainer(cfg)
    check_ray_address(cfg.tune.ray_address)
    base = to_container(cfg)
    if "callbacks" in cfg:
        base["callbacks"] = OmegaConf.to_container(cfg.callbacks, resolve=False)
    params = parse_space(cfg.tune.space.params, OmegaConf.create(base))
    strategy = cfg.tune.strategy
    if strategy.name == "efficient" and not strategy.get("search_epochs", False):
        params = epochs_as_budget(cfg, params, base)
    return params, base


def epochs_as_budget(cfg: DictConfig, params: list, base: dict[str, Any]) -> list:
    """The ``efficient`` strategy spends epochs as its budget instead of searching them: every
    trial may train up to the searched range's top, ASHA stops weak trials at its rungs, and, with
    ``tune.target_accuracy`` set and ``stop_at_target`` on, a trial stops at the first validation
    that reaches the target: the epochs a
    trial would train past the goal cost energy and buy nothing the strategy is asked for; so
    does a trial stop once its learning curve, extrapolated, cannot reach the target in the
    epochs it has left (:class:`~lightning_green.StopAtTarget`).
    Returns the params without ``trainer.max_epochs``; ``cfg`` and ``base`` get the top."""
    searched = next((p for p in params if p.key == "trainer.max_epochs"), None)
    top = max_epochs(cfg, params)
    if searched is not None:
        params = [p for p in params if p is not searched]
        cfg.trainer.max_epochs = top
        base["trainer"]["max_epochs"] = top
    target = cfg.tune.get("target_accuracy")
    monitor = EPOCH_METRICS.get(cfg.tune.accuracy_metric)
    if target is not None and cfg.tune.strategy.get("stop_at_target", True) and monitor is not None:
        base["callbacks"] = callbacks = base.get("callbacks") or {}
        callbacks["stop_at_target"] = {
            "_target_": "lightning_green.StopAtTarget",
            "monitor": monitor,
            "target": float(target),
        }
    return params


def check_ray_address(address: str | None, timeout_s: float = 3.0) -> None:
    """Fail in one line, before Ray starts, when nothing listens at ``host:port`` (Ray itself would
    retry for minutes). ``None`` (start Ray here) and ``"auto"`` are left to Ray."""
    if address in (None, "", "auto", "local"):
        return
    text = str(address).removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"tune.ray_address must be null, auto or host:port (e.g. 10.0.0.1:6379); got {address!r}"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConfigError(
            f"tune.ray_address={address}: nothing answers there ({err.strerror or err}); start the cluster "
            "with `ray start --head --port=PORT`, or leave tune.ray_address=null to start Ray on this machine"
        ) from None


def check_resources(tune_cfg: DictConfig, cluster: dict[str, Any]) -> None:
    """A trial that asks for more GPUs or CPUs than the whole cluster has would wait forever in
    Ray's queue: say so in one line before any trial starts."""
    for key, unit, have in (("gpus_per_trial", "GPU", cluster.get("gpus", 0)), ("cpus_per_trial", "CPU", cluster.get("cpus", 0))):  # fmt: skip
        want = tune_cfg.get(key) or 0
        if want > (have or 0):
            fix = (
                "start GPU nodes (ray start --num-gpus=N) or set tune.gpus_per_trial=0 trainer=cpu"
                if unit == "GPU"
                else f"lower tune.cpus_per_trial to at most {int(have or 0)} or add nodes"
            )
            raise ConfigError(
                f"tune.{key}={want} but the Ray cluster ({cluster.get('address')}, {cluster.get('nodes')} node(s)) "
                f"has {have:g} {unit}(s) in all: no trial could start; {fix}"
            )


def check_resumable(cfg: DictConfig, out: Path) -> None:
    """``tune.resume=true`` needs an interrupted study in ``out``; say so before Ray starts."""
    from ray import tune

    experiment = out / "ray" / cfg.tune.name
    if cfg.tune.resume and not tune.Tuner.can_restore(str(experiment.resolve())):
        raise ConfigError(
            f"tune.resume=true but there is no study to resume in {out}; pass the interrupted study's "
            "folder as hydra.run.dir=..., or drop tune.resume to start a new study"
        )


def run_study(
    cfg: DictConfig, out: Path, seed: int | None = None, cluster: dict[str, Any] | None = None
) -> Path:
    """Run one study into ``out`` (or resume it there); returns ``out``."""
    from ray import tune

    from lightning_green.tune.trainable import train_trial

    params, base = prepare(cfg)
    t = cfg.tune
    seed = t.seed if seed is None else seed
    base["seed"] = seed
    cluster = cluster or init_ray(t)
    check_resources(t, cluster)
    out.mkdir(parents=True, exist_ok=True)
    storage = (out / "ray").resolve()
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, base=base, cpus_per_trial=t.cpus_per_trial),
        {"cpu": t.cpus_per_trial, "gpu": t.gpus_per_trial},
    )
    experiment = storage / t.name
    meta = {
        "kind": "study",
        "strategy": to_container(t.strategy),
        "space": [p.__dict__ for p in params],
        "num_samples": t.num_samples,
        "max_concurrent": t.max_concurrent,
        "seed": seed,
        "accuracy_metric": t.accuracy_metric,
        "energy_metric": t.energy_metric,
        "scheduler": "asha" if t.strategy.name == "efficient" else t.scheduler,
        "target_accuracy": t.get("target_accuracy"),
        "target_fraction": t.get("target_fraction"),
        "energy_budget_j": t.energy_budget_j,
        "cluster": cluster,
        "max_epochs": cfg.trainer.max_epochs,
        "started": time.time(),
        "finished": None,
    }
    earlier: list[dict[str, Any]] = []
    if t.resume and tune.Tuner.can_restore(str(experiment)):
        # Ray restarts an interrupted trial from scratch and may replace its folder's files: keep
        # the interrupted attempts' energy records in the study folder first. Energy spent is spent.
        keep_attempts(experiment, out / ATTEMPTS_DIR)
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
        previous = read_json(out / STUDY_FILE) if (out / STUDY_FILE).is_file() else {}
        meta["started"] = previous.get("started", meta["started"])
        meta["resumed"] = True
        # The runs before this one measured their own parts of the study; kept now, so that a
        # run killed before it ends still leaves them in study.json.
        earlier = earlier_parts(previous)
        meta["parts"] = earlier
    else:
        alg, space, kw = search_setup(t.strategy, params, t, seed, base)
        scheduler = None
        if t.scheduler == "asha" or t.strategy.name == "efficient":
            from ray.tune.schedulers import ASHAScheduler

            # With a single metric ASHA takes Tune's; multi-objective and efficient studies rank
            # trials by accuracy. One iteration per epoch, plus the final report.
            ranking = {} if "metric" in kw else {"metric": t.accuracy_metric, "mode": "max"}
            scheduler = ASHAScheduler(
                time_attr="training_iteration",
                max_t=max_epochs(cfg, params) + 1,
                grace_period=int(t.strategy.get("grace_period", 1)),
                reduction_factor=int(t.strategy.get("reduction_factor", 4)),
                **ranking,
            )
        stop = energy_budget_stopper(t.energy_budget_j, t.energy_metric) if t.energy_budget_j else None
        progress = [trial_lines(f"{t.strategy.name} seed {seed}", t.accuracy_metric, t.energy_metric)]
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                search_alg=alg, scheduler=scheduler, reuse_actors=t.reuse_actors, **kw
            ),
            run_config=tune.RunConfig(
                name=t.name,
                storage_path=str(storage),
                failure_config=tune.FailureConfig(max_failures=t.max_failures),
                # Each trial writes its energy records into its folder on the driver (trainable's
                # records_folder), which Ray copies to storage_path; files a trial writes in its
                # working folder are copied too.
                sync_config=tune.SyncConfig(sync_artifacts=True),
                stop=stop,
                callbacks=progress,
                verbose=0,
            ),
        )
    write_json_atomic(out / STUDY_FILE, meta)
    meter = study_meter(cfg)
    # On a cluster Ray was not started by this process, every node's Ray processes are measured
    # where they run; the driver's meter then covers the driver alone.
    remote = bool(t.ray_address) and t.ray_address != "local"
    nodes = NodeMeters(to_container(cfg.energy)) if remote else None
    # Ray's own per-trial JSON/CSV/TensorBoard files repeat what the trials' records and
    # trials.csv hold; tune.ray_loggers=false leaves them out (no measurable time either way:
    # benchmarks/results/tune_overhead.txt).
    if not t.get("ray_loggers", True):
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    t0, started = time.monotonic(), time.time()
    meter.begin_window("study")
    # Ray replaces the Ctrl-C handler while it runs and leaves its own behind, which would
    # swallow the next Ctrl-C (between a comparison's studies): the caller's is put back.
    handler = (
        signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        grid = tuner.fit()
    finally:
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
        wall_s = time.monotonic() - t0
        try:
            reading = meter.end_window("study", settle=True)
        except Exception:  # a measurement failure never loses the study's results
            meter.discard_window("study")
            reading = None
        meter.close()
        node_figures = nodes.end() if nodes is not None else []
    df = trials_table(grid, t.accuracy_metric, t.energy_metric)
    meta["finished"] = time.time()
    meta["interrupted"] = was_interrupted(experiment)
    this_run = {"started": started, "finished": meta["finished"], "wall_s": wall_s, "interrupted": meta["interrupted"]}  # fmt: skip
    # A resumed study's seconds and energy are those of all its runs.
    wall_s += sum(p.get("wall_s") or 0.0 for p in earlier)
    started = next((p["started"] for p in earlier if p.get("started")), started)
    meta["wall_s"] = wall_s
    meta["trials"] = len(df)
    meta["failed"] = int((df["status"] == "ERROR").sum()) if not df.empty else 0
    if not df.empty:
        add_savings(df, max_epochs(cfg, params))
        meta["stopped_early"] = int(df["stopped_early"].sum())
        meta["energy_saved_estimate_j"] = float(df["energy_saved_estimate_j"].sum())
        add_attempts(df, experiment, out / ATTEMPTS_DIR, t.energy_metric)
        meta["other_attempts_j"] = float(df["other_attempts_j"].sum())
        meta["energy_used_j"] = float(trial_energy_j(df).sum())
        meta["trials_energy_j"] = meta["energy_used_j"] - meta["other_attempts_j"]
        meta["energy_used_covers"] = (
            "each trial's last attempt (train, validation, test; from its final report, or from its "
            "records where it sent none: failed, stopped by a scheduler, cut by an interruption) "
            "plus the recorded windows of its other attempts (other_attempts_j: crashed, killed or "
            "cut attempts)"
        )
        meta["stopped_by_energy_budget"] = bool(
            t.energy_budget_j and meta["energy_used_j"] >= t.energy_budget_j
        )
        windows = [_windows_span(p) for p in df["path"]]
        df["train_s"] = [seconds for seconds, _ in windows]
        # A trial a scheduler stopped never sent its final report: its source is in its records
        missing = df["source"].isna() | (df["source"].astype(str) == "")
        df.loc[missing, "source"] = [_records_source(p) for p in df.loc[missing, "path"]]
        slots = max(
            1, min(t.max_concurrent, len(df), int(cluster.get("cpus") or 1) // max(1, t.cpus_per_trial))
        )
        meta["overhead_per_trial_s"] = max(0.0, (wall_s * slots - float(df["train_s"].sum())) / len(df))
        # The study's fixed start-up (Ray, the first workers' imports, the first Trainer) apart
        # from what each further trial adds
        first = [start for _, start in windows if start is not None]
        if first:
            startup_s = max(0.0, min(first) - started)
            meta["startup_s"] = startup_s
            meta["overhead_per_trial_after_startup_s"] = max(
                0.0, ((wall_s - startup_s) * slots - float(df["train_s"].sum())) / len(df)
            )
    if reading is not None or earlier:
        add_study_energy(meta, reading, node_figures, earlier, this_run)
    df.to_csv(out / TRIALS_FILE, index=False)
    write_json_atomic(out / STUDY_FILE, meta)
    return out


def add_study_energy(
    meta: dict[str, Any],
    reading: Any,
    nodes: list[dict[str, Any]],
    earlier: list[dict[str, Any]] | None = None,
    this_run: dict[str, Any] | None = None,
) -> None:
    """The study's energy in ``meta``: the driver's meter plus each cluster node's figure, with the
    trials' share and the framework's (never below zero: a difference that would be is said).

    A resumed study is measured in parts, one per run (``earlier``: the parts before this one, as
    :func:`earlier_parts` reads them; ``this_run``: this run's ``started``, ``finished``,
    ``wall_s``, ``interrupted``). ``parts`` lists them all and ``study_energy_j`` is their sum;
    ``reading`` is ``None`` when this run's meter failed (its part is then unknown).
    """
    earlier = list(earlier or [])
    if reading is None:
        part = {**(this_run or {}), "energy_j": None, "complete": False, "note": "the study's meter failed"}
        _add_parts(meta, [*earlier, part])
        meta["study_energy_covers"] = "the study's earlier runs only (see parts)"
        _add_framework(meta)
        return
    driver = {
        "node": "driver",
        "host": socket.gethostname(),
        "energy_j": reading.joules,
        "node_j": reading.node_joules,
        "complete": reading.complete,
        "sources": reading.sources,
        "attribution": reading.attributions,
    }
    known = [n["energy_j"] for n in nodes if n.get("energy_j") is not None]
    sources = set(reading.sources.values()) | {s for n in nodes for s in n.get("sources", {}).values()}
    part = {
        **(this_run or {}),
        "energy_j": reading.joules + sum(known),
        "complete": reading.complete and all(n.get("complete") for n in nodes),
        "source": "+".join(sorted(sources)),
    }
    meta["nodes"] = [driver, *nodes]
    _add_parts(meta, [*earlier, part])
    covers = (
        "the node's counters over the study's span"
        if "measured" in meta["study_energy_source"]
        else "CPU time of this driver and every process it started on this node (Ray's GCS, raylet, "
        "workers, idle or exited), over the study's span"
    )
    if nodes:
        covers = (
            "this driver's process tree, plus on each of the cluster's "
            f"{len(nodes)} node(s) Ray's processes there (raylet, workers; GCS and dashboard on the "
            "head), measured by an actor on that node (see nodes)"
        )
    if reading.attributions:
        covers += "; shared counters split by each part's share of the device's busy time"
    if earlier:
        measured = sum(p.get("energy_j") is not None for p in meta["parts"])
        covers += f"; summed over the parts of the study measured by its runs ({measured} of {len(meta['parts'])}: it was resumed)"
    meta["study_energy_covers"] = covers
    _add_framework(meta)


def _add_parts(meta: dict[str, Any], parts: list[dict[str, Any]]) -> None:
    """``parts`` and their sum in ``meta`` (an unmeasured part makes the sum incomplete)."""
    meta["parts"] = parts
    known = [p["energy_j"] for p in parts if p.get("energy_j") is not None]
    meta["study_energy_j"] = float(sum(known))
    meta["study_energy_complete"] = len(known) == len(parts) and all(p.get("complete") for p in parts)
    meta["study_energy_source"] = "+".join(
        sorted({s for p in parts for s in str(p.get("source") or "").split("+") if s})
    )


def earlier_parts(previous: dict[str, Any]) -> list[dict[str, Any]]:
    """The parts of a study that its earlier runs measured, from its ``study.json`` as they left
    it: a run that ended normally wrote its part there; one that was killed before it could (its
    ``finished`` is unset) is a part of unknown energy, said so, never 0 J."""
    if not previous:
        return []
    parts = list(previous.get("parts") or [])
    if previous.get("finished") is None:
        return [*parts, {"energy_j": None, "complete": False, "interrupted": True,
                         "note": "not measured: this run of the study was killed before it wrote its energy"}]  # fmt: skip
    if "parts" in previous:
        return parts
    # A study.json written before studies were measured in parts: its one run.
    return [
        {
            "started": previous.get("started"),
            "finished": previous.get("finished"),
            "wall_s": previous.get("wall_s"),
            "interrupted": previous.get("interrupted"),
            "energy_j": previous.get("study_energy_j"),
            "complete": bool(previous.get("study_energy_complete")),
            "source": previous.get("study_energy_source"),
        }
    ]


def was_interrupted(experiment: Path) -> bool:
    """Whether Ray ended the study before its trials ended (Ctrl-C, SIGINT): Ray then returns the
    results so far as a finished study's. Its saved state, written before it stops the trials,
    still holds trials that were running or waiting; a study that ran to its end (or that a
    stopper or the energy budget ended) holds only terminated and failed trials."""
    from ray.tune import ExperimentAnalysis

    try:
        trials = ExperimentAnalysis(str(experiment)).trials
    except Exception:  # no state to read: nothing to say it was cut
        return False
    return any(trial.status not in ("TERMINATED", "ERROR") for trial in trials)


def _add_framework(meta: dict[str, Any]) -> None:
    """The framework's energy: the study's less the trials' (unknown, and said, where negative)."""
    total = meta["study_energy_j"]
    used = meta.get("energy_used_j")
    if used is not None and total > 0:
        framework = total - used
        if framework < 0:
            meta["framework_note"] = (
                f"the trials' records ({used:.4g} J) exceed the study's measured energy ({total:.4g} J): "
                "a part of the study was not measured (a resumed study's earlier part, a lost node); "
                "the framework's share is unknown"
            )
            meta["framework_energy_j"] = None
            meta["framework_share"] = None
        else:
            meta["framework_energy_j"] = framework
            meta["framework_share"] = framework / total


def study_meter(cfg: DictConfig) -> Any:
    """The meter around a whole study, with the runs' energy settings: node counters (RAPL, every
    visible GPU) where they exist, else the CPU-time estimate of this process tree."""
    from lightning_green.energy import make_meter

    e = cfg.energy
    return make_meter(
        e.get("backend", "auto"), gpu_indices=None, measure_node=True, rapl_root=e.get("rapl_root"),
        watts_per_core=e.get("watts_per_core"), include_children=True, track_descendants=True,
        attribution=e.get("attribution", "auto"),
    )  # fmt: skip


def _records_source(path: Any) -> str:
    """``domain=source`` of a trial's energy records (as the final report says it)."""
    folder = Path(str(path))
    windows = read_windows(folder) if (folder / RECORDS_FILE).is_file() else []
    sources = {d: src for w in windows for d, src in w.sources.items()}
    return ", ".join(f"{d}={src}" for d, src in sorted(sources.items()))


def _windows_span(path: Any) -> tuple[float, float | None]:
    """Seconds a trial spent in EnergyMonitor's windows (training, validation, test), and the Unix
    time its first window opened (``None`` without records)."""
    folder = Path(str(path))
    if not (folder / RECORDS_FILE).is_file():
        return 0.0, None
    windows = read_windows(folder)
    return float(sum(w.seconds for w in windows)), min((w.start_time for w in windows), default=None)


def trials_table(grid: Any, acc: str, energy: str) -> pd.DataFrame:
    """One row per trial, in creation order: parameters, final metrics, status, its folder."""
    rows = []
    for r in grid:
        m = r.metrics or {}
        trial_id = m.get("trial_id") or Path(r.path).name
        row: dict[str, Any] = {"trial_id": trial_id}
        row.update({f"param.{k}": v for k, v in flatten(r.config or {}).items()})
        row.update(
            accuracy=m.get(acc),
            energy_j=m.get(energy),
            dynamic_j=m.get("dynamic_j"),
            test_acc=m.get("test_acc"),
            total_j=m.get("total_j", m.get(energy)),
            epochs=m.get("epochs", m.get("training_iteration")),
            iterations=m.get("training_iteration"),
            finished=bool(m.get("final", False)),
            status="ERROR" if r.error else "TERMINATED",
            error=repr(r.error)[:300] if r.error else "",
            source=m.get("source", ""),
            node_id=m.get("node_id", ""),
            path=r.path,
        )
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    # Ray names a trial's folder <trainable>_<trial id>_<creation counter>_<params>: the counter is
    # the order in which the searcher proposed the trials.
    df["order"] = [_creation_index(tid, path) for tid, path in zip(df["trial_id"], df["path"], strict=True)]
    return df.sort_values("order").reset_index(drop=True)


def max_epochs(cfg: DictConfig, params: list) -> int:
    """The most epochs a trial can train: the searched range's top when ``trainer.max_epochs`` is searched."""
    searched = next((p for p in params if p.key == "trainer.max_epochs"), None)
    if searched is not None:
        return int(searched.high) if searched.type == "int" else int(max(searched.values))
    return int(cfg.trainer.max_epochs)


def add_savings(df: pd.DataFrame, max_epochs: int) -> None:
    """Mark trials that ended before their last epoch (a scheduler or stopper, or a callback in
    the trial such as the efficient strategy's stop at the target), and estimate the energy that
    saved: their mean energy per epoch so far x the epochs they did not run (an estimate). A
    trial's own ``param.trainer.max_epochs``, when searched, is its last epoch."""
    ok = df["status"] == "TERMINATED"
    epochs = df["epochs"].astype(float)
    last = (
        df["param.trainer.max_epochs"].astype(float)
        if "param.trainer.max_epochs" in df
        else float(max_epochs)
    )
    df["stopped_early"] = ok & (epochs < last)
    per_epoch = df["energy_j"].astype(float) / epochs.where(epochs > 0)
    df["energy_saved_estimate_j"] = (per_epoch * (last - epochs)).where(df["stopped_early"], 0.0).fillna(0.0)


def keep_attempts(experiment: Path, dest: Path) -> None:
    """Copy every trial folder's energy records under ``dest/<trial folder>/`` before a resume."""
    for records in sorted(experiment.glob(f"*/{RECORDS_FILE}")):
        target = dest / records.parent.name
        target.mkdir(parents=True, exist_ok=True)
        n = len(list(target.glob("*.jsonl")))
        shutil.copyfile(records, target / f"{RECORDS_FILE.removesuffix('.jsonl')}-{n}.jsonl")


#: The stages of a fit: a trial's ``energy_j`` and ``dynamic_j`` (``total_j`` adds its test).
FIT_STAGES = ("train", "validate", "sanity_check")


def add_attempts(df: pd.DataFrame, experiment: Path, kept: Path, energy_metric: str = "energy_j") -> None:
    """Complete each trial's energy from its records (the trial folder's ``energy.jsonl`` and the
    copies :func:`keep_attempts` made; each window counted once):

    - ``other_attempts_j`` / ``other_attempts_dynamic_j``: the windows of attempts other than its
      last (a crash or kill retried by Ray, an attempt cut by an interrupted study);
    - ``total_dynamic_j``: the dynamic energy of its last attempt's windows, test included (what
      a comparison sums beside ``total_j``);
    - for a trial whose final report is missing (it failed, a scheduler stopped it, the study was
      cut): ``total_j`` and ``dynamic_j`` from its last attempt's windows, and its energy metric
      where it reported none. Energy spent is counted whether or not Ray heard of it.

    ``energy_from`` says where a trial's figures come from: ``final report``, ``records``,
    ``last report`` (no records to read), or ``none``. The last attempt is the one that wrote
    ``run.json``, else the one whose windows started last.
    """
    for column in ("energy_j", "total_j", "dynamic_j"):
        if column not in df:
            df[column] = math.nan
    finished = (
        df["finished"].fillna(False).astype(bool) if "finished" in df else pd.Series(False, index=df.index)
    )
    extra, extra_dynamic, total_dynamic, sources = [], [], [], []
    for i, path in zip(df.index, df["path"], strict=True):
        folder = Path(str(path))
        files = [folder / RECORDS_FILE, *sorted((kept / folder.name).glob("*.jsonl"))]
        seen: dict[tuple, Any] = {}
        for f in files:
            if f.is_file():
                for w in read_windows(f):
                    seen[(w.run_id, w.stage, w.epoch, w.start_time)] = w
        last = read_json(folder / RUN_FILE).get("run_id") if (folder / RUN_FILE).is_file() else None
        if last is None and seen:
            last = max(seen.values(), key=lambda w: w.start_time).run_id
        mine = [w for w in seen.values() if w.run_id == last]
        others = [w for w in seen.values() if w.run_id != last]
        extra.append(sum(w.energy_j for w in others))
        extra_dynamic.append(_dynamic_j(others))
        total_dynamic.append(_dynamic_j(mine) if mine else df.at[i, "dynamic_j"])
        if finished[i]:
            sources.append("final report")
        elif mine:
            fit = [w for w in mine if w.stage in FIT_STAGES]
            df.at[i, "total_j"] = sum(w.energy_j for w in mine)
            df.at[i, "dynamic_j"] = _dynamic_j(fit)
            if pd.isna(df.at[i, "energy_j"]):
                df.at[i, "energy_j"] = _metric_from_windows(energy_metric, mine)
            sources.append("records")
        else:
            sources.append("none" if pd.isna(df.at[i, "energy_j"]) else "last report")
    df["other_attempts_j"] = extra
    df["other_attempts_dynamic_j"] = pd.Series(extra_dynamic, index=df.index, dtype=float)
    df["total_dynamic_j"] = pd.Series(total_dynamic, index=df.index, dtype=float)
    df["energy_from"] = sources


def _dynamic_j(windows: list) -> float | None:
    """Dynamic energy of ``windows`` (0 for none); ``None`` when a window has none (no baseline)."""
    if any(w.dynamic_j is None for w in windows):
        return None
    return float(sum(w.dynamic_j for w in windows))


def _metric_from_windows(metric: str, windows: list) -> float:
    """A trial's energy metric (what it reports every epoch) recomputed from its windows."""
    fit = [w for w in windows if w.stage in FIT_STAGES]
    if metric == "total_j":
        return float(sum(w.energy_j for w in windows))
    if metric == "train_epoch_j":
        train = [w for w in fit if w.stage == "train"]
        return float(max(train, key=lambda w: w.start_time).energy_j) if train else math.nan
    if metric == "dynamic_j":
        dynamic = _dynamic_j(fit)
        return math.nan if dynamic is None else dynamic
    return float(sum(w.energy_j for w in fit))


def _creation_index(trial_id: str, path: str) -> float:
    m = re.search(rf"_{re.escape(str(trial_id))}_(\d+)", Path(str(path)).name)
    return int(m.group(1)) if m else math.inf
