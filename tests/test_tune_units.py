"""Pure pieces of the tuner: hypervolume, Pareto sets, search spaces, grids, input checks."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lightning_green.config import CONF_DIR, ConfigError
from lightning_green.report.pareto import hypervolume_2d, pareto_mask
from lightning_green.report.studies import compare_table, study_metrics
from lightning_green.tune.space import Param, grid_points, parse_space
from lightning_green.tune.study import prepare


def test_hypervolume_single_point():
    # (acc 0.8, 10 J) against reference (0, 20 J): 0.8 x 10
    assert hypervolume_2d([0.8], [10.0], 0.0, 20.0) == pytest.approx(8.0)


def test_hypervolume_staircase_by_hand():
    # front: (0.5, 2), (0.7, 5), (0.9, 8); ref (0, 10)
    # strips: [2,5) x 0.5 = 1.5; [5,8) x 0.7 = 2.1; [8,10) x 0.9 = 1.8 -> 5.4
    assert hypervolume_2d([0.5, 0.7, 0.9], [2, 5, 8], 0.0, 10.0) == pytest.approx(5.4)


def test_hypervolume_ignores_dominated_and_out_of_reference_points():
    base = hypervolume_2d([0.5, 0.7, 0.9], [2, 5, 8], 0.0, 10.0)
    more = hypervolume_2d([0.5, 0.7, 0.9, 0.6, 0.95, 0.99], [2, 5, 8, 6, 12, 9], 0.0, 10.0)
    # (0.6, 6) is dominated; (0.95, 12) is beyond the reference energy; (0.99, 9) adds [9,10) x 0.09
    assert more == pytest.approx(base + 0.09)
    assert hypervolume_2d([0.3], [5.0], 0.4, 10.0) == 0.0
    assert hypervolume_2d([], [], 0.0, 1.0) == 0.0


def test_hypervolume_with_nonzero_reference_accuracy():
    # ref (0.5, 10): (0.9, 4) -> (0.9-0.5) x 6 = 2.4
    assert hypervolume_2d([0.9], [4.0], 0.5, 10.0) == pytest.approx(2.4)


def test_pareto_mask():
    acc = [0.5, 0.7, 0.6, 0.9, 0.9]
    en = [1.0, 2.0, 3.0, 5.0, 6.0]
    assert pareto_mask(acc, en).tolist() == [True, True, False, True, False]


def _trials(acc, total, energy=None, status=None):
    n = len(acc)
    return pd.DataFrame(
        {
            "order": range(n),
            "accuracy": acc,
            "total_j": total,
            "energy_j": energy or total,
            "status": status or ["TERMINATED"] * n,
        }
    )


def test_energy_to_target_counts_every_trial_until_the_first_hit():
    t = _trials([0.2, 0.5, 0.91, 0.95], [10.0, 20.0, 30.0, 40.0])
    m = study_metrics(t, target=0.9, ref_energy=50.0)
    assert m["energy_to_target_j"] == 60.0 and m["trials_to_target"] == 3
    assert m["best_accuracy"] == 0.95 and m["total_energy_j"] == 100.0
    assert study_metrics(t, target=0.99)["energy_to_target_j"] is None


def test_compare_table_shares_target_and_reference():
    studies = {"a": [_trials([0.5, 1.0], [1.0, 1.0])], "b": [_trials([0.9, 0.96], [2.0, 2.0])]}
    table, info = compare_table(studies, target_fraction=0.95)
    assert info["target_accuracy"] == pytest.approx(0.95)
    assert info["reference_point"]["energy_j"] == pytest.approx(2.2)
    rows = table.set_index("strategy")
    assert rows.loc["a", "energy_to_target_j"] == 2.0 and rows.loc["b", "energy_to_target_j"] == 4.0
    # a: (0.5,1), (1.0,1) -> front (1.0, 1): 1.0 x (2.2 - 1)
    assert rows.loc["a", "hypervolume"] == pytest.approx(1.2)


def test_grid_levels_are_bin_midpoints_and_sampled_without_replacement():
    beta2 = Param("optimizer.beta2", "uniform", 0.8, 1.0)
    assert beta2.levels(5) == pytest.approx([0.82, 0.86, 0.90, 0.94, 0.98])
    lr = Param("optimizer.lr", "loguniform", 1e-5, 0.1)
    levels = lr.levels(5)
    assert levels[0] == pytest.approx(1e-5 * 10**0.4) and all(1e-5 < v < 0.1 for v in levels)
    assert Param("model.conv_layers", "int", 1, 4).levels(5) == [1, 2, 3, 4]
    params = [beta2, lr, Param("optimizer.beta1", "uniform", 0.1, 1.0)]
    pts = grid_points(params, 5, 64, seed=0)
    assert len(pts) == 64 and len({tuple(p.values()) for p in pts}) == 64  # no repeats
    assert grid_points(params, 5, 64, seed=0) == pts  # seeded
    assert len(grid_points(params, 2, 100, seed=0)) == 8  # budget above the grid: the whole grid


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"optimizer": {"lr": {"type": "loguniform", "low": 0.1, "high": 0.01}}}, r"tune\.space\.params\.optimizer\.lr: the range \[0\.1, 0\.01\) is empty or inverted"),
        ({"optimizer": {"lr": {"type": "uniform", "low": 0.1, "high": 0.1}}}, "empty or inverted"),
        ({"optimizer": {"lr": {"type": "loguniform", "low": 0.0, "high": 0.1}}}, "loguniform needs low > 0"),
        ({"optimizer": {"lr": {"type": "normal", "low": 0, "high": 1}}}, r"type must be one of uniform, loguniform, int, choice"),
        ({"optimizer": {"lrr": {"type": "uniform", "low": 0, "high": 1}}}, "the config has no key 'optimizer.lrr'"),
        ({"model": {"activation": {"type": "choice", "values": []}}}, "non-empty list"),
        ({"model": {"conv_layers": {"type": "int", "low": 1, "high": 4, "cheap": "small"}}}, r"conv_layers\.cheap must be low or high"),
        ({"data": {"batch_size": {"type": "choice", "values": [16, 64], "cheap": 256}}}, r"batch_size\.cheap must be one of its values \[16, 64\]"),
        ({}, "is empty"),
    ],
)  # fmt: skip
def test_bad_spaces_name_the_key(spec, message):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("tune")
    with pytest.raises(ConfigError, match=message):
        parse_space(spec, cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tune.accuracy_metric=val_f1"], r"tune\.accuracy_metric must be a metric the trials report"),
        (["tune.strategy.name=annealing"], r"tune\.strategy\.name must be one of grid, random, bayes, multi"),
        (
            ["tune/strategy=bayes", "tune.strategy.sampler=cmaes"],
            r"tune\.strategy\.sampler must be one of gp, tpe",
        ),
        (["tune.num_samples=0"], r"tune\.num_samples must be an integer >= 1"),
        (
            ["tune/strategy=multi", "tune.strategy.cost_aware_startup=1"],
            r"tune\.strategy\.cost_aware_startup must be true or false; got 1",
        ),
        (["tune.scheduler=hyperband"], "tune.scheduler must be one of fifo, asha"),
        (
            ["tune/strategy=bohb", "tune.strategy.brackets=0"],
            r"tune\.strategy\.brackets must be an integer >= 1, or null",
        ),
        (
            ["tune/strategy=bohb", "tune.strategy.multivariate=yes"],
            r"tune\.strategy\.multivariate must be true or false",
        ),
        (
            ["tune/strategy=bohb", "tune.strategy.n_startup_trials=0"],
            r"tune\.strategy\.n_startup_trials must be an integer >= 1",
        ),
        (
            ["tune/strategy=asha", "tune.asha.grace_period=0"],
            r"tune\.asha\.grace_period must be an integer >= 1",
        ),
        (["trainer.max_epochs=0"], r"trainer\.max_epochs"),
        (["tune.space.params.optimizer.beta2.low=1.5"], r"optimizer\.beta2: the range \[1\.5, 1\.0\)"),
    ],
)
def test_bad_study_input_fails_before_ray(overrides, message):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("tune", overrides=overrides)
    cfg.output_dir = "/nonexistent"
    with pytest.raises(ConfigError, match=message):
        prepare(cfg)


def test_every_strategy_and_space_composes():
    for strategy in ("grid", "random", "bayes", "multi", "asha", "bohb", "cfo"):
        for space in ("paper", "extended"):
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose("tune", overrides=[f"tune/strategy={strategy}", f"tune/space={space}"])
            cfg.output_dir = "/x"
            params, base = prepare(cfg)
            assert len(params) == (3 if space == "paper" else 7) and not math.isnan(base["seed"])


def test_ranges_handed_to_optuna_exclude_their_upper_bound():
    from ray.tune.search.optuna import OptunaSearch

    p = Param("optimizer.beta2", "uniform", 0.8, 1.0)
    (dist,) = OptunaSearch.convert_search_space({"b": p.ray()}).values()
    assert dist.low == 0.8 and dist.high < 1.0 and dist.high == pytest.approx(1.0)


def test_bootstrap_interval_by_hand():
    from lightning_green.report.studies import bootstrap_ci, resolved

    # two seeds, 0 and 10: resampled means are 0, 5, 10 with chances 1/4, 1/2, 1/4, so the
    # 2.5% and 97.5% quantiles are 0 and 10
    assert bootstrap_ci([0.0, 10.0]) == (0.0, 10.0)
    assert bootstrap_ci([3.0, 3.0, 3.0]) == (3.0, 3.0)
    assert bootstrap_ci([1.0]) is None and bootstrap_ci([1.0, None, float("nan")]) is None
    lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert 1.0 < lo < 3.0 < hi < 5.0
    assert resolved((0.0, 1.0), (1.5, 2.0)) and not resolved((0.0, 1.6), (1.5, 2.0))
    assert not resolved(None, (1.0, 2.0))


def test_compare_says_when_a_difference_is_not_resolved():
    # a: energy to target 2 and 4 J over two seeds; b: 10 and 12 J -> intervals [2, 4] and [10, 12]
    a = [_trials([0.96, 0.5], [2.0, 1.0]), _trials([0.5, 0.96], [2.0, 2.0])]
    b = [_trials([0.96], [10.0]), _trials([0.5, 0.96], [6.0, 6.0])]
    table, info = compare_table({"grid": b, "efficient": a}, target_accuracy=0.95)
    rows = table.set_index("strategy")
    assert info["target_accuracy"] == 0.95 and info["target_is_absolute"]
    assert rows.loc["efficient", "energy_to_target_ci95"] == "[2, 4]"
    line = next(d for d in info["differences"] if d.startswith("efficient vs grid, energy to target"))
    assert "0.27x" in line and "resolved (intervals do not overlap)" in line
    acc = next(d for d in info["differences"] if d.startswith("efficient vs grid, best accuracy"))
    assert "not resolved" in acc
    # a strategy that never reaches the target: NaN (a number), not the string "never"
    table, info = compare_table({"grid": b, "efficient": a}, target_accuracy=0.99)
    assert table["energy_to_target_j"].dtype.kind == "f" and table["energy_to_target_j"].isna().all()
    assert any("not comparable" in d for d in info["differences"])


def test_efficient_searcher_constraint_and_relative_target():
    import optuna

    from lightning_green.tune.searchers import constraint, energy_constrained_search, trial_constraints

    assert constraint(0.9, 0.95) == pytest.approx(0.05) and constraint(0.97, 0.95) < 0
    assert constraint(None, 0.5) == 1.0 and constraint(float("nan"), 0.5) == 1.0
    search = energy_constrained_search("val_acc", "energy_j", "tpe", 0, 2, None, 0.9)
    from ray import tune

    search.set_search_properties(None, None, {"lr": tune.uniform(0.0, 1.0)})
    for i, (acc, joules) in enumerate([(0.5, 1.0), (1.0, 5.0), (0.92, 2.0)]):
        search.suggest(f"t{i}")
        search.on_trial_complete(f"t{i}", {"val_acc": acc, "energy_j": joules})
    trials = search._ot_study.trials
    # target = 0.9 x the best accuracy so far, fixed when each trial completes
    assert [t.user_attrs["target"] for t in trials] == pytest.approx([0.45, 0.9, 0.9])
    assert [trial_constraints(t)[0] for t in trials] == pytest.approx([-0.05, -0.1, -0.02])
    assert [t.values[0] for t in trials] == [1.0, 5.0, 2.0]  # the objective is energy, minimised
    assert search._ot_study.direction == optuna.study.StudyDirection.MINIMIZE


def test_cost_aware_maths():
    import numpy as np

    from lightning_green.tune.cost_model import (
        attempt_cost,
        epochs_to_reach,
        features,
        fit_cost_model,
        pick,
        predict_log_cost,
    )

    params = [Param("optimizer.lr", "loguniform", 1e-4, 1e-1), Param("data.batch_size", "choice", values=(16, 64)),
              Param("trainer.max_epochs", "int", 1, 6)]  # fmt: skip
    f = features(params, {"optimizer.lr": 1e-2, "data.batch_size": 64, "trainer.max_epochs": 3})
    # the last one: log(epochs / batch size), the optimizer steps up to the dataset's size
    assert f.tolist() == pytest.approx([math.log(1e-2), 0.0, 1.0, 3.0, math.log(3 / 64)])
    # the cost model recovers a known log-linear law: log c = 2 + 0.5 x1 - 1 x2
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2))
    model = fit_cost_model(x, 2 + 0.5 * x[:, 0] - x[:, 1], ridge=1e-9)
    assert predict_log_cost(model, np.array([[1.0, 2.0]]))[0] == pytest.approx(2 + 0.5 - 2, abs=1e-6)
    # epochs to reach 0.9: the first epoch at it, else logit accuracy extrapolated in log epochs
    assert epochs_to_reach([0.5, 0.8, 0.91], 0.9) == 3.0
    # one epoch at 0.5: slope 2 per log epoch (logit 0 -> logit 0.9 = ln 9) -> exp(ln 9 / 2) = 3
    assert epochs_to_reach([0.5], 0.9) == pytest.approx(3.0)
    # 0.5 -> 0.8 (logit ln 4 at log 2): slope 2 again -> 2 x exp((ln 9 - ln 4) / 2) = 2 x 1.5 = 3
    assert epochs_to_reach([0.5, 0.8], 0.9) == pytest.approx(3.0)
    # a flat curve gets the least slope (0.3): out of any budget, capped
    assert epochs_to_reach([0.3, 0.3], 0.9, cap=100.0) == 100.0
    assert epochs_to_reach([], 0.9, cap=50.0) == 50.0  # a trial that never reported
    # just short of the target: at least half an epoch past the curve's end
    assert epochs_to_reach([0.85, 0.899], 0.9) == 2.5
    # an attempt: a success trains to the target, a failure until it is stopped
    cost = attempt_cost(np.array([2.0, 1.0]), np.array([0.5, 1.0]), np.array([3.0, 2.0]), 1.0)
    assert cost.tolist() == pytest.approx([2.0 * (0.5 * 3 + 0.5 * 1), 2.0])
    # Smith's rule: 0.5 chance for 1 J beats 0.9 chance for 3 J
    assert pick(np.array([0.9, 0.5]), np.array([3.0, 1.0])) == 1


def test_cost_aware_searcher_prefers_cheap_likely_configurations():
    from lightning_green.tune.cost_aware import CostAwareSearch

    params = [Param("model.width", "int", 1, 100)]
    s = CostAwareSearch(params, "val_acc", "energy_j", 0.9, 0.95, default_epochs=1, startup=4, seed=0)
    # width w costs w joules; every width reaches the target: the cheapest region should win
    for i, w in enumerate([5, 30, 60, 95]):
        s.live[f"t{i}"] = {"model.width": w}
        s.on_trial_complete(f"t{i}", {"val_acc": 0.95, "energy_j": float(w), "epochs": 1})
    picks = [s.propose()["model.width"] for _ in range(20)]
    assert sum(w <= 20 for w in picks) >= 15, picks
    assert s.target() == pytest.approx(0.95)  # reached: now look for improvements over the best
    assert s.suggest("t9") == {"model": {"width": s.live["t9"]["model.width"]}}
    fresh = CostAwareSearch(params, "val_acc", "energy_j", 0.9, 0.95, default_epochs=1, startup=0, seed=0)
    assert 1 <= fresh.propose()["model.width"] <= 100  # nothing seen yet, even with no start-up trials


def test_cost_aware_uses_model_flops_for_compact_features_and_a_cheap_start():
    import numpy as np

    from lightning_green.tune.cost_aware import CostAwareSearch, startup_points
    from lightning_green.tune.cost_model import (
        cost_features,
        log_step_budget,
        prior_log_costs,
        success_features,
    )

    params = [Param("optimizer.lr", "loguniform", 1e-4, 1e-1), Param("model.width", "int", 1, 8),
              Param("data.batch_size", "choice", values=(16, 256)),
              Param("trainer.precision", "choice", values=("32-true", "bf16-mixed"))]  # fmt: skip
    config = {"optimizer.lr": 1e-2, "model.width": 4, "data.batch_size": 16, "trainer.precision": "32-true"}
    flops = 1000.0 * 4
    # cost follows size and steps, not the learning rate: log FLOPs, log batch, precision one-hot
    assert cost_features(params, config, flops).tolist() == pytest.approx(
        [math.log(4000), math.log(16), 1, 0]
    )
    # success: size and steps, then what is outside the model (lr, precision); no width one-hots
    assert success_features(params, config, flops).tolist() == pytest.approx(
        [math.log(4000), math.log(16), math.log(1e-2), 1, 0]
    )
    # the prior cost: steps per epoch x (a fixed overhead + batch x FLOPs), the two equal at the
    # median candidate: here batch x FLOPs is 16e3, 64e3, 2.56e6; the median 64e3
    configs = [dict(config, **{"data.batch_size": b}) for b in (16, 64, 256)]
    assert prior_log_costs(params, configs, [1000.0, 1000.0, 10000.0]).tolist() == pytest.approx(
        [math.log((64e3 + 16e3) / 16), math.log((64e3 + 64e3) / 64), math.log((64e3 + 2.56e6) / 256)]
    )
    # searched epochs multiply it; the step budget is log(lr / batch), x epochs when searched
    with_epochs = [*params, Param("trainer.max_epochs", "int", 1, 6)]
    assert prior_log_costs(with_epochs, [dict(config, **{"trainer.max_epochs": 3})], [flops])[
        0
    ] == pytest.approx(math.log(2 * 64e3 / 16) + math.log(3))
    assert log_step_budget(params, config) == pytest.approx(math.log(1e-2 / 16))
    assert log_step_budget(with_epochs, dict(config, **{"trainer.max_epochs": 3})) == pytest.approx(
        math.log(1e-2 / 16 * 3)
    )
    assert math.isnan(log_step_budget(params[1:], config))  # no learning rate searched
    # start-up trials come from the cheapest quarter by that prior, and of those the upper half by
    # step budget (a cheap configuration at a low learning rate cannot get far in a few epochs)
    grow = {
        **{p.key: p for p in params},
        "data.batch_size": Param("data.batch_size", "choice", values=(16, 64, 256)),
    }
    params = list(grow.values())

    def flops_of(c: dict) -> float:
        return 1000.0 * 10 ** (c["model.width"] / 2)

    s = CostAwareSearch(params, "val_acc", "energy_j", 0.9, 0.95, default_epochs=1, startup=3, seed=0,
                        flops=flops_of)  # fmt: skip
    starts = [s.propose() for _ in range(40)]
    pool = [s.sample() for _ in range(4000)]
    prior = prior_log_costs(params, pool, [flops_of(c) for c in pool])
    cheap = prior <= np.quantile(prior, 0.25)
    steps = np.array([log_step_budget(params, c) for c in pool])
    start_prior = prior_log_costs(params, pool + starts, [flops_of(c) for c in pool + starts])[len(pool) :]
    assert max(start_prior) <= np.quantile(prior, 0.3)
    assert min(log_step_budget(params, c) for c in starts) >= np.quantile(steps[cheap], 0.45)
    # which leaves out the cheap configurations at the lowest learning rates, and no two alike
    assert np.quantile(steps[cheap], 0.45) > np.quantile(steps, 0.25)
    assert len({c["optimizer.lr"] for c in starts}) == 40
    # the same start-up, as points another searcher starts from (multi enqueues them in Optuna)
    points = startup_points(params, 3, 0, flops_of)
    again = CostAwareSearch(params, "val_acc", "energy_j", None, 1.0, default_epochs=1, startup=3, seed=0,
                            flops=flops_of)  # fmt: skip
    for i in range(3):
        again.suggest(f"t{i}")
    assert points == list(again.live.values())  # where the cost-aware searcher itself starts
    # the FLOPs function is rebuilt with the searcher, never pickled
    path = Path(tempfile.mkdtemp()) / "s.pkl"
    s.save(str(path))
    s.restore(str(path))
    assert s.flops is not None


def test_cost_aware_learns_from_learning_curves_not_only_final_accuracy():
    from lightning_green.tune.cost_aware import CostAwareSearch

    params = [
        Param("optimizer.lr", "loguniform", 1e-3, 1e-2),
        Param("data.batch_size", "choice", values=(16, 256)),
    ]
    s = CostAwareSearch(params, "val_acc", "energy_j", 0.9, 0.95, default_epochs=6, startup=4, seed=0)
    # batch 16 climbs fast (one run stopped after one epoch at 0.6 is on its way, not a failure),
    # batch 256 stays flat; batch 256 costs half as much per epoch
    runs = [(16, [0.6], 2.0), (256, [0.1, 0.12], 2.0), (16, [0.7, 0.93], 4.0), (256, [0.11, 0.1, 0.12], 3.0)]
    for i, (batch, curve, joules) in enumerate(runs):
        s.live[f"t{i}"] = {"optimizer.lr": 3e-3, "data.batch_size": batch}
        for epoch, acc in enumerate(curve, start=1):
            s.on_trial_result(f"t{i}", {"val_acc": acc, "training_iteration": epoch})
        s.on_trial_result(f"t{i}", {"val_acc": curve[-1], "final": True})  # the final report adds no epoch
        s.on_trial_complete(f"t{i}", {"val_acc": curve[-1], "energy_j": joules, "epochs": len(curve)})
    assert [d[4] for d in s.done] == [curve for _, curve, _ in runs]
    picks = [s.propose()["data.batch_size"] for _ in range(20)]
    assert picks.count(16) >= 18, picks


def test_start_up_trials_fill_the_space():
    from lightning_green.tune.cost_aware import CostAwareSearch

    lr = Param("optimizer.lr", "loguniform", 1e-4, 1e-2)
    batch = Param("data.batch_size", "choice", values=(16, 64, 256))
    assert lr.unit(1e-3) == pytest.approx(0.5) and batch.unit(256) == 1.0
    assert Param("model.conv_layers", "int", 1, 4).unit(2) == pytest.approx(1 / 3)
    s = CostAwareSearch([lr, batch], "val_acc", "energy_j", 0.9, 0.95, default_epochs=3, startup=3, seed=0)
    s.live["t0"] = {"optimizer.lr": 1e-4, "data.batch_size": 16}
    # the next start-up trial is the candidate farthest from the first: the other corner
    second = s.propose()
    assert lr.unit(second["optimizer.lr"]) > 0.8 and second["data.batch_size"] == 256
    s.live["t1"] = second
    third = s.propose()  # then one of the two corners left (distance 1 from both), not near either
    unit = lambda c: (lr.unit(c["optimizer.lr"]), batch.unit(c["data.batch_size"]))  # noqa: E731
    gaps = [math.dist(unit(third), unit(c)) for c in s.live.values()]
    assert min(gaps) > 0.9, (third, gaps)


def test_stop_at_target_stops_at_the_target_or_when_out_of_reach(tmp_path: Path):
    from lightning import Trainer

    from lightning_green import StopAtTarget
    from lightning_green.data import DigitsDataModule
    from lightning_green.models import LitClassifier, SimpleCNN

    class Scripted(LitClassifier):
        """The real classifier, its logged val_acc replaced by a scripted learning curve."""

        def __init__(self, curve: list[float]) -> None:
            super().__init__(SimpleCNN(conv_layers=1))
            self.curve = curve

        def on_validation_epoch_end(self) -> None:
            if not self.trainer.sanity_checking:
                self.log("val_acc", self.curve[self.current_epoch])

    def fit(curve: list[float]) -> tuple[int, str | None]:
        stop = StopAtTarget("val_acc", target=0.9)
        t = Trainer(max_epochs=6, callbacks=[stop], logger=False, enable_progress_bar=False, limit_train_batches=1,
                    limit_val_batches=1, enable_checkpointing=False, enable_model_summary=False)  # fmt: skip
        t.fit(Scripted(curve), datamodule=DigitsDataModule())
        return t.current_epoch, stop.stopped_by

    epochs, why = fit([0.5, 0.8, 0.91, 0.95, 0.96, 0.97])
    assert epochs == 3 and why.startswith("val_acc reached 0.91")
    # 0.30 -> 0.35: +0.05 a epoch, 4 epochs left: 0.55 at best -> stop
    epochs, why = fit([0.3, 0.35, 0.4, 0.45, 0.5, 0.55])
    assert epochs == 2 and "cannot reach 0.9 in the 4 epochs left" in why
    # a one-epoch plateau after a big gain does not stop a run that can still get there
    epochs, why = fit([0.5, 0.7, 0.7, 0.8, 0.92, 0.95])
    assert epochs == 5 and why.startswith("val_acc reached")


def test_expected_cost_grows_away_from_what_was_measured_and_reach_follows_a_trend():
    import numpy as np

    from lightning_green.tune.cost_model import expected_cost, reach_model

    # cost measured at log batch 4 and 5 (the same law): a batch never tried costs more in
    # expectation than its point prediction, and more the further it is
    x = np.array([[4.0], [5.0], [4.0], [5.0]])
    y = np.array([1.0, 0.5, 1.0, 0.5])  # log cost = 3 - 0.5 x
    near, far = expected_cost(x, y, np.array([[4.5], [1.0]]), ridge=1e-9)
    assert near == pytest.approx(math.exp(0.75), rel=0.3) and far > math.exp(2.5) * 1.5
    # by hand: with two identical points the residual is 0, s^2 = 2 x 0.25 / 4, leverage 1/2
    one = expected_cost(np.array([[0.0], [0.0]]), np.array([0.0, 0.0]), np.array([[0.0]]))
    assert one[0] == pytest.approx(math.exp(0.5 * (0.5 / 4) * 1.5))
    # epochs to the target grow with the batch size (fewer steps per epoch): 1 epoch at 16,
    # 2 at 32, 16 at 256 -> within 6 epochs likely at 24, not at 200, and a trend, not only
    # near the trials
    seen = np.log(np.array([[16.0], [32.0], [256.0], [128.0]] * 5))
    log_epochs = np.log(np.array([1.0, 2.0, 16.0, 8.0] * 5))
    new = np.log(np.array([[24.0], [200.0], [16.0]]))
    p, epochs = reach_model(seen, log_epochs, new, np.full(3, 6.0), ridge=1e-6)
    assert p[1] < 0.05 < 0.9 < p[0] <= p[2], p
    # expected epochs of a success: the law's 1.5 at batch 24 (2 once rounded), 1 at 16
    assert epochs[2] == pytest.approx(1.0, abs=0.05) and 1.0 <= epochs[0] <= 2.0
    # by hand: twenty trials at exactly e epochs -> s^2 = 1 / 21 (the pseudo-trial), a chance
    # Phi((log h - log e) / s) of h epochs sufficing
    p, _ = reach_model(np.zeros((20, 1)), np.full(20, math.log(3.0)), np.zeros((1, 1)), np.array([3.0]))
    assert p[0] == pytest.approx(0.5)


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("tune", overrides=list(overrides))
    cfg.output_dir = "/x"
    return cfg


def test_asha_settings_are_one_config_node_whatever_the_strategy():
    from lightning_green.tune.study import asha_scheduler

    for strategy in ("random", "efficient"):
        cfg = _compose(f"tune/strategy={strategy}", "tune.scheduler=asha")
        assert dict(cfg.tune.asha) == {"grace_period": 1, "reduction_factor": 3}
        assert "reduction_factor" not in cfg.tune.strategy  # one place: tune.asha
        params, _ = prepare(cfg)
        scheduler = asha_scheduler(cfg, params, {})
        assert scheduler._reduction_factor == 3 and scheduler._max_t == cfg.trainer.max_epochs + 1
    cfg = _compose("tune.scheduler=asha", "tune.asha.reduction_factor=4")
    assert asha_scheduler(cfg, prepare(cfg)[0], {})._reduction_factor == 4
    assert asha_scheduler(_compose(), [], {}) is None  # fifo: no ASHA
    with pytest.raises(ConfigError, match=r"tune\.asha\.reduction_factor must be an integer >= 2; got 1"):
        prepare(_compose("tune/strategy=efficient", "tune.asha.reduction_factor=1"))
    prepare(_compose("tune.asha.reduction_factor=1"))  # not checked where ASHA is not used
    with pytest.raises(
        ConfigError, match=r"^tune\.strategy\.reduction_factor moved: use tune\.asha\.reduction_factor=4$"
    ):
        prepare(_compose("tune/strategy=efficient", "+tune.strategy.reduction_factor=4"))


def test_the_efficient_strategy_adds_stop_at_target_from_its_config_node():
    cfg = _compose("tune/strategy=efficient", "tune/space=architecture", "tune.target_accuracy=0.8")
    params, base = prepare(cfg)
    assert base["callbacks"]["stop_at_target"] == {
        "_target_": "lightning_green.StopAtTarget", "monitor": "val_acc", "target": 0.8,
    }  # fmt: skip
    # epochs are the budget: not searched, every trial may train the range's top
    assert "trainer.max_epochs" not in {p.key for p in params}
    assert base["trainer"]["max_epochs"] == cfg.tune.space.params.trainer.max_epochs.high
    for off in (
        ["tune.target_accuracy=null"],
        ["tune.target_accuracy=0.8", "tune.strategy.stop_at_target=false"],
    ):
        _, base = prepare(_compose("tune/strategy=efficient", *off))
        assert "stop_at_target" not in base["callbacks"]
    # the node is the config's: its target may differ from tune.target_accuracy
    _, base = prepare(_compose("tune/strategy=efficient", "tune.target_accuracy=0.8",
                               "tune.strategy.stop_at_target_callback.target=0.7"))  # fmt: skip
    assert base["callbacks"]["stop_at_target"]["target"] == 0.7


def test_trials_csv_has_one_schema_for_its_writer_and_readers(tmp_path: Path):
    from types import SimpleNamespace

    from lightning_green.records import TRIALS_FILE
    from lightning_green.trials import COLUMNS, read_trials, write_trials
    from lightning_green.tune.results import add_attempts, add_overheads, add_trial_figures, trials_table

    # Ray's results as the results part reads them (no Ray): two trials, one failed
    grid = [
        SimpleNamespace(metrics={"trial_id": "00001", "val_acc": 0.9, "energy_j": 2.0, "total_j": 2.5,
                                 "epochs": 1, "training_iteration": 2, "final": True, "source": "cpu=estimated"},
                        config={"optimizer": {"lr": 0.01}}, error=None,
                        path=str(tmp_path / "train_trial_00001_1_lr=0.01")),
        SimpleNamespace(metrics={"trial_id": "00000", "training_iteration": 1}, config={"optimizer": {"lr": 0.1}},
                        error=RuntimeError("boom"), path=str(tmp_path / "train_trial_00000_0_lr=0.1")),
    ]  # fmt: skip
    df = trials_table(grid, "val_acc", "energy_j")
    assert list(df["trial_id"]) == ["00000", "00001"]  # creation order
    meta: dict = {}
    tune_cfg = _compose().tune
    add_trial_figures(meta, df, tune_cfg, experiment=tmp_path, attempts=tmp_path / "attempts", max_epochs=3)
    add_overheads(meta, df, tune_cfg, {"cpus": 2}, wall_s=10.0, started=0.0)
    assert meta["trials"] == 2 and meta["failed"] == 1 and meta["energy_used_j"] == pytest.approx(2.5)
    write_trials(df.iloc[:, ::-1], tmp_path)  # whatever order the writer holds them in
    header = (tmp_path / TRIALS_FILE).read_text().splitlines()[0].split(",")
    assert header == ["trial_id", "param.optimizer.lr", *(c.name for c in COLUMNS[1:])]
    back = read_trials(tmp_path)
    assert back["trial_id"].tolist() == ["00000", "00001"]  # ids of digits stay text
    assert back["status"].tolist() == ["ERROR", "TERMINATED"] and back["error"].iloc[0].startswith(
        "RuntimeError"
    )
    with pytest.raises(ValueError, match=r"\['surprise'\] are not in lightning_green.trials.COLUMNS"):
        write_trials(df.assign(surprise=1), tmp_path)
    write_trials(pd.DataFrame(), tmp_path)  # a study with no trial: the header alone
    assert read_trials(tmp_path).empty and list(read_trials(tmp_path).columns) == [c.name for c in COLUMNS]
    assert read_trials(tmp_path / "none").empty
    add_attempts(df, tmp_path, tmp_path)  # idempotent on a table that has its columns already
    assert df["energy_from"].tolist() == ["none", "final report"]


def test_a_study_labels_its_trials_exporters_and_exports_its_own_energy():
    from lightning_green.energy.reading import DomainEnergy, Reading
    from lightning_green.export import PushgatewayExporter
    from lightning_green.tune.exporting import label_exporters, study_exporters, study_labels
    from lightning_green.tune.study_energy import part_record

    gateway = {"_target_": "lightning_green.export.PushgatewayExporter", "gateway": "http://127.0.0.1:1"}
    cfg = _compose(
        "tune/strategy=bayes", "tune.name=rq2",
        f"callbacks.energy_monitor.exporters=[{{_target_:{gateway['_target_']},gateway:'{gateway['gateway']}',"
        "labels:{team:ml}}, {_target_:builtins.dict}]",
    )  # fmt: skip
    labels = study_labels(cfg.tune, 3)
    assert labels == {"study": "rq2", "strategy": "bayes", "seed": "3"}
    trial = OmegaConf.create(prepare(cfg)[1])  # the tree a trial starts from
    assert label_exporters(trial.callbacks, {**labels, "trial": "ab_00002"}) == 1  # dict takes no labels
    pushed, other = trial.callbacks.energy_monitor.exporters
    assert dict(pushed.labels) == {"team": "ml", **labels, "trial": "ab_00002"} and "labels" not in other
    study, plain = study_exporters(cfg, labels)  # on the driver: the same exporters, the study's labels
    assert plain == {}  # one that takes no labels is built as it is
    assert isinstance(study, PushgatewayExporter)
    assert study.grouping_key == {"instance": study._metrics.node, "team": "ml", **labels}
    cfg.callbacks.energy_monitor._enabled_ = False
    assert study_exporters(cfg, labels) == []
    # the study's part as one record: the driver's domains, then each node's, adding up to the part
    reading = Reading(0.0, 10.0, 10.0, (DomainEnergy("cpu", "process", 30.0, "estimated:cpu-time"),))
    nodes = [
        {"host": "w", "node_id": "aaaa1111x", "energy_j": 5.0, "complete": True,
         "domains": [{"domain": "cpu", "device": "process", "joules": 5.0, "source": "estimated:cpu-time"}]},
        {"host": "w", "node_id": "bbbb2222x", "energy_j": 7.0, "complete": True,
         "domains": [{"domain": "cpu", "device": "process", "joules": 7.0, "source": "estimated:cpu-time"}]},
    ]  # fmt: skip
    record = part_record(reading, nodes, "run1")
    assert record.stage == "study" and record.run_id == "run1" and record.energy_j == 42.0
    assert [d["device"] for d in record.domains] == ["process", "w:aaaa1111/process", "w:bbbb2222/process"]
    assert sum(d["joules"] for d in record.domains) == 42.0


# ---------------------------------------------------------------- the peers: asha, bohb, cfo


def test_an_unknown_strategy_is_one_line_listing_every_strategy():
    from lightning_green.tune.strategies import STRATEGIES

    assert STRATEGIES[-3:] == ("asha", "bohb", "cfo")
    with pytest.raises(ConfigError) as err:
        prepare(_compose("tune.strategy.name=hyperopt"))
    assert str(err.value) == (
        "tune.strategy.name must be one of grid, random, bayes, multi, efficient, asha, bohb, cfo; got 'hyperopt'"
    )
    # compare checks its list against the same names before anything runs
    from lightning_green.tune_cli import _check_compare

    compare = OmegaConf.create({"strategies": ["efficient", "asha", "bohb", "cfo"], "target_fraction": 0.95,
                                "seeds": [0], "reference_energy_j": None})  # fmt: skip
    _check_compare(compare)
    compare.strategies = ["efficient", "smac"]
    with pytest.raises(
        ConfigError,
        match=r"of grid, random, bayes, multi, efficient, asha, bohb, cfo; got \['efficient', 'smac'\]$",
    ):
        _check_compare(compare)


def test_cfo_without_flaml_is_one_line_with_the_install_hint_before_ray(monkeypatch: pytest.MonkeyPatch):
    import sys

    import ray

    monkeypatch.setitem(sys.modules, "flaml", None)  # `import flaml` raises ImportError
    with pytest.raises(ConfigError) as err:
        prepare(_compose("tune/strategy=cfo", "tune/space=architecture"))
    line = str(err.value)
    assert "\n" not in line and line.startswith(
        'tune.strategy=cfo needs FLAML: pip install "lightning-green[flaml]"'
    )
    assert not ray.is_initialized()
    prepare(_compose("tune/strategy=bohb"))  # the other strategies do not need it
    monkeypatch.delitem(sys.modules, "flaml")
    prepare(_compose("tune/strategy=cfo"))  # installed (the dev extra has it)


def test_peer_strategies_share_efficients_budget_epochs_and_asha():
    from lightning_green.tune.strategies import search_setup, uses_asha
    from lightning_green.tune.study import asha_scheduler, study_meta

    budget = ("tune/space=architecture", "tune.num_samples=7", "tune.max_concurrent=1")
    for name in ("efficient", "asha", "bohb", "cfo"):
        cfg = _compose(f"tune/strategy={name}", *budget)
        params, base = prepare(cfg)
        keys = {p.key for p in params}
        _, _, kw = search_setup(cfg.tune.strategy, params, cfg.tune, 3, base)
        assert kw["num_samples"] == 7  # the same trial budget
        scheduler = asha_scheduler(cfg, params, kw, seed=3)
        if name == "cfo":  # epochs searched from the cheap end (capped at the same top), no scheduler
            assert "trainer.max_epochs" in keys and scheduler is None and not uses_asha(cfg.tune)
            continue
        # epochs are the budget: not searched; each trial may train the range's top, ASHA stops it
        assert "trainer.max_epochs" not in keys and base["trainer"]["max_epochs"] == 6
        assert uses_asha(cfg.tune) and scheduler._max_t == 7 and scheduler._reduction_factor == 3
        meta = study_meta(cfg, params, 3, {})
        assert meta["scheduler"] == "asha" and meta["asha"]["grace_period"] == 1
        # bohb: HyperBand's brackets (first rung after 1 and after 3 epochs); the others: one
        assert len(scheduler._brackets) == meta["asha"]["brackets"] == (2 if name == "bohb" else 1)
        if name != "efficient":
            assert "stop_at_target" not in (base.get("callbacks") or {})  # efficient's own callback
    cfg = _compose("tune/strategy=bohb", "tune.strategy.brackets=1")
    assert len(asha_scheduler(cfg, prepare(cfg)[0], {"metric": "val_acc"})._brackets) == 1
    cfg = _compose("tune/strategy=asha", "tune/space=architecture", "tune.strategy.search_epochs=true")
    assert "trainer.max_epochs" in {p.key for p in prepare(cfg)[0]}


def test_hyperband_brackets_and_their_seeded_draw():
    from types import SimpleNamespace

    from lightning_green.tune.peers import SeededASHA, hyperband_brackets

    # floor(log_3(max_t / grace)) + 1
    assert [hyperband_brackets(t, 1, 3) for t in (1, 2, 3, 7, 9, 26, 27)] == [1, 1, 2, 2, 3, 3, 4]
    assert hyperband_brackets(8, 2, 2) == 3

    def draws(seed: int) -> list[int]:
        s = SeededASHA(metric="val_acc", mode="max", max_t=27, grace_period=1, reduction_factor=3,
                       brackets=4, seed=seed)  # fmt: skip
        for i in range(40):
            s.on_trial_add(None, SimpleNamespace(trial_id=str(i)))
        return [s._brackets.index(s._trial_info[str(i)]) for i in range(40)]

    assert draws(0) == draws(0) != draws(1)
    assert set(draws(0)) == {0, 1, 2, 3} and draws(0).count(0) > draws(0).count(3)  # softmax over rungs


def test_cfo_starts_at_the_spaces_cheap_end_and_is_seeded():
    from lightning_green.tune.peers import cfo_search, frugal_space, low_cost_config

    params = parse_space(OmegaConf.load(CONF_DIR / "tune" / "space" / "architecture.yaml").params)
    assert low_cost_config(params) == {
        "model.conv_layers": 1, "model.base_channels": 1, "model.hidden_units": 16, "data.batch_size": 256,
        "trainer.max_epochs": 1,
    }  # fmt: skip
    assert (
        low_cost_config(parse_space(OmegaConf.load(CONF_DIR / "tune" / "space" / "paper.yaml").params)) == {}
    )
    high = Param("optimizer.lr", "loguniform", 1e-3, 0.1, cheap="high")
    assert 0.1 - 1e-12 < high.cheapest() < 0.1 and Param("m.d", "int", 1, 4, cheap="high").cheapest() == 4
    beta2 = frugal_space([Param("optimizer.beta2", "uniform", 0.8, 1.0)])["optimizer"]["beta2"]
    assert beta2.upper < 1.0 and beta2.upper == pytest.approx(1.0)  # FLAML may round onto its upper bound

    def run(seed: int) -> list[dict]:
        search = cfo_search(params, "val_acc", "energy_j", seed)
        assert search.cost_attr == "energy_j"  # a trial's cost is its energy
        out = []
        for i in range(6):
            config = search.suggest(f"t{i}")
            if config is None:
                continue
            out.append(config)
            steps = config["trainer"]["max_epochs"] * 1440 / config["data"]["batch_size"]
            result = {"val_acc": min(0.99, 0.3 + 0.05 * steps**0.5), "energy_j": steps * 0.1}
            search.on_trial_complete(f"t{i}", result)  # Ray's results may not carry "config"
        return out

    first = run(0)
    assert first[0]["model"] == {"conv_layers": 1, "base_channels": 1, "hidden_units": 16}
    assert first[0]["data"] == {"batch_size": 256} and first[0]["trainer"]["max_epochs"] == 1
    assert len(first) >= 3 and run(0) == first and run(1) != first
    for config in first:  # Python values: a trial's config tree takes them
        assert type(config["optimizer"]["lr"]) is float and type(config["trainer"]["precision"]) is str
    # a trial that ended without an accuracy is an error to FLAML, not a crash of the study
    search = cfo_search(params, "val_acc", "energy_j", 0)
    search.suggest("a")
    search.on_trial_complete("a", {"energy_j": 1.0})
    search.on_trial_complete("b", None, error=True)  # never proposed: ignored
    assert search.suggest("c") is not None


def test_bohb_proposes_with_a_seeded_tpe():
    from lightning_green.tune.peers import bohb_search
    from lightning_green.tune.space import nested

    params = parse_space(OmegaConf.load(CONF_DIR / "tune" / "space" / "paper.yaml").params)
    space = nested({p.key: p.ray() for p in params})

    def run(seed: int) -> list[dict]:
        search = bohb_search("val_acc", seed, startup=2)
        search.set_search_properties(None, None, space)
        sampler = search._sampler
        assert type(sampler).__name__ == "TPESampler" and sampler._multivariate
        out = []
        for i in range(4):
            out.append(search.suggest(f"t{i}"))
            search.on_trial_complete(f"t{i}", {"val_acc": out[-1]["optimizer"]["beta1"]})
        return out

    assert run(0) == run(0) != run(1)


@pytest.mark.parametrize("stats, imported", [("0", False), ("1", True)])
def test_ray_tags_callbacks_only_where_usage_stats_are_sent(tmp_path: Path, stats: str, imported: bool):
    """Where Ray's usage stats are off, a study does not pay for Tune's callback tag (which imports
    every logger integration Ray knows, MLflow's among them); where they are on, Ray tags as usual."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from ray.air._internal import usage\n"
        "from ray.tune import Callback\n"
        "from lightning_green.tune.study import skip_unsent_callback_tags\n"
        "skip_unsent_callback_tags()\n"
        "usage.tag_callbacks([Callback()])\n"
        "print('mlflow' in sys.modules)\n"
    )
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": stats}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-1] == str(imported)
