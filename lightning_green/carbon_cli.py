"""``lightning-green carbon [QUERY ...]``: grid carbon intensity by place, from the packaged table.

A command of its own (not in :mod:`lightning_green.carbon.places`, which only reads the table) that
imports neither Lightning nor torch, so a lookup answers at once.
"""

from __future__ import annotations

import argparse
import sys

from lightning_green.carbon.places import TABLE_PATH, table

NOTICE = f"lightning_green/{TABLE_PATH.rsplit('/', 1)[0]}/NOTICE.md"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-green carbon",
        description=(
            "Look up grid carbon intensity (gCO2e/kWh) in the table that ships with lightning-green: "
            "each row's value, year, scope and source. The place you find is what "
            "energy.carbon_intensity takes."
        ),
        epilog=(
            "examples:\n"
            "  lightning-green carbon                      every place\n"
            "  lightning-green carbon DE aws:eu-west-1     two places, by code\n"
            "  lightning-green carbon germany west         by name, or part of a code or name\n\n"
            f"sources and licences: {NOTICE}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "queries",
        nargs="*",
        metavar="QUERY",
        help=(
            "a place as energy.carbon_intensity takes it (a country code DE/FRA/USA, a grid region "
            "US-CA/SE3, a cloud region aws:eu-west-1), else text found in a place's code or name; "
            "none: every row"
        ),
    )
    return parser


def lookup_rows(queries: list[str]) -> list[dict[str, str]]:
    """The table's rows for ``queries``: an exact place (or alias) wins, else every row whose place
    or name contains the query; every row for no query. Each row once, in the order found."""
    rows = list({row["place"]: row for row in table().values()}.values())
    if not queries:
        return rows
    hits: list[dict[str, str]] = []
    for query in (q.strip().upper() for q in queries):
        exact = table().get(query)
        found = (
            [exact]
            if exact
            else [r for r in rows if query in r["place"].upper() or query in r["name"].upper()]
        )
        hits += [r for r in found if r not in hits]
    return hits


def main(argv: list[str] | None = None) -> int:
    """Print the rows matching the queries; 0 if any matched, 2 if none (or the arguments are wrong)."""
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as stop:  # -h (0) or a bad option (2): a status to return, as the other commands do
        return stop.code if isinstance(stop.code, int) else 2
    queries: list[str] = args.queries
    hits = lookup_rows(queries)
    if not hits:
        print(
            f"lightning-green: no place matches {' '.join(queries)}; `lightning-green carbon` lists all",
            file=sys.stderr,
        )
        return 2
    for r in hits:
        year = r["year"] or "year n/a"
        print(
            f"{r['place']:<24} {float(r['g_per_kwh']):6.1f} g/kWh  {year:<8}  {r['name']}  [{r['scope']}; {r['source']}]"
        )
    total = len({row["place"] for row in table().values()})
    print(f"{len(hits)} of {total} places; sources and licences: {NOTICE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
