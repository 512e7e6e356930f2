"""``lightning-green <command>``: train, report, profile, tune, compare."""

from __future__ import annotations

import sys

COMMANDS = {
    "train": "train one configuration, or a multirun with -m (Hydra overrides follow)",
    "report": "turn a run, multirun or study folder into summary.csv/.md and plots",
    "profile": "profile a model's energy per layer and layer type (Hydra overrides follow)",
    "tune": "a Ray Tune study: tune/strategy=grid|random|bayes|multi (Hydra overrides follow)",
    "compare": "run every search strategy on the same budget and compare them",
    "carbon": "look up grid carbon intensity by place: lightning-green carbon DE aws:eu-west-1 (all: no args)",
}


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


def _usage() -> str:
    lines = ["usage: lightning-green <command> [args]", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


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
    from lightning_green.config import CONF_DIR

    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        group = key.lstrip("+")
        if eq and value.strip().lower() in NULLS and (CONF_DIR / group).is_dir() and "." not in group:
            if group == "logger":
                out.append("~logger")
                continue
            choices = ", ".join(sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")))
            return args, f"{group}={value}: the {group} group needs one of {choices}"
        out.append(arg)
    return out, None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"lightning-green: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    problem = _launcher_problem(rest)
    if command != "report" and problem is None:
        rest, problem = _group_nulls(rest)
    if problem:
        print(f"lightning-green: {problem}", file=sys.stderr)
        return 2
    # Hydra reads sys.argv itself.
    sys.argv = [f"lightning-green {command}", *rest]
    if command in RELAUNCHABLE:
        _relaunch_as(RELAUNCHABLE[command])
    if command == "train":
        from lightning_green.train import main as train_main

        train_main()
    elif command == "report":
        from lightning_green.report.cli import main as report_main

        return report_main(rest)
    elif command == "profile":
        from lightning_green.profile import main as profile_main

        profile_main()
    elif command == "tune":
        from lightning_green.tune_cli import tune_main

        tune_main()
    elif command == "compare":
        from lightning_green.tune_cli import compare_main

        compare_main()
    elif command == "carbon":
        from lightning_green.energy.grid import carbon_main

        return carbon_main(rest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
