"""Shared helpers: tiny real Trainers, fake hardware trees, and a loopback-only network namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def make_rapl_tree(
    root: Path, packages: dict[int, int], dram: dict[int, int] | None = None, max_uj: int = 1_000_000
) -> Path:
    """Write a fake /sys/class/powercap tree: package zones (and dram sub-zones) with given energy_uj."""
    for pkg, uj in packages.items():
        z = root / f"intel-rapl:{pkg}"
        z.mkdir(parents=True, exist_ok=True)
        (z / "name").write_text(f"package-{pkg}\n")
        (z / "energy_uj").write_text(f"{uj}\n")
        (z / "max_energy_range_uj").write_text(f"{max_uj}\n")
        core = root / f"intel-rapl:{pkg}:0"
        core.mkdir(exist_ok=True)
        (core / "name").write_text("core\n")
        (core / "energy_uj").write_text("5\n")
        (core / "max_energy_range_uj").write_text(f"{max_uj}\n")
    for pkg, uj in (dram or {}).items():
        d = root / f"intel-rapl:{pkg}:1"
        d.mkdir(exist_ok=True)
        (d / "name").write_text("dram\n")
        (d / "energy_uj").write_text(f"{uj}\n")
        (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return root


def set_uj(root: Path, zone: str, uj: int) -> None:
    (root / zone / "energy_uj").write_text(f"{uj}\n")


@pytest.fixture
def rapl_tree(tmp_path: Path) -> Path:
    return make_rapl_tree(tmp_path / "powercap", {0: 900_000, 1: 100}, dram={0: 10})


#: A private network namespace (only ``lo``, brought up by the command) and a private PID namespace:
#: ``ray stop --force`` kills every Ray process it can see, so run beside another test's Ray it
#: SIGKILLed that test's raylet (the "Raylet is terminated" failures of full runs); in a PID namespace
#: of its own it sees only its command's Ray, and whatever the command leaves running dies with it.
UNSHARE = ["unshare", "-n", "-p", "-f", "--mount-proc"]


def in_loopback_namespaces(args: list[str]) -> list[str]:
    """The command line that runs ``args`` inside ``UNSHARE``'s namespaces, with ``lo`` up."""
    return [*UNSHARE, "bash", "-c", 'ip link set lo up && exec "$@"', "loopback", *args]


def netns_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    r = subprocess.run([*UNSHARE, "true"], capture_output=True)
    return r.returncode == 0


def run_in_loopback_netns(
    args: list[str], timeout: float = 300, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run a command in a private network namespace with only loopback up, and a PID namespace.

    Ray then binds to 127.0.0.1 and no test traffic leaves this machine; ``ray stop`` in the
    command stops only the command's own Ray (see ``UNSHARE``). Ray's files go to a
    folder of the command's own (``RAY_TMPDIR``, short: Ray's socket paths are limited), so tests
    running at once on other workers share none; it is removed when the command succeeds and kept,
    with its path in ``stderr``, when it fails: Ray's own logs say why a session died.
    """
    if not netns_available():
        if os.environ.get("CI"):
            pytest.fail("CI needs `unshare -n -p` (root) to keep Ray on loopback and to itself")
        pytest.skip("needs `unshare -n -p` and `ip` (root) to keep Ray on loopback and to itself")
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    r = subprocess.run(
        in_loopback_namespaces(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "RAY_TMPDIR": ray_tmp, **(env or {})},
        cwd=cwd,
    )
    if r.returncode == 0:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    else:
        r.stderr += f"\n(Ray's session files are kept in {ray_tmp})\n"
    return r


PYTHON = sys.executable
