"""``lightning-green report <dir>``: summary table and plots for a run, a multirun or a tuning study."""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lightning-green report",
        description="Read the records of a run, multirun or study folder; write summary.csv, summary.md and plots.",
    )
    parser.add_argument("path", type=Path, help="a run, multirun, study or comparison folder")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the folder itself)")
    args = parser.parse_args(argv)
    if not args.path.is_dir():
        parser.error(f"{args.path} is not a folder")
    if (args.path / "compare.json").is_file():
        from lightning_green.tune.compare import report_compare

        paths = report_compare(args.path, args.out)
    elif (args.path / "study.json").is_file():
        from lightning_green.tune.study import report_study

        paths = report_study(args.path, args.out)
    else:
        from lightning_green.report.runs import report_runs

        try:
            paths = report_runs(args.path, args.out)
        except FileNotFoundError as err:
            parser.error(str(err))
    for p in paths:
        print(p)
    return 0
