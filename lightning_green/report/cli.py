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
    parser.add_argument("path", type=Path, help="a run, multirun, study or comparison folder")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the folder itself)")
    args = parser.parse_args(argv)
    if not args.path.is_dir():
        return _fail(f"{args.path} is not a folder")
    try:
        paths = _report(args.path, args.out)
    except (UserInputError, FileNotFoundError) as err:  # a damaged or incomplete folder: one line
        return _fail(str(err))
    for p in paths:
        print(p)
    return 0


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
