"""``lightning-green <command>``: train, profile, tune, compare, report, carbon.

Help, ``--version`` and the dispatch import nothing heavy (no Lightning, torch, Hydra, Ray or
pandas): a command's module is imported only when the command runs, so ``--help`` answers at once.
The commands and their help are in :mod:`lightning_green.cli.commands`.
"""

from __future__ import annotations

import os
import sys

from lightning_green.cli.commands import (
    COMMANDS,
    CONF_DIR,
    NBSP,
    STRATEGIES,
    WIDTH,
    Command,
    Key,
    choices,
    command_help,
    usage,
    version,
)

__all__ = [
    "COMMANDS",
    "CONF_DIR",
    "NBSP",
    "RELAUNCHABLE",
    "STRATEGIES",
    "WIDTH",
    "Command",
    "Key",
    "command_help",
    "main",
    "usage",
    "version",
]

#: Commands whose training may start more processes (DDP), and the module each is run as.
RELAUNCHABLE = {"train": "lightning_green.train", "profile": "lightning_green.profile"}


def _relaunch_as(module: str) -> None:
    """Make Lightning's DDP launcher start the other ranks as ``python -m <module> <overrides>``.

    Lightning re-runs ``sys.argv`` for every rank: ``python -m __main__.__spec__.name`` when the
    program was started as a module, else ``python sys.argv[0]``. Neither works from a console
    script (``lightning-green`` is not a Python file to re-run, and ``lightning_green.cli`` would
    lose the command word), so point ``__main__``'s spec at the command's own module.
    """
    import importlib.util

    import __main__

    __main__.__spec__ = importlib.util.find_spec(module)


def _launcher_problem(args: list[str]) -> str | None:
    """A SLURM launcher off a SLURM cluster, said in one line before Hydra starts (submitit would
    raise a traceback from inside the launcher)."""
    import shutil

    slurm = any(a in ("hydra/launcher=slurm", "hydra/launcher=submitit_slurm") for a in args)
    if slurm and shutil.which("srun") is None:
        return "no srun found: run this on a SLURM login node, or use hydra/launcher=local"
    return None


NULLS = ("null", "none", "false", "~")


def _group_nulls(args: list[str]) -> tuple[list[str], str | None]:
    """``logger=null`` (``none``, ``false``) means no logger: Hydra's ``~logger``. Any other config
    group set to null is said in one line (Hydra would raise a traceback from its defaults list)."""
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        group = key.lstrip("+")
        if eq and value.strip().lower() in NULLS and (CONF_DIR / group).is_dir() and "." not in group:
            if group == "logger":
                out.append("~logger")
                continue
            return args, f"{group}={value}: the {group} group needs one of {choices(group)}"
        out.append(arg)
    return out, None


def _asks_for_help(args: list[str]) -> bool:
    """``-h``/``--help`` anywhere before ``--``: never a valid override or path, so always a question."""
    before = args[: args.index("--")] if "--" in args else args
    return any(a in ("-h", "--help") for a in before)


#: Lightning's set-up lines that say nothing about the user's run (our own warnings stay).
_HARMLESS = ("💡 Tip:", "exists and is not empty")


def _quiet_lightning_setup() -> None:
    """Leave out Lightning's advertising tips and its warning that a fresh run folder (which Hydra
    has just made, with its .hydra files) "exists and is not empty"."""
    import logging
    import warnings

    class Harmless(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not any(h in record.getMessage() for h in _HARMLESS)

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(Harmless())
    warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
    # Lightning's own use of a torch API torch deprecated: nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"lightning-green {version()}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"lightning-green: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if COMMANDS[command].usage and _asks_for_help(rest):
        # Hydra's --help would compose the tree (importing Lightning on the way) and dump ~200 lines
        # of config groups; ours says what the keys mean. Hydra's is still `--hydra-help`/`--cfg job`.
        print(command_help(command))
        return 0
    if command == "report":
        from lightning_green.report.cli import main as report_main

        return report_main(rest)
    if command == "carbon":
        from lightning_green.carbon_cli import main as carbon_main

        return carbon_main(rest)
    problem = _launcher_problem(rest)
    if problem is None:
        rest, problem = _group_nulls(rest)
    if problem:
        print(f"lightning-green: {problem}", file=sys.stderr)
        return 2
    # Idle OpenMP threads sleep instead of spinning: a spinning thread's CPU time is counted by the
    # CPU-time estimate although it computes nothing, and on a machine with other load it spins
    # longest (set before torch loads its OpenMP runtime; a user's own setting is kept).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _quiet_lightning_setup()
    # Hydra reads sys.argv itself.
    sys.argv = [f"lightning-green {command}", *rest]
    if command in RELAUNCHABLE:
        _relaunch_as(RELAUNCHABLE[command])
    if command == "train":
        from lightning_green.train import main as train_main

        train_main()
    elif command == "profile":
        from lightning_green.profile import main as profile_main

        profile_main()
    elif command == "tune":
        from lightning_green.tune_cli import tune_main

        tune_main()
    elif command == "compare":
        from lightning_green.tune_cli import compare_main

        compare_main()
    return 0
