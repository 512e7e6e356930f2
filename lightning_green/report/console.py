"""What the commands print: tables and text that fit in :data:`WIDTH` columns (the full tables
stay in the files they write).

Example::

    >>> import pandas as pd
    >>> from lightning_green.report.console import console_table
    >>> print(console_table(pd.DataFrame({"run": ["a", "b"], "energy_j": [12.3456, 7.0]})))
    | run | energy_j |
    | --- | -------: |
    | a   |    12.35 |
    | b   |        7 |
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

#: Columns of everything the commands print.
WIDTH = 100
#: Narrowest a truncated column gets before columns are dropped instead.
MIN_COLUMN = 8
#: Widest a text cell is before it is cut (the files keep it whole).
MAX_CELL = 28


def cell(value: Any) -> str:
    """A value as a table cell: floats to 4 significant digits, whole floats whole, ``-`` for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e9 else f"{value:.4g}"
    return str(value)


def short_names(columns: Iterable[str]) -> dict[str, str]:
    """Column headers without their dotted prefixes (``param.optimizer.lr`` -> ``lr``), keeping
    as many trailing parts as it takes for two columns not to share a name."""
    columns = list(columns)
    names = {c: c.rsplit(".", 1)[-1] for c in columns}
    for parts in range(2, 6):
        clash = [c for c in columns if list(names.values()).count(names[c]) > 1]
        if not clash:
            break
        for c in clash:
            names[c] = ".".join(c.split(".")[-parts:])
    return names


def _cut(text: str, width: int, keep_end: bool) -> str:
    if len(text) <= width:
        return text
    return ".." + text[-(width - 2) :] if keep_end else text[: width - 2] + ".."


def console_table(
    df: pd.DataFrame,
    columns: Sequence[str] | None = None,
    width: int = WIDTH,
    keep_end: Sequence[str] = ("run",),
    headers: dict[str, str] | None = None,
) -> str:
    """An aligned Markdown table of ``df`` in at most ``width`` columns.

    ``columns`` are in order of importance (default: all of ``df``'s); headers are ``headers``'
    names, else the columns' without their dotted prefixes (:func:`short_names`). Text cells
    longer than :data:`MAX_CELL` are cut (``..``; from the left in the ``keep_end`` columns,
    whose ends tell rows apart, such as run folders). If the table is still too wide, cells
    wider than their header are cut down to it (not below :data:`MIN_COLUMN`, twice that for the
    first column, which names the rows), then the least important columns are left out."""
    cols = [c for c in (columns if columns is not None else df.columns) if c in df.columns]
    names = {**short_names(cols), **(headers or {})}
    text = {c: [cell(v) for v in df[c].tolist()] for c in cols}
    numeric = {
        c: pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in cols
    }
    floor = {c: max(len(names[c]), MIN_COLUMN) for c in cols}
    if cols:  # the first column names the rows: kept wider
        floor[cols[0]] = max(floor[cols[0]], 2 * MIN_COLUMN)
    w = {c: max([len(names[c]), *(min(len(t), MAX_CELL) for t in text[c])]) for c in cols}

    def total() -> int:
        return sum(w[c] for c in cols) + 3 * len(cols) + 1

    while total() > width:
        wide = [c for c in cols if w[c] > floor[c]]
        if wide:  # the widest cells first, down to their header
            c = max(wide, key=lambda c: w[c] - floor[c])
            w[c] = max(floor[c], w[c] - (total() - width))
        elif len(cols) > 1:
            cols = cols[:-1]
        else:  # one column, its header too wide: cut it
            w[cols[0]] = max(1, width - 4)
            break

    def row(values: list[str]) -> str:
        cells = [
            _cut(v, w[c], c in keep_end).rjust(w[c])
            if numeric[c]
            else _cut(v, w[c], c in keep_end).ljust(w[c])
            for c, v in zip(cols, values, strict=True)
        ]
        return "| " + " | ".join(cells) + " |"

    lines = [row([names[c] for c in cols])]
    lines.append("| " + " | ".join("-" * (w[c] - 1) + (":" if numeric[c] else "-") for c in cols) + " |")
    lines += [row([text[c][i] for c in cols]) for i in range(len(df))]
    return "\n".join(lines)


def wrap(text: str, width: int = WIDTH) -> str:
    """A paragraph, or a ``- `` bullet (hanging indent), wrapped to ``width`` columns; Markdown's
    ``**`` and backticks dropped (they are for the file)."""
    plain = text.replace("**", "").replace("`", "")
    indent = "  " if plain.startswith("- ") else ""
    return textwrap.fill(
        plain, width, subsequent_indent=indent, break_on_hyphens=False, break_long_words=True
    )


def fits(text: str, width: int = WIDTH) -> bool:
    """Whether every line of ``text`` is at most ``width`` characters."""
    return all(len(line) <= width for line in text.splitlines())
