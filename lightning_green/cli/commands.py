"""The commands and the keys each takes, and the help written from them.

Nothing heavy is imported here: ``lightning-green --help`` must answer at once. A key's choices are
read from the config tree's files (``{choices}``), so the help cannot fall behind the tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: The config tree, found by path: ``lightning_green.config.CONF_DIR`` is the same folder, but
#: importing that module imports Hydra, which help must not wait for.
CONF_DIR = Path(__file__).parents[1] / "conf"


@dataclass(frozen=True)
class Key:
    """One setting a command takes, as the user types it (``trainer.max_epochs=3``)."""

    name: str
    #: What goes after ``=`` (``N``, ``NAME``); empty for a flag.
    value: str
    #: The default as Hydra writes it (``null``, ``true``, ``0.95``); None where there is none or it
    #: depends on another choice (the meaning then says so).
    default: str | None
    #: What it does. ``{choices}`` becomes the config group's files, read from the tree so the list
    #: cannot fall behind it.
    meaning: str


@dataclass(frozen=True)
class Command:
    """A command's help: what it is for, its main keys and examples."""

    #: Its line in ``lightning-green --help``.
    summary: str
    #: Empty where the command's own parser answers ``--help``.
    usage: str = ""
    about: str = ""
    keys: tuple[Key, ...] = ()
    examples: tuple[str, ...] = ()
    #: Hydra commands take ``key=value`` overrides and Hydra's own flags (``-m``, ``--cfg job``).
    hydra: bool = True


#: The search strategies: the files of ``conf/tune/strategy/`` (the one list, read without Hydra).
STRATEGIES = ", ".join(sorted(p.stem for p in (CONF_DIR / "tune" / "strategy").glob("*.yaml")))

# The help tables below are laid out by hand, one key a line: the formatter would split them apart.
# fmt: off
# Keys every Hydra command shares, in the order help shows them.
_MODEL = Key("model", "NAME", "cnn", "the network: {choices}; its sizes as model.<key>")
_DATA = Key("data", "NAME", "digits", "the dataset: {choices} (digits ships with the package)")
_TRAINER = Key("trainer", "NAME", "cpu", "Lightning Trainer preset: {choices}")
_BACKEND = Key(
    "energy.backend", "NAME", "auto",
    "how energy is measured: auto (GPUs through NVML, CPUs through RAPL, else the CPU-time "
    "estimate), zeus, nvml, rapl or estimate",
)
_CARBON = Key(
    "energy.carbon_intensity", "G|PLACE", "WORLD",
    "gCO2e per kWh, or a place (DE, US-CA, aws:eu-west-1; `lightning-green carbon` lists them); "
    "WORLD is 475 g/kWh",
)
_THREADS = Key(
    "threads", "N", "1",
    "CPU threads PyTorch computes with; null: PyTorch's default (every core). One keeps the CPU-time "
    "estimate from moving with other load; compare runs with the same threads",
)
_SEED = Key("seed", "N", "0", "seeds the model, the data split and the loaders")


def _run_dir(default: str) -> Key:
    return Key("hydra.run.dir", "PATH", None, f"where the records go (default: {default}/<date-time>)")


_TUNE_KEYS = (
    Key("tune.num_samples", "N", "16", "trials in a study (the budget)"),
    Key("tune/space", "NAME", "paper", "what is searched: {choices} (see conf/tune/space/)"),
    Key("tune.max_concurrent", "N", "2", "trials at once"),
    Key("tune.target_accuracy", "F", "null",
        "the accuracy a trial must reach for strategy efficient; null: tune.target_fraction x the "
        "best so far"),
    Key("tune.scheduler", "NAME", "fifo", "fifo, or asha (stops weak trials early)"),
    Key("tune.energy_budget_j", "J", "null", "stop the study once its trials have used this many joules"),
    Key("tune.ray_address", "ADDR", "null",
        "null: start Ray on this machine; auto or host:port: join a running cluster"),
    Key("tune.cpus_per_trial", "N", "1", "CPUs each trial gets (tune.gpus_per_trial: GPUs, default 0)"),
    Key("trainer.max_epochs", "N", "3", "epochs per trial"),
)

