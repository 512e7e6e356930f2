"""matplotlib set up once for files, not screens (every plot here is saved to disk), and what every
plot shares: labels that never overlap nor leave their axes, one look per series, level names."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: Resolution of every saved plot; figures are made at it, so what is measured on them is what is saved.
DPI = 110
#: Distinct line styles and markers, one pair per series (colours repeat after ten; these differ too).
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
#: Offsets (points) a label tries around its point, nearest first: right, left, above, below, diagonals.
_DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1))
_DISTANCES = (4.0, 10.0, 18.0, 28.0)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def level(value: Any) -> str:
    """A swept value as a label: ``3`` for a whole number a column with gaps made ``3.0``,
    ``0.001`` for a float, ``(not set)`` for a missing one (never ``nan``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "(not set)"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:g}"
    if hasattr(value, "item"):  # a numpy scalar
        return level(value.item())
    return str(value)


def style(i: int) -> dict[str, Any]:
    """Line style and marker of the ``i``-th series (colour comes from the axes' cycle)."""
    return {"ls": LINESTYLES[i % len(LINESTYLES)], "marker": MARKERS[i % len(MARKERS)]}


def place_labels(
    ax: Any,
    points: Sequence[tuple[float, float]],
    texts: Sequence[str],
    order: Sequence[int] | None = None,
    fontsize: float = 7,
    marker_pt: float = 3.5,
) -> list[int]:
    """Annotate ``points`` (data coordinates) with ``texts`` so that no two labels overlap, none
    covers a marker or the legend, and every one lies inside the axes. Labels go in ``order``
    (most important first); each takes the nearest free place around its point (joined to it by
    a thin line, which passes by no other marker or label, when it is not next to it), and one
    that finds none is left out. Call it once the figure's layout is final (it measures the text
    as drawn). Returns the indices of the points labelled."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    half = marker_pt * ax.figure.dpi / 72
    px = [ax.transData.transform(p) if all(map(math.isfinite, p)) else None for p in points]
    markers = [
        Bbox.from_extents(q[0] - half, q[1] - half, q[0] + half, q[1] + half) for q in px if q is not None
    ]
    legend = ax.get_legend()
    labels = [legend.get_window_extent(renderer)] if legend is not None else []
    done = []
    for i in order if order is not None else range(len(points)):
        if px[i] is None:
            continue
        mine = [m for m in markers if not m.contains(*px[i])]
        for dist, (dx, dy) in ((d, v) for d in _DISTANCES for v in _DIRECTIONS):
            far = dist > _DISTANCES[0]
            ann = ax.annotate(
                texts[i], points[i], xytext=(dx * dist, dy * dist), textcoords="offset points",
                fontsize=fontsize, ha={1: "left", -1: "right", 0: "center"}[dx],
                va={1: "bottom", -1: "top", 0: "center"}[dy], annotation_clip=False,
                arrowprops={"arrowstyle": "-", "color": "0.45", "lw": 0.6, "shrinkA": 0, "shrinkB": marker_pt,
                            "relpos": ((1 - dx) / 2, (1 - dy) / 2)} if far else None,
            )  # fmt: skip
            ann.update_positions(renderer)
            box = Text.get_window_extent(ann, renderer)  # the text alone, not its leader line
            ok = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            ok = ok and not any(box.overlaps(t) for t in labels + markers)
            if ok and far:  # the leader, from the label's near corner to the point, crosses nothing
                start = (box.x0 + (box.x1 - box.x0) * (1 - dx) / 2, box.y0 + (box.y1 - box.y0) * (1 - dy) / 2)
                ok = not any(_crosses(start, px[i], b) for b in labels + mine)
            if ok:
                labels.append(box.padded(1.0))
                done.append(i)
                break
            ann.remove()
    return done


def _crosses(a: Sequence[float], b: Sequence[float], box: Any, steps: int = 24) -> bool:
    """Whether the segment from ``a`` to ``b`` (pixels) passes through ``box``."""
    return any(
        box.contains(a[0] + (b[0] - a[0]) * k / steps, a[1] + (b[1] - a[1]) * k / steps)
        for k in range(steps + 1)
    )


def fix_layout(fig: Any) -> None:
    """Lay the figure out now and keep it so (labels placed afterwards are measured where they stay)."""
    fig.tight_layout()
    fig.set_layout_engine("none")


def save(fig: Any, path: Any) -> Any:
    """Save ``fig`` to ``path`` at :data:`DPI` and free it; returns ``path``."""
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return path


#: LayerEnergyProfiler's ways of splitting a step's joules, and the row column of each one's own
#: joules per step (``layers.csv``); a ``power`` or ``replay`` profile computes all three.
LAYER_METHODS = {"allocate": "allocated_j", "power": "power_j", "replay": "replayed_j"}
#: The profiler's ``source`` prefix per method (the chosen one names every row's source).
_SOURCE_METHOD = {"allocated": "allocate", "allocated-by-power": "power", "replayed": "replay"}


def layer_methods(rows: Sequence[dict[str, Any]], rest: str = "unattributed") -> tuple[list[str], str | None]:
    """The methods with a figure for every module of a profile's ``rows`` (``layers.csv``), and the
    one the profile chose (from the rows' ``source``)."""
    modules = [r for r in rows if r["name"] != rest]
    found = [
        m for m, col in LAYER_METHODS.items() if modules and all(r.get(col) is not None for r in modules)
    ]
    chosen = _SOURCE_METHOD.get(str(modules[0].get("source", "")).split(":", 1)[0]) if modules else None
    return found, chosen


def layer_type_joules(
    rows: Sequence[dict[str, Any]], method: str, rest: str = "unattributed"
) -> dict[str, float]:
    """Own joules per step by layer type under ``method`` (every module has a figure: see
    :func:`layer_methods`), ``rest`` last: the measured step (the chosen method's rows add up to
    it) less the modules' figures."""
    col = LAYER_METHODS[method]
    out: dict[str, float] = {}
    for r in rows:
        if r["name"] != rest:
            out[r["layer_type"]] = out.get(r["layer_type"], 0.0) + float(r[col])
    figures = [r["joules_per_step"] for r in rows]
    if all(j is not None for j in figures):
        out[rest] = float(sum(figures)) - sum(out.values())
    return out


def layer_inclusive_joules(rows: Sequence[dict[str, Any]], method: str) -> dict[str, float]:
    """Each module's joules per step with its children's under ``method`` (its own figure plus
    its descendants'; every module has a figure: see :func:`layer_methods`)."""
    col = LAYER_METHODS[method]
    total = {r["name"]: float(r[col]) for r in rows if r.get(col) is not None}
    for r in sorted(rows, key=lambda r: -int(r.get("depth") or 0)):  # deepest first: children before parents
        parent = r.get("parent")
        if parent in total and r["name"] in total:
            total[parent] += total[r["name"]]
    return total
