"""``lightning-green report <dir>``: summary table and plots for a run, a multirun or a tuning study."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightning_green._checks import UserInputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lightning-green report",
        description="Read the records of a run, multirun or study folder; write summary.csv, summary.md and plots.",
    )
    parser.add_argument(
        "paths", type=Path, nargs="+", metavar="path",
        help="a run, multirun, study or comparison folder; several run folders are compared side by side",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=None,
        help=f"where to write (default: the folder itself; for several folders ./{COMPARED})",
    )  # fmt: skip
    args = parser.parse_args(argv)
    for path in args.paths:
        if not path.is_dir():
            return _fail(f"{path} is not a folder")
    try:
        if len(args.paths) == 1:
            paths, text = _report(args.paths[0], args.out)
        else:
            paths, text = _report_several(args.paths, args.out or Path(COMPARED))
    except (UserInputError, FileNotFoundError) as err:  # a damaged or incomplete folder: one line
        return _fail(str(err))
    print(text)  # the key columns in 100 columns (the files have every column), then where the files are
    for p in paths:
        print(p)
    return 0


#: Where ``report A B C`` writes by default.
COMPARED = "lightning_green_report"


def _report_several(paths: list[Path], out: Path) -> tuple[list[Path], str]:
    for path in paths:
        if (path / "compare.json").is_file() or (path / "study.json").is_file():
            raise UserInputError(
                f"{path} is a tuning study or comparison: report it on its own (several folders must be runs)"
            )
    from lightning_green.report.runs import report_runs, runs_console

    written = report_runs(paths, out)
    return written, runs_console(out)


def _fail(message: str) -> int:
    print(f"lightning-green report: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _report(path: Path, out: Path | None) -> tuple[list[Path], str]:
    """The files written for a comparison, a study or runs, and what to print of them."""
    if (path / "compare.json").is_file():
        from lightning_green.report.compare import report_compare, report_compare_console

        return report_compare(path, out), report_compare_console(path)
    if (path / "study.json").is_file():
        from lightning_green.report.studies import report_study, study_console

        return report_study(path, out), study_console(path)
    from lightning_green.report.runs import report_runs, runs_console

    written = report_runs(path, out)
    return written, runs_console(out or path)
