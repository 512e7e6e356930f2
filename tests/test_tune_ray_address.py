"""``tune.ray_address=null`` starts a fresh Ray on this machine: neither a cluster file left by a
killed ``ray start`` nor ``$RAY_ADDRESS`` makes it join another cluster; ``auto`` or ``host:port``
still join. Ray is not started: a stand-in records what ``ray.init`` is asked, and Ray's own address
resolution is checked for the meaning of ``address="local"`` the fix relies on."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from lightning_green.tune.study import init_ray


def stand_in_ray(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replace the ``ray`` module by one whose ``init`` records its arguments and the
    ``RAY_ADDRESS`` that the processes it would start inherit."""
    calls: list[dict[str, Any]] = []
    ray = types.ModuleType("ray")
    ray.is_initialized = lambda: False  # type: ignore[attr-defined]
    ray.init = lambda **kw: calls.append({**kw, "inherited RAY_ADDRESS": os.environ.get("RAY_ADDRESS")})  # type: ignore[attr-defined]
    ray.nodes = lambda: [{"Alive": True, "NodeID": "n1"}]  # type: ignore[attr-defined]
    ray.cluster_resources = lambda: {"CPU": 2.0}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray", ray)
    return calls


def tune_cfg(address: str | None) -> Any:
    return OmegaConf.create({"ray_address": address, "num_cpus": 2})


def test_null_address_starts_a_fresh_local_ray_whatever_the_environment_names(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    calls = stand_in_ray(monkeypatch)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert init_ray(tune_cfg(None))["address"] == "local"
    assert calls[-1]["address"] == "local" and calls[-1]["num_cpus"] == 2

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # a cluster the user did not ask for here
    init_ray(tune_cfg(None))
    assert calls[-1]["address"] == "local" and calls[-1]["inherited RAY_ADDRESS"] is None
    assert os.environ["RAY_ADDRESS"] == "127.0.0.1:1"  # the user's environment is given back
    assert "RAY_ADDRESS=127.0.0.1:1 is not joined (tune.ray_address=auto joins it)" in capsys.readouterr().err


@pytest.mark.parametrize("address", ["auto", "10.0.0.1:6379"])
def test_an_address_the_user_gives_is_joined(address: str, monkeypatch: pytest.MonkeyPatch):
    calls = stand_in_ray(monkeypatch)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")  # auto: Ray reads it, as the user asked
    init_ray(tune_cfg(address))
    assert calls[-1]["address"] == address and "num_cpus" not in calls[-1]
    assert calls[-1]["inherited RAY_ADDRESS"] == "10.0.0.2:6379"


def test_rays_local_address_ignores_a_stale_cluster_file_and_ray_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from ray._private import services

    (tmp_path / "ray_current_cluster").write_text("127.0.0.1:1\n")  # what a killed `ray start` leaves
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # no address (what null used to pass): Ray would join the dead cluster the file names (its
    # localhost resolved to this node's address)
    joined = services.canonicalize_bootstrap_address(None, str(tmp_path))
    assert joined is not None and joined.endswith(":1")
    # "local": a new instance (None: start one), whatever the file or the environment says
    assert services.canonicalize_bootstrap_address("local", str(tmp_path)) is None
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:2")
    assert services.canonicalize_bootstrap_address("local", str(tmp_path)) is None