_HYDRA_FLAGS = (
    Key("--cfg job", "", None, "print the composed config (every key with its value) and exit"),
    Key("--hydra-help", "", None, "Hydra's own flags (--info, --resolve, -cn, shell completion)"),
)

COMMANDS: dict[str, Command] = {
    "train": Command(
        summary="train one configuration, or a multirun with -m; prints energy, CO2e and accuracy",
        usage="lightning-green train [-m] [KEY=VALUE ...]",
        about=(
            "Train one configuration of the config tree with EnergyMonitor on: energy per epoch in "
            "joules, CO2e and test accuracy, printed and written to the run folder (run.json, "
            "energy.jsonl, metrics.csv). Settings are Hydra overrides, KEY=VALUE; with -m, one run "
            "per combination of comma-separated values. `lightning-green report <folder>` tabulates them."
        ),
        keys=(
            _MODEL,
            Key("model.conv_layers", "N", "2", "conv blocks of the CNN (model.linear_layers: dense, 2)"),
            _DATA,
            Key("data.batch_size", "N", "64", "samples per batch"),
            _TRAINER,
            Key("trainer.max_epochs", "N", "20", "epochs (trainer=gpu and ddp: 5)"),
            Key("trainer.limit_train_batches", "N|F", "null", "batches (or a fraction) an epoch; null: all"),
            Key("optimizer.lr", "F", "0.001", "Adam's learning rate (also beta1, beta2, eps, weight_decay)"),
            _BACKEND,
            _CARBON,
            Key("energy.pue", "F", "1.0", "data-centre power usage effectiveness (1.0: devices alone)"),
            Key("energy.baseline_s", "S", "2.0", "idle seconds measured first (static vs dynamic); 0: off"),
            Key("callbacks.energy_budget.max_j", "J", "null",
                "stop training once it has used this many joules (max_kwh, max_co2e_g: in kWh, gCO2e)"),
            Key("callbacks.layer_profiler._enabled_", "BOOL", "false",
                "add LayerEnergyProfiler: energy per layer"),
            Key("logger", "NAME", "csv",
                "where metrics go: {choices}; several: logger=[csv,mlflow]; none: logger=null"),
            Key("+experiment", "NAME", None, "a preset: {choices} (paper_rq2: the paper's 2x2x2 multirun)"),
            _THREADS,
            _SEED,
            Key("test", "BOOL", "true", "test the best checkpoint after fitting"),
            _run_dir("lightning_green_runs"),
            Key("-m, --multirun", "", None,
                "a sweep: model.conv_layers=1,2,4 is three runs, in hydra.sweep.dir (default: "
                "lightning_green_runs/multirun/<date-time>); hydra/launcher=local or slurm: each job "
                "through submitit"),
            *_HYDRA_FLAGS,
        ),
        examples=(
            "lightning-green train trainer.max_epochs=3 model.conv_layers=4",
            "lightning-green train -m model.conv_layers=1,2,4 threads=1",
            "lightning-green train model=transformer data=synthetic energy.carbon_intensity=DE",
        ),
    ),
    "profile": Command(
        summary="energy per layer and layer type of a model (train briefly with LayerEnergyProfiler)",
        usage="lightning-green profile [KEY=VALUE ...]",
        about=(
            "Train one epoch of a configuration with LayerEnergyProfiler and print joules per step by "
            "layer type and the top modules; layers.csv and the layer-type table go to the run folder. "
            "Takes every train key; the ones below matter most."
        ),
        keys=(
            _MODEL,
            _DATA,
            Key("profiler.mode", "NAME", "allocate",
                "how a step's joules are split: allocate (by time), power (time x each module's "
                "replayed power) or replay (each module replayed alone and measured); power shows all three"),
            Key("profiler.warmup_steps", "N", "5", "training steps before the first profiled step"),
            Key("profiler.profile_steps", "N", "3", "consecutive profiled steps per window"),
            Key("profiler.every_n_steps", "N", "500", "start a new window every N steps"),
            Key("trainer.max_epochs", "N", "1", "epochs (trainer.limit_train_batches caps the steps)"),
            _TRAINER,
            _BACKEND,
            _run_dir("lightning_green_runs"),
            *_HYDRA_FLAGS,
        ),
        examples=(
            "lightning-green profile",
            "lightning-green profile model=resnet18 data=synthetic profiler.mode=replay",
            "lightning-green profile model=transformer profiler.mode=power trainer=gpu",
        ),
    ),
    "tune": Command(
        summary=f"a Ray Tune study of accuracy and energy: tune/strategy={STRATEGIES.replace(', ', '|')}",
        usage="lightning-green tune [KEY=VALUE ...]",
        about=(
            "Run one Ray Tune study over the config tree: every trial trains with EnergyMonitor on and "
            "reports accuracy and joules. Writes study.json, trials.csv and pareto.csv (the accuracy vs "
            "energy front) to the study folder and prints the best accuracy and the energy spent."
        ),
        keys=(
            Key("tune/strategy", "NAME", "random",
                "the search: grid, random, bayes (model-based, accuracy), multi (accuracy and energy "
                "together), efficient (least energy to reach a target accuracy), or its peers asha "
                "(random + ASHA), bohb (TPE + ASHA brackets), cfo (FLAML, needs [flaml])"),
            Key("tune.strategy.sampler", "NAME", None,
                "the strategy's model: bayes gp|tpe (gp), multi tpe|gp|nsga2 (tpe), efficient "
                "cost|tpe|gp (cost)"),
            *_TUNE_KEYS,
            Key("tune.resume", "BOOL", "false", "continue an interrupted study found in hydra.run.dir"),
            _run_dir("lightning_green_runs/tune"),
            *_HYDRA_FLAGS,
        ),
        examples=(
            "lightning-green tune tune/strategy=bayes tune.num_samples=32",
            "lightning-green tune tune/strategy=efficient tune/space=architecture tune.target_accuracy=0.9",
            "lightning-green tune tune/strategy=multi tune/space=extended tune.ray_address=auto",
        ),
    ),
    "compare": Command(
        summary=f"run search strategies ({STRATEGIES}) on the same budget and compare them",
        usage="lightning-green compare [KEY=VALUE ...]",
        about=(
            "Run one study per strategy and seed, each with the same budget (tune.num_samples), then "
            "write compare.csv, compare.md and the best-so-far plot to the comparison folder and "
            "print the table. Takes every tune key."
        ),
        keys=(
            Key("compare.strategies", "[LIST]", "[grid,random,bayes,multi,efficient]",
                f"strategies compared, any of: {STRATEGIES} (cfo needs [flaml])"),
            Key("compare.seeds", "[LIST]", "[0,1,2]", "one study per strategy and seed"),
            Key("compare.target_fraction", "F", "0.95",
                "target accuracy: this x the best any strategy found (unless tune.target_accuracy is set)"),
            Key("compare.reference_energy_j", "J", "null",
                "the hypervolume's reference energy; null: 1.1 x the largest trial energy"),
            *_TUNE_KEYS,
            _run_dir("lightning_green_runs/compare"),
            *_HYDRA_FLAGS,
        ),
        examples=(
            "lightning-green compare tune.num_samples=24 compare.seeds=[0,1,2]",
            "lightning-green compare compare.strategies=[random,efficient] compare.seeds=[0]",
            "lightning-green compare tune/space=architecture tune.scheduler=asha",
        ),
    ),
    "report": Command(
        summary="turn a run, multirun, study or comparison folder into summary.csv/.md and plots",
        usage="lightning-green report PATH [PATH ...] [--out DIR]",
        about=(
            "Read the records of a run, multirun, study or comparison folder (never log text) and write "
            "summary.csv, summary.md and plots (accuracy vs energy with its Pareto front, energy by "
            "factor; main_effects.csv for a factorial multirun); print the table and the files."
        ),
        keys=(
            Key("PATH", "", None, "a folder; several run folders make one table, a row per folder"),
            Key("--out", "DIR", None,
                "where to write (default: the folder itself; for several folders ./lightning_green_report)"),
        ),
        examples=(
            "lightning-green report lightning_green_runs/multirun/<date-time>",
            "lightning-green report runA runB sweepC --out cmp",
            "lightning-green report lightning_green_runs/compare/<date-time>",
        ),
        hydra=False,
    ),
    # Its own argparse parser answers --help: it imports in a blink and says exactly what it parses.
    "carbon": Command(
        summary="grid carbon intensity by place (gCO2e/kWh): lightning-green carbon DE aws:eu-west-1",
        hydra=False,
    ),
}
# fmt: on

