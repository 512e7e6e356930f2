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
            paths = _report(args.paths[0], args.out)
        else:
            paths = _report_several(args.paths, args.out or Path(COMPARED))
    except (UserInputError, FileNotFoundError) as err:  # a damaged or incomplete folder: one line
        return _fail(str(err))
    summary = next((p for p in paths if p.name == "summary.md"), None)
    if summary is not None:  # the table on the console too, then where the files are
        print(summary.read_text())
    for p in paths:
        print(p)
    return 0


#: Where ``report A B C`` writes by default.
COMPARED = "lightning_green_report"


def _report_several(paths: list[Path], out: Path) -> list[Path]:
    for path in paths:
        if (path / "compare.json").is_file() or (path / "study.json").is_file():
            raise UserInputError(
                f"{path} is a tuning study or comparison: report it on its own (several folders must be runs)"
            )
    from lightning_green.report.runs import report_runs

    return report_runs(paths, out)


def _fail(message: str) -> int:
    print(f"lightning-green report: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _report(path: Path, out: Path | None) -> list[Path]:
    if (path / "compare.json").is_file():
        from lightning_green.report.studies import report_compare

        return report_compare(path, out)
    if (path / "study.json").is_file():
        from lightning_green.report.studies import report_study

        return report_study(path, out)
    from lightning_green.report.runs import report_runs

    return report_runs(path, out)
