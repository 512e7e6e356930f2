"""Running a Ray Tune study and saving its results (reports on it are in :mod:`lightning_green.report.studies`).

A study folder holds ``study.json`` (what was searched, how, on which Ray), ``trials.csv`` (one
row per trial: parameters, accuracy, energy, status, in creation order; its columns are
:mod:`lightning_green.trials`) and ``ray/`` (Ray's own experiment folder, one sub-folder per
trial with that trial's energy records).

A study runs in three parts: :mod:`~lightning_green.tune.preflight` checks the config before Ray
starts; this module starts or joins Ray and runs the Tuner with the study measured around it;
:mod:`~lightning_green.tune.results` and :mod:`~lightning_green.tune.study_energy` (no Ray)
turn what it left into ``trials.csv`` and ``study.json``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lightning_green.config import to_container
from lightning_green.ledger import new_run_id
from lightning_green.records import STUDY_FILE, read_json, write_json_atomic
from lightning_green.trials import write_trials
from lightning_green.tune.exporting import export_study_energy, study_labels
from lightning_green.tune.node_energy import NodeMeters
from lightning_green.tune.preflight import check_resources, check_resumable, max_epochs, prepare
from lightning_green.tune.results import (
    ATTEMPTS_DIR,
    add_attempts,
    add_overheads,
    add_trial_figures,
    keep_attempts,
    trials_table,
)
from lightning_green.tune.space import Param
from lightning_green.tune.strategies import asha_settings, search_setup, uses_asha
from lightning_green.tune.study_energy import add_study_energy, earlier_parts, part_record, study_meter

# What callers import from here: the entry points, and the attempt bookkeeping the tests drive.
__all__ = ["add_attempts", "check_resumable", "init_ray", "keep_attempts", "prepare", "run_study"]


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
    skip_unsent_callback_tags()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    res = ray.cluster_resources()
    return {
        "address": tune_cfg.ray_address or "local",
        "nodes": len(nodes),
        "node_ids": [n["NodeID"] for n in nodes],
        "cpus": res.get("CPU", 0),
        "gpus": res.get("GPU", 0),
    }


def skip_unsent_callback_tags() -> None:
    """Skip Ray Tune's tag of which callbacks a study passes where Ray's usage stats are off.

    To tag them, Tune imports every logger integration it knows (MLflow's, W&B's, Comet's,
    Aim's): about 3 s of CPU at a study's start where they are installed. ``ray.init()``
    of a local Ray turns usage stats off, so the tag would never be sent; where they are on (a
    cluster started with them), Ray tags as usual. Another Ray layout: Ray's own behaviour.
    """
    try:
        from ray._common.usage.usage_lib import usage_stats_enabled
        from ray.air._internal import usage
    except ImportError:
        return
    if not usage_stats_enabled() and hasattr(usage, "tag_callbacks"):
        usage.tag_callbacks = lambda callbacks: False


def run_study(
    cfg: DictConfig, out: Path, seed: int | None = None, cluster: dict[str, Any] | None = None
) -> Path:
    """Run one study into ``out`` (or resume it there); returns ``out``."""
    params, base = prepare(cfg)
    t = cfg.tune
    seed = t.seed if seed is None else seed
    base["seed"] = seed
    cluster = cluster or init_ray(t)
    check_resources(t, cluster)
    out.mkdir(parents=True, exist_ok=True)
    labels = study_labels(t, seed)
    meta = study_meta(cfg, params, seed, cluster)
    tuner, earlier = make_tuner(cfg, out, params, base, seed, meta, labels)
    write_json_atomic(out / STUDY_FILE, meta)
    fitted = fit_measured(cfg, tuner)
    write_results(cfg, out, params, meta, fitted, earlier, cluster)
    if fitted.reading is not None:
        export_study_energy(cfg, labels, part_record(fitted.reading, fitted.nodes, fitted.run_id))
    return out


def study_meta(cfg: DictConfig, params: list[Param], seed: int, cluster: dict[str, Any]) -> dict[str, Any]:
    """What ``study.json`` says before any trial runs: what is searched, how, on which Ray."""
    t = cfg.tune
    return {
        "kind": "study",
        "strategy": to_container(t.strategy),
        "space": [p.__dict__ for p in params],
        "num_samples": t.num_samples,
        "max_concurrent": t.max_concurrent,
        "seed": seed,
        "accuracy_metric": t.accuracy_metric,
        "energy_metric": t.energy_metric,
        "scheduler": "asha" if uses_asha(t) else t.scheduler,
        "asha": {**asha_settings(t), "brackets": asha_brackets(cfg, params)} if uses_asha(t) else None,
        "target_accuracy": t.get("target_accuracy"),
        "target_fraction": t.get("target_fraction"),
        "energy_budget_j": t.energy_budget_j,
        "cluster": cluster,
        "max_epochs": cfg.trainer.max_epochs,
        "started": time.time(),
        "finished": None,
    }


def make_tuner(
    cfg: DictConfig, out: Path, params: list[Param], base: dict[str, Any], seed: int, meta: dict[str, Any],
    labels: dict[str, str],
) -> tuple[Any, list[dict[str, Any]]]:  # fmt: skip
    """Ray's Tuner for the study, and the parts of it earlier runs measured: a new study, or with
    ``tune.resume=true`` the interrupted one in ``out`` (``meta`` then says it was resumed)."""
    from ray import tune

    from lightning_green.tune.trainable import train_trial

    t = cfg.tune
    storage = (out / "ray").resolve()
    experiment = storage / t.name
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, base=base, cpus_per_trial=t.cpus_per_trial, labels=labels),
        {"cpu": t.cpus_per_trial, "gpu": t.gpus_per_trial},
    )
    if not (t.resume and tune.Tuner.can_restore(str(experiment))):
        return new_tuner(cfg, trainable, params, base, seed, storage), []
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
    return tuner, earlier


def new_tuner(
    cfg: DictConfig, trainable: Any, params: list[Param], base: dict[str, Any], seed: int, storage: Path
) -> Any:
    """A Tuner for a new study: the strategy's searcher, ASHA where asked, the energy budget, and
    a line per finished trial."""
    from ray import tune

    from lightning_green.tune.ray_callbacks import EnergyBudgetStopper, TrialLines

    t = cfg.tune
    alg, space, kw = search_setup(t.strategy, params, t, seed, base)
    stop = EnergyBudgetStopper(t.energy_budget_j, t.energy_metric) if t.energy_budget_j else None
    progress = [TrialLines(f"{t.strategy.name} seed {seed}", t.accuracy_metric, t.energy_metric)]
    scheduler = asha_scheduler(cfg, params, kw, seed)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(search_alg=alg, scheduler=scheduler, reuse_actors=t.reuse_actors, **kw),
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


def asha_brackets(cfg: DictConfig, params: list[Param]) -> int:
    """ASHA's brackets: one, except for the ``bohb`` strategy: ``tune.strategy.brackets``, or with
    null HyperBand's (:func:`~lightning_green.tune.peers.hyperband_brackets`)."""
    t = cfg.tune
    if t.strategy.name != "bohb":
        return 1
    if t.strategy.get("brackets") is not None:
        return int(t.strategy.brackets)
    from lightning_green.tune.peers import hyperband_brackets

    settings = asha_settings(t)
    return hyperband_brackets(
        max_epochs(cfg, params) + 1, settings["grace_period"], settings["reduction_factor"]
    )


def asha_scheduler(cfg: DictConfig, params: list[Param], kw: dict[str, Any], seed: int = 0) -> Any:
    """ASHA with ``tune.asha``'s settings where the study uses it (``None`` elsewhere). With a
    single metric ASHA takes Tune's; multi-objective and efficient studies rank trials by accuracy.
    One iteration per epoch, plus the final report. Over several brackets (:func:`asha_brackets`)
    each trial's bracket is a draw seeded with ``seed``."""
    t = cfg.tune
    if not uses_asha(t):
        return None
    from ray.tune.schedulers import ASHAScheduler

    ranking = {} if "metric" in kw else {"metric": t.accuracy_metric, "mode": "max"}
    settings = {
        "time_attr": "training_iteration",
        "max_t": max_epochs(cfg, params) + 1,
        **asha_settings(t),
        **ranking,
    }
    brackets = asha_brackets(cfg, params)
    if brackets == 1:
        return ASHAScheduler(**settings)
    from lightning_green.tune.peers import SeededASHA

    return SeededASHA(**settings, brackets=brackets, seed=seed)


@dataclass
class Fitted:
    """What running the Tuner left: Ray's results, and the study's own measurement of the run.

    Attributes:
        grid: Ray's result grid.
        reading: The driver's meter over the run (``None`` when it failed).
        nodes: Each cluster node's figure (empty on a Ray this process started).
        wall_s: Seconds the run took; started: its Unix start time.
        run_id: This run's id: its part of the study in ``study.json`` and the exported record.
    """

    grid: Any
    reading: Any
    nodes: list[dict[str, Any]]
    wall_s: float
    started: float
    run_id: str


def fit_measured(cfg: DictConfig, tuner: Any) -> Fitted:
    """Run the Tuner with the study's meter around it (and, on a cluster, one on every node)."""
    t = cfg.tune
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
    return Fitted(grid, reading, node_figures, wall_s, started, new_run_id())


def write_results(
    cfg: DictConfig, out: Path, params: list[Param], meta: dict[str, Any], fitted: Fitted,
    earlier: list[dict[str, Any]], cluster: dict[str, Any],
) -> None:  # fmt: skip
    """``trials.csv`` and the finished ``study.json``: the trials' figures, from Ray's results and
    their records, and the study's energy, its earlier runs' parts included."""
    t = cfg.tune
    experiment = (out / "ray").resolve() / t.name
    df = trials_table(fitted.grid, t.accuracy_metric, t.energy_metric)
    meta["finished"] = time.time()
    meta["interrupted"] = was_interrupted(experiment)
    this_run = {"run_id": fitted.run_id, "started": fitted.started, "finished": meta["finished"],
                "wall_s": fitted.wall_s, "interrupted": meta["interrupted"]}  # fmt: skip
    # A resumed study's seconds and energy are those of all its runs.
    wall_s = fitted.wall_s + sum(p.get("wall_s") or 0.0 for p in earlier)
    started = next((p["started"] for p in earlier if p.get("started")), fitted.started)
    meta["wall_s"] = wall_s
    add_trial_figures(
        meta, df, t, experiment=experiment, attempts=out / ATTEMPTS_DIR, max_epochs=max_epochs(cfg, params)
    )
    add_overheads(meta, df, t, cluster, wall_s, started)
    if fitted.reading is not None or earlier:
        add_study_energy(meta, fitted.reading, fitted.nodes, earlier, this_run)
    write_trials(df, out)
    write_json_atomic(out / STUDY_FILE, meta)


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