WIDTH = 100
NBSP = "\u00a0"


def version() -> str:
    """The installed distribution's version, else the package's own (a checkout not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("lightning-green")
    except PackageNotFoundError:
        from lightning_green import __version__

        return __version__


def choices(group: str) -> str:
    """The files of config group ``group``, by name (``cnn, resnet18, transformer``)."""
    return ", ".join(sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")))


def _rows(rows: list[tuple[str, str]], indent: int = 2, column: int = 32) -> list[str]:
    """``left  text`` rows, the text wrapped under itself; a long left side gets a line of its own."""
    import textwrap

    lines = []
    for left, text in rows:
        head = " " * indent + left
        # A default stays whole ("[default: auto]"): wrap treats no-break spaces as letters.
        wrapped = [w.replace(NBSP, " ") for w in textwrap.wrap(text, WIDTH - column, break_on_hyphens=False)]
        wrapped = wrapped or [""]
        if len(head) + 2 > column:
            lines.append(head)
        else:
            lines.append(head.ljust(column) + wrapped.pop(0))
        lines += [" " * column + w for w in wrapped]
    return lines


def _key_row(key: Key) -> tuple[str, str]:
    sep = " " if key.name.startswith("-") else "="  # --out DIR, but trainer.max_epochs=N
    left = f"{key.name}{sep}{key.value}" if key.value else key.name
    meaning = key.meaning.replace("{choices}", choices(key.name.lstrip("+")))
    if key.default is not None:
        meaning += f" [default:{NBSP}{key.default}]"
    return left, meaning


def command_help(name: str) -> str:
    """The help of one command: its purpose, main keys with meaning and default, examples (for the
    commands whose ``usage`` is written here; the others' parsers answer for themselves)."""
    import textwrap

    c = COMMANDS[name]
    lines = [f"usage: {c.usage}", "", *textwrap.wrap(c.about, WIDTH, break_on_hyphens=False), ""]
    if c.hydra:
        lines.append("Main keys (Hydra overrides, KEY=VALUE; `--cfg job` prints every key of the tree):")
    else:
        lines.append("Arguments:")
    lines += _rows([_key_row(k) for k in c.keys])
    lines += ["", "Examples:", *(f"  {e}" for e in c.examples)]
    return "\n".join(lines)


def usage() -> str:
    """The top-level help: every command in a line, then where to read more."""
    lines = [
        "usage: lightning-green COMMAND [ARGS ...]",
        "       lightning-green COMMAND --help",
        "       lightning-green --version",
        "",
        "Energy-aware training for PyTorch Lightning: measured joules per epoch, per layer and per "
        "tuning trial.",
        "",
        "Commands:",
    ]
    lines += _rows([(name, c.summary) for name, c in COMMANDS.items()], column=12)
    lines += [
        "",
        "train, profile, tune and compare take Hydra overrides (model=transformer trainer.max_epochs=3);",
        "`lightning-green COMMAND --help` lists the main ones, `lightning-green COMMAND --cfg job` all.",
    ]
    return "\n".join(lines)
