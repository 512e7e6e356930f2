"""The attribution maths of LayerEnergyProfiler, checked against hand-computed cases."""

from __future__ import annotations

import pytest

from lightning_green.callbacks.layer_profiler import attribution as attr


def test_optimizer_shares_follow_trainable_parameters():
    assert attr.optimizer_shares(0.6, {"a": 100, "b": 200, "c": 0}) == pytest.approx(
        {"a": 0.2, "b": 0.4, "c": 0.0}
    )
    assert attr.optimizer_shares(0.6, {"a": 0}) == {"a": 0.0}


def test_allocate_by_time_splits_the_step_and_scales_overlaps():
    # 10 J over 1 s; modules take 0.2 and 0.3 s: 2 and 3 J, 5 J left to unattributed
    assert attr.allocate_by_time(10.0, 1.0, {"a": 0.2, "b": 0.3}) == pytest.approx({"a": 2.0, "b": 3.0})
    # times past the step (overlap): scaled to their sum, nothing left
    assert attr.allocate_by_time(10.0, 1.0, {"a": 1.0, "b": 1.5}) == pytest.approx({"a": 4.0, "b": 6.0})


def test_allocate_by_power_weights_time_by_replayed_watts():
    # step: 10 J in 1 s (10 W average). a: 0.2 s at 20 W = 4 J; b: 0.3 s at 5 W = 1.5 J, plus its
    # optimizer share 0.1 s at the average 10 W = 1 J; c has no replay: 0.1 s at 10 W = 1 J.
    got = attr.allocate_by_power(
        10.0, 1.0, {"a": 0.2, "b": 0.3, "c": 0.1}, {"b": 0.1}, {"a": 20.0, "b": 5.0, "c": None}
    )
    assert got == pytest.approx({"a": 4.0, "b": 2.5, "c": 1.0})
    # modules past the step are scaled to it: a 0.5 s at 40 W = 20 J -> 10 J
    assert attr.allocate_by_power(10.0, 1.0, {"a": 0.5}, {}, {"a": 40.0}) == pytest.approx({"a": 10.0})


def test_replay_self_subtracts_the_calls_made_to_children():
    calls = {"block": 1.0, "attn": 1.0, "lin": 2.0}
    jpc = {"block": 10.0, "attn": 6.0, "lin": 1.5}
    kids = {"block": {"attn": 1.0, "lin": 2.0}, "attn": {}, "lin": {}}
    assert attr.replay_self(calls, jpc, kids) == pytest.approx({"block": 1.0, "attn": 6.0, "lin": 3.0})
    jpc["lin"] = None
    got = attr.replay_self(calls, jpc, kids)
    assert got["block"] is None and got["lin"] is None and got["attn"] == 6.0


def test_self_power_of_a_parent_and_its_fallbacks():
    # parent: 10 J in 1 s per call; one child call of 4 J in 0.8 s: own work 6 J in 0.2 s = 30 W
    assert attr.self_power(10.0, 1.0, [(1.0, 4.0, 0.8)]) == pytest.approx(30.0)
    # own time under 10% of the parent's: its inclusive power stands in
    assert attr.self_power(10.0, 1.0, [(1.0, 4.0, 0.95)]) == pytest.approx(10.0)
    assert attr.self_power(10.0, 1.0, [(1.0, None, 0.5)]) == pytest.approx(10.0)
    assert attr.self_power(None, 1.0, []) is None
    assert attr.self_power(3.0, 2.0, []) == pytest.approx(1.5)


def test_subtree_totals_add_children_and_propagate_missing():
    children = {"r": ["a", "b"], "a": ["a1"], "a1": [], "b": []}
    assert attr.subtree_totals({"r": 1.0, "a": 2.0, "a1": 3.0, "b": 4.0}, children) == {
        "r": 10.0, "a": 5.0, "a1": 3.0, "b": 4.0,
    }  # fmt: skip
    got = attr.subtree_totals({"r": 1.0, "a": 2.0, "a1": None, "b": 4.0}, children)
    assert got["r"] is None and got["a"] is None and got["b"] == 4.0


def test_ablation_prediction_from_two_profiles():
    from lightning_green.callbacks.layer_profiler.validation import predicted_drop, relative_error, under

    big = [
        {"name": "net", "joules_per_step": 0.5, "power_j": 0.4},
        {"name": "net.blocks.0", "joules_per_step": 1.0, "power_j": 1.0},
        {"name": "net.blocks.1", "joules_per_step": 1.0, "power_j": 1.2},
        {"name": "net.blocks.1.attn", "joules_per_step": 2.0, "power_j": 2.4},
        {"name": "net.head", "joules_per_step": 3.0, "power_j": 3.0},
        {"name": "unattributed", "joules_per_step": 9.0, "power_j": None},
    ]
    small = [
        {"name": "net", "joules_per_step": 0.3, "power_j": 0.2},
        {"name": "net.head", "joules_per_step": 2.9},
    ]
    removed = under("net.blocks.1")
    # block 1 with its attention: 3 J; the container's own work changes 0.5 -> 0.3 J
    assert predicted_drop(big, None, removed) == pytest.approx(3.0)
    assert predicted_drop(
        big, small, lambda n: removed(n) or n == "net", lambda n: n == "net"
    ) == pytest.approx(3.2)
    assert predicted_drop(big, None, removed, key="power_j") == pytest.approx(3.6)
    assert (
        predicted_drop(big, small, under("net"), under("net"), key="power_j") is None
    )  # small lacks head's power_j
    assert relative_error(3.6, 3.0) == pytest.approx(0.2) and relative_error(None, 3.0) is None


@pytest.mark.slow
def test_the_ablation_benchmark_runs_in_quick_mode(monkeypatch):
    """benchmarks/layer_ablation.py's core on tiny models: every mode predicts, errors are consistent."""
    import sys
    from pathlib import Path

    bench = Path(__file__).parent.parent / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))
    sys.modules.pop("layer_ablation", None)
    import layer_ablation

    out = layer_ablation.main(["--quick", "--threads", "1"])
    assert set(out["cases"]) == {"cnn", "transformer"}
    for case in out["cases"].values():
        assert case["measured_drop_j"] > 0 and case["profiler_step_j"] > 0
        for mode in ("allocate", "power", "replay"):
            m = case["modes"][mode]
            assert m["predicted_drop_j"] > 0
            assert m["error"] == pytest.approx(
                (m["predicted_drop_j"] - case["measured_drop_j"]) / case["measured_drop_j"]
            )
    assert out["best_mode"] in ("allocate", "power", "replay")
