"""Every plot the commands write stays readable at 2, 8 and 30 points, measured on the figure as
drawn: labels never overlap one another nor a marker, none leaves its axes, the axes are fitted
to the data, every strategy (and every layer-profile method) can be seen, and titles say what is
drawn (one seed is not a "mean of seeds"; a run that did not set a swept value is not ``nan``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from matplotlib.text import Text

from lightning_green._plotting import pyplot
from lightning_green.report.run_plots import accuracy_energy_figure, factor_figure, label_order
from lightning_green.report.runs import COLUMNS, main_effects, swept_factors
from lightning_green.report.study_plots import anytime_figure, pareto_figure

POINTS = (2, 8, 30)


# ---------------------------------------------------------------- fabricated records
def fake_runs(n: int, mixed: bool = False, seed: int = 0) -> pd.DataFrame:
    """``load_runs``' table of ``n`` runs over conv_layers x linear_layers (and lr above 8 runs);
    ``mixed``: every third run is a single run that set none of them (NaN, as in a folder of
    runs and sweeps side by side)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        conv, lin = [1, 2, 3, 4][i % 4], [1, 2][(i // 4) % 2]
        row: dict[str, Any] = {"run": f"multirun/2026-01-01_00-00-00/{i}", "model.conv_layers": conv,
                               "model.linear_layers": lin, "optimizer.lr": [0.001, 0.01, 0.1][i % 3] if n > 8 else None}  # fmt: skip
        if mixed and i % 3 == 0:
            row.update({"model.conv_layers": np.nan, "model.linear_layers": np.nan, "optimizer.lr": np.nan})
        e = 20 + 10 * conv + rng.normal(0, 3)
        a = 0.8 + 0.04 * conv - 0.005 * conv**2 + rng.normal(0, 0.01)
        row.update(test_acc=a, val_acc=a, energy_j=e, dynamic_j=0.8 * e, energy_kwh=e / 3.6e6, total_j=1.1 * e,
                   co2e_g=0.001, seconds=10.0, train_seconds=9.0, params=1000, flops_per_sample=10_000, epochs=1,
                   source="cpu=estimated:cpu-time", complete=True, other_cpu_cores=0.0, status="finished")  # fmt: skip
        rows.append(row)
    df = pd.DataFrame(rows)
    return df[["run", *swept_factors(df), *COLUMNS]]


def fake_trials(n: int, seed: int = 0, shift: float = 0.0) -> pd.DataFrame:
    """A study's ``trials.csv`` of ``n`` trials, in trial order."""
    r = np.random.default_rng(seed)
    acc = np.clip(0.7 + 0.25 * r.random(n) + shift, 0, 1)
    energy = 30 + 200 * r.random(n)
    return pd.DataFrame({
        "trial_id": [f"t{seed}{k:04x}" for k in range(n)], "param.optimizer.lr": r.random(n) / 10,
        "param.model.conv_layers": r.integers(1, 5, n), "accuracy": acc, "test_acc": acc - 0.01,
        "energy_j": energy, "total_j": energy * 1.05, "epochs": 3, "status": "TERMINATED",
        "source": "cpu=estimated:cpu-time", "order": np.arange(n),
    })  # fmt: skip


def fake_studies(n: int, seeds: int) -> dict[str, list[pd.DataFrame]]:
    """Three strategies; ``random`` ran exactly ``grid``'s trials (its curves are ``grid``'s)."""
    studies = {
        name: [fake_trials(n, seed=10 * i + k, shift=0.02 * i) for k in range(seeds)]
        for i, name in enumerate(("grid", "random", "bayes"))
    }
    studies["random"] = [t.copy() for t in studies["grid"]]
    return studies


def write_study(
    path: Path, trials: pd.DataFrame, strategy: str = "bayes", seed: int = 0, **meta: Any
) -> Path:
    """A study folder as ``tune`` leaves it: ``study.json`` and ``trials.csv``."""
    from lightning_green.records import write_json_atomic

    path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path / "study.json", {
        "kind": "study", "strategy": {"name": strategy}, "seed": seed, "accuracy_metric": "val_acc",
        "energy_metric": "energy_j", "target_accuracy": None, "target_fraction": 0.95, "started": 0.0,
        "finished": 1.0, "interrupted": False, "trials": len(trials), **meta,
    })  # fmt: skip
    trials.to_csv(path / "trials.csv", index=False)
    return path


def write_comparison(path: Path, n: int, seeds: int) -> Path:
    """A comparison folder as ``compare`` leaves it: ``compare.json`` and one study per strategy and seed."""
    from lightning_green.records import write_json_atomic

    studies = fake_studies(n, seeds)
    for name, ts in studies.items():
        for k, t in enumerate(ts):
            write_study(path / name / f"seed{k}", t, name, k)
    write_json_atomic(path / "compare.json", {
        "strategies": list(studies), "seeds": list(range(seeds)), "target_fraction": 0.95,
        "reference_energy_j": None, "target_accuracy": None,
    })  # fmt: skip
    return path


# ---------------------------------------------------------------- measuring a drawn figure
def _draw(fig: Any) -> Any:
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _label_boxes(ax: Any, renderer: Any) -> list[Any]:
    return [Text.get_window_extent(t, renderer) for t in ax.texts]


def _inside(inner: Any, outer: Any) -> bool:
    return outer.x0 <= inner.x0 and inner.x1 <= outer.x1 and outer.y0 <= inner.y0 and inner.y1 <= outer.y1


def _filled(ax: Any, xs: np.ndarray, ys: np.ndarray, share: float = 0.75) -> None:
    """The data span at least ``share`` of the axes both ways (none squeezed into a corner)."""
    for values, (lo, hi) in ((xs, ax.get_xlim()), (ys, ax.get_ylim())):
        values = values[np.isfinite(values)]
        if values.max() > values.min():
            assert (values.max() - values.min()) / (hi - lo) >= share, (values.min(), values.max(), lo, hi)
            assert lo <= values.min() and values.max() <= hi


def _pixels(fig: Any, ax: Any, color: str, skip: list[Any] = (), tol: int = 40) -> int:
    """Pixels of ``color`` (within ``tol`` per channel) inside ``ax``, outside the ``skip`` boxes."""
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    height = image.shape[0]
    box = ax.get_window_extent()
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[int(height - box.y1) : int(height - box.y0), int(box.x0) : int(box.x1)] = True
    for b in skip:
        mask[int(height - b.y1) : int(height - b.y0), int(b.x0) : int(b.x1)] = False
    target = np.array([round(255 * c) for c in to_rgb(color)])
    return int((np.abs(image - target).max(axis=-1) <= tol)[mask].sum())


# ---------------------------------------------------------------- report on runs
@pytest.mark.parametrize("mixed", [False, True], ids=["sweep", "runs-and-sweeps"])
@pytest.mark.parametrize("n", POINTS)
def test_accuracy_vs_energy_labels_never_overlap_nor_leave_the_axes(n: int, mixed: bool):
    df = fake_runs(n, mixed)
    factors = swept_factors(df)
    fig = accuracy_energy_figure(df, factors)
    renderer = _draw(fig)
    ax = fig.axes[0]
    boxes = _label_boxes(ax, renderer)
    frame = ax.get_window_extent(renderer)
    assert len(boxes) >= min(n, 2)  # at least the extremes
    for i, a in enumerate(boxes):
        assert _inside(a, frame), ax.texts[i].get_text()
        assert not any(a.overlaps(b) for b in boxes[i + 1 :]), ax.texts[i].get_text()
        assert not ax.get_legend().get_window_extent(renderer).overlaps(a)
    for t in ax.texts:  # values as set: 3, not 3.0; never nan
        assert "nan" not in t.get_text() and not re.search(r"=-?\d+\.0\b", t.get_text()), t.get_text()
    # the most accurate and the cheapest run are among the labelled
    acc, en = df["test_acc"].to_numpy(), df["energy_j"].to_numpy()
    labelled = {tuple(np.round(t.xy, 9)) for t in ax.texts}
    for i in (int(np.argmax(acc)), int(np.argmin(en))):
        assert (round(en[i], 9), round(acc[i], 9)) in labelled
    title = ax.title.get_text()
    assert f"{n} run" in title and ("every run" in title or f"of {n} labelled" in title)
    assert _inside(ax.title.get_window_extent(renderer), fig.bbox)
    _filled(ax, en, acc)
    pyplot().close(fig)


def test_label_order_puts_the_ends_then_the_front_then_the_extremes():
    acc = np.array([0.9, 0.8, 0.85, 0.7, np.nan])
    en = np.array([50.0, 10.0, 40.0, 60.0, 5.0])
    front = np.array([True, True, True, False, False])
    # the most accurate, the cheapest, the rest of the front, then the worst and dearest; NaN never
    assert label_order(acc, en, front) == [0, 1, 2, 3]
    assert label_order(acc[::-1].copy(), en[::-1].copy(), front[::-1].copy()) == [4, 3, 2, 1]


@pytest.mark.parametrize("mixed", [False, True], ids=["sweep", "runs-and-sweeps"])
@pytest.mark.parametrize("n", POINTS)
def test_energy_by_factor_names_levels_as_set(n: int, mixed: bool):
    df = fake_runs(n, mixed)
    factors = swept_factors(df)
    if not factors:
        pytest.skip("one run per level of nothing: no factor")
    fig = factor_figure(df, factors, main_effects(df) if not mixed and n in (8, 30) else None)
    renderer = _draw(fig)
    for ax in fig.axes:
        names = [t.get_text() for t in ax.get_xticklabels()]
        assert all("nan" not in s and not re.fullmatch(r"-?\d+\.0", s) for s in names), names
        assert ("(not set)" in names) == (mixed and df[ax.get_title().split("\n")[0]].isna().any())
        ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
        assert not any(a.overlaps(b) for i, a in enumerate(ticks) for b in ticks[i + 1 :]), names
        assert sum(len(p.get_children()) for p in ax.containers) == len(names)  # one bar per level
    pyplot().close(fig)


# ---------------------------------------------------------------- studies and comparisons
@pytest.mark.parametrize("seeds", [1, 3])
@pytest.mark.parametrize("n", POINTS)
def test_anytime_shows_every_strategy_and_says_what_it_averages(n: int, seeds: int):
    studies = fake_studies(n, seeds)
    fig = anytime_figure(studies, target=0.9)
    _draw(fig)
    colors = pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    a, b = fig.axes
    for ax in (a, b):
        for i, name in enumerate(studies):  # random's curves are grid's, drawn over them: both show
            assert _pixels(fig, ax, colors[i]) >= 30, (name, ax.get_title())
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [*studies, "target 0.9000"]
    title = a.get_title()
    if seeds == 1:
        assert "one seed" in title and "mean" not in title and "band" not in title
        assert "each seed" not in b.get_title()
    else:
        assert f"mean of {seeds} seeds, 95% bootstrap band" in title and "each seed" in b.get_title()
    assert a.get_xlim() == (0.5, n + 0.5)
    assert all(float(x).is_integer() for x in a.get_xticks() if 0.5 < x < n + 0.5)  # whole trials
    best = np.concatenate(
        [np.maximum.accumulate(t["accuracy"].to_numpy()) for ts in studies.values() for t in ts]
    )
    spent = np.concatenate([np.cumsum(t["total_j"].to_numpy()) for ts in studies.values() for t in ts])
    _filled(b, spent, np.append(best, 0.9))
    pyplot().close(fig)


def test_anytime_title_with_uneven_seeds():
    studies = {"grid": [fake_trials(8, 0), fake_trials(8, 1)], "bayes": [fake_trials(8, 2)]}
    fig = anytime_figure(studies)
    assert "mean of 1-2 seeds; 95% band where 2 or more" in fig.axes[0].get_title()
    pyplot().close(fig)


@pytest.mark.parametrize("seeds", [1, 3])
@pytest.mark.parametrize("n", POINTS)
def test_pareto_plot_shows_every_strategy_beside_its_legend(n: int, seeds: int):
    studies = fake_studies(n, seeds)
    fig = pareto_figure(studies)
    renderer = _draw(fig)
    ax = fig.axes[0]
    colors = pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(studies):
        assert _pixels(fig, ax, colors[i]) >= 15, name
    legend = ax.get_legend().get_window_extent(renderer)
    assert not legend.overlaps(ax.get_window_extent(renderer)) and _inside(legend, fig.bbox)
    title = ax.get_title()
    assert f"{n * seeds * 3} trials" in title and ("seeds pooled" in title) == (seeds > 1)
    assert _inside(ax.title.get_window_extent(renderer), fig.bbox)
    one = pareto_figure({"bayes": studies["bayes"]})
    assert "the study's Pareto front" in one.axes[0].get_title()
    pyplot().close(fig)
    pyplot().close(one)


# ---------------------------------------------------------------- the layer profile's chart
def fake_layer_rows(
    methods: tuple[str, ...] = ("allocate", "power", "replay"), chosen: str = "power"
) -> list[dict]:
    """A profile's rows (``layers.csv``): a net with two blocks of a Linear and a GELU, each
    method's own joules per step, then ``unattributed``."""
    source = {"allocate": "allocated", "power": "allocated-by-power", "replay": "replayed"}[chosen]
    spec = [("net", None, 1, "Net", "Composite"), ("net.0", "net", 2, "Block", "Composite"),
            ("net.0.fc", "net.0", 3, "Linear", "Linear"), ("net.0.act", "net.0", 3, "GELU", "Activation"),
            ("net.1", "net", 2, "Block", "Composite"), ("net.1.fc", "net.1", 3, "Linear", "Linear"),
            ("net.1.act", "net.1", 3, "GELU", "Activation")]  # fmt: skip
    own = {"allocate": [0.01, 0.02, 0.30, 0.10, 0.02, 0.30, 0.10], "power": [0.01, 0.02, 0.36, 0.06, 0.02, 0.35, 0.06],
           "replay": [0.02, 0.03, 0.33, 0.05, 0.03, 0.33, 0.05]}  # fmt: skip
    rows = []
    for k, (name, parent, depth, cls, kind) in enumerate(spec):
        row = {"name": name, "parent": parent, "depth": depth, "module_type": cls, "layer_type": kind,
               "params": 10, "flops": 100, "source": f"{source}:estimated:cpu-time", "share": 0.1,
               "joules_per_step": own[chosen][k], "total_j": None}  # fmt: skip
        for m, col in (("allocate", "allocated_j"), ("power", "power_j"), ("replay", "replayed_j")):
            row[col] = own[m][k] if m in methods else None
        rows.append(row)
    for r in rows:
        r["total_j"] = sum(
            x["joules_per_step"]
            for x in rows
            if x["name"] == r["name"] or x["name"].startswith(r["name"] + ".")
        )
    step = 1.0
    rows.append({"name": "unattributed", "parent": None, "depth": 0, "module_type": "", "layer_type": "unattributed",
                 "params": 0, "flops": 0, "source": "measured-step-minus-modules:estimated:cpu-time", "share": 0.09,
                 "joules_per_step": step - sum(own[chosen]), "total_j": step - sum(own[chosen]),
                 "allocated_j": None, "power_j": None, "replayed_j": None})  # fmt: skip
    return rows


@pytest.mark.parametrize(
    "methods", [("allocate", "power", "replay"), ("allocate",)], ids=["power-mode", "allocate"]
)
def test_layer_chart_shows_each_method_side_by_side(methods: tuple[str, ...], tmp_path: Path, monkeypatch):
    from lightning_green import _plotting
    from lightning_green.callbacks.layer_profiler.outputs import plot
    from lightning_green.callbacks.layer_profiler.rows import type_rows

    figures = []
    monkeypatch.setattr(_plotting, "save", lambda fig, path: figures.append(fig))
    chosen = "power" if len(methods) > 1 else "allocate"
    rows = fake_layer_rows(methods, chosen)
    plot(tmp_path / "layer_energy.png", f"{chosen}: a title", type_rows(rows), rows, top=5)
    fig = figures[0]
    a, b = fig.axes
    n_types = len(type_rows(rows))
    if len(methods) == 1:
        assert not fig.legends and len(a.patches) == n_types and len(b.patches) == 5
    else:
        assert [t.get_text() for t in fig.legends[0].get_texts()] == ["allocate", "power (chosen)", "replay"]
        assert len(a.patches) == 3 * n_types and len(b.patches) == 3 * 5
        assert "allocate, power, replay side by side" in a.get_title()
        # each method's own figures, summed by type: the Linear group holds 0.6, 0.71 and 0.66 J
        at = dict(zip([t.get_text() for t in a.get_yticklabels()], a.get_yticks(), strict=True))["Linear"]
        linear = sorted(
            round(p.get_width(), 6) for p in a.patches if abs(p.get_y() + p.get_height() / 2 - at) < 0.5
        )
        assert linear == [0.6, 0.66, 0.71]
    renderer = _draw(fig)
    ticks = [t.get_window_extent(renderer) for t in b.get_yticklabels()]
    assert not any(x.overlaps(y) for i, x in enumerate(ticks) for y in ticks[i + 1 :])
    pyplot().close(fig)
