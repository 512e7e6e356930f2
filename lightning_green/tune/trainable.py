"""The Ray Tune trainable: one trial trains one configuration of the tree with EnergyMonitor on."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from lightning_green.tune.space import flatten

#: Reported every epoch (Ray's Lightning callback reads them from trainer.callback_metrics).
EPOCH_METRICS = {
    "val_acc": "val_acc",
    "val_loss": "val_loss",
    "energy_j": "energy/total_j",
    "train_epoch_j": "energy/train_epoch_j",
}
#: Reported once, when a trial ends.
FINAL_METRICS = ("test_acc", "total_j", "dynamic_j")
#: Every metric a trial reports: what ``tune.accuracy_metric`` / ``tune.energy_metric`` may name.
REPORTED_METRICS = (*EPOCH_METRICS, *FINAL_METRICS)


def records_folder() -> str:
    """The folder of this trial's energy records: one folder for every attempt of the trial.

    Ray's ``get_trial_dir()`` names the driver's staging folder of the trial in a fresh worker but
    the trial's working folder in a reused one (``reuse_actors``); a retried attempt may run in
    either, and Ray copies both folders into the trial's storage folder, so one attempt's
    ``energy.jsonl`` would replace the other's there. The staging folder is what every fresh worker
    gets and what the driver copies to storage until the study ends.
    """
    import ray

    try:
        from ray.train._internal.session import get_session

        return str(get_session().storage.trial_driver_staging_path)
    except Exception:  # another Ray layout: its own trial folder
        return ray.tune.get_context().get_trial_dir()


def train_trial(
    config: dict[str, Any],
    base: dict[str, Any],
    cpus_per_trial: int = 1,
    labels: dict[str, str] | None = None,
) -> None:
    """Apply the trial's parameters to the base config, train, and report every epoch and at the end.

    ``labels``: the study's constant labels (:func:`~lightning_green.tune.exporting.study_labels`);
    every exporter the config asks for gets them, plus ``trial`` (Ray's trial id)."""
    import ray
    from ray.tune.integration.pytorch_lightning import TuneReportCheckpointCallback

    from lightning_green.experiment import run_training
    from lightning_green.tune.exporting import label_exporters

    cfg = OmegaConf.create(base)
    if labels is not None:
        label_exporters(cfg.get("callbacks"), {**labels, "trial": ray.tune.get_context().get_trial_id()})
    # A trial computes with the CPUs Ray gave it, unless `threads` says otherwise.
    if cfg.get("threads") is None:
        cfg.threads = max(1, int(cpus_per_trial))
    for key, value in flatten(config).items():
        OmegaConf.update(cfg, key, value, force_add=False)
    cfg.output_dir = records_folder()
    cfg.logger = None  # Ray records the results; the energy records go to the trial folder
    report = TuneReportCheckpointCallback(metrics=EPOCH_METRICS, save_checkpoints=False, on="train_epoch_end")
    record = run_training(cfg, extra_callbacks=[report])
    ray.tune.report(
        {
            "val_acc": record.val_acc,
            "energy_j": record.energy_j,
            "dynamic_j": record.dynamic_j,
            "test_acc": record.test_acc,
            "total_j": record.total_j,
            "epochs": record.epochs,
            "source": ", ".join(f"{d}={s}" for d, s in sorted(record.sources.items())),
            "complete": record.complete,
            "node_id": ray.get_runtime_context().get_node_id(),
            "final": True,
        }
    )
