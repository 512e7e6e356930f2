"""Ray beside Zeus, and the newest Ray without it.

Zeus requires amdsmi, whose import raises KeyError (not ImportError) without ROCm, in every
version from 5.7.0 to 7.0.2; Ray 2.56 and newer import amdsmi whenever it is installed (2.60 in
every raylet agent, so ``ray.init()`` dies). So Zeus is an extra (``lightning-green[zeus]``) that
pins Ray below 2.56, and the project itself runs the newest Ray. Both are started here, each in a
loopback-only network namespace.
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, run_in_loopback_netns

SCRIPT = textwrap.dedent(
    """
    import sys
    if sys.argv[1] == "zeus":
        import zeus
    import ray
    from lightning_green.energy import make_meter

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)

    @ray.remote
    def measure(with_zeus):
        if with_zeus:
            import zeus.monitor  # the import that breaks raylets beside Ray 2.60
        m = make_meter("auto", gpu_indices=[])
        m.start()
        sum(i * i for i in range(200_000))
        r = m.stop()
        return r.joules, r.sources, ray.util.get_node_ip_address()

    joules, sources, ip = ray.get(measure.remote(sys.argv[1] == "zeus"))
    ray.shutdown()
    print("RESULT", joules, sources["cpu"], ip, ray.__version__)
    """
)


def _pins() -> tuple[str, str]:
    """The core Ray requirement and the zeus extra's Ray requirement, from pyproject.toml."""
    text = (REPO / "pyproject.toml").read_text()  # (tomllib is 3.11+; the project supports 3.10)
    core = re.search(r'^\s+"(ray\[tune\][^"]*)",', text, re.M).group(1)
    extra = re.search(r'^zeus = \[.*"(ray\[tune\][^"]*)"', text, re.M).group(1)
    return core, extra


def _upper(requirement: str) -> tuple[int, int]:
    major, minor = re.search(r"<(\d+)\.(\d+)", requirement).groups()
    return int(major), int(minor)


def _run(python: str, mode: str, tmp_path: Path) -> tuple[float, str, str, str]:
    script = tmp_path / "ray_meter.py"
    script.write_text(SCRIPT)
    r = run_in_loopback_netns([python, str(script), mode], timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    joules, source, ip, version = r.stdout.split("RESULT")[1].split()
    return float(joules), source, ip, version


@pytest.mark.slow
def test_the_newest_supported_ray_starts_in_the_project_environment(tmp_path: Path):
    core, _ = _pins()
    joules, source, ip, version = _run(PYTHON, "core", tmp_path)
    major, minor = map(int, version.split(".")[:2])
    top = _upper(core)
    assert (major, minor) == (top[0], top[1] - 1), (
        f"the suite should run the top of {core!r}, got Ray {version}"
    )
    assert joules > 0 and source.startswith(("estimated:", "measured:")) and ip == "127.0.0.1"


@pytest.mark.slow
def test_ray_starts_beside_zeus_with_the_zeus_extra(tmp_path: Path):
    """An environment with the zeus extra: Zeus, amdsmi and the Ray the extra allows, layered over
    the project's environment (a venv whose .pth adds the project's site-packages after its own)."""
    _, extra = _pins()
    env = tmp_path / "zeus-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    py = env / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    # addsitedir, not a plain path: the project's own .pth files (its editable install) must run too
    Path(site, "project-env.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n"
    )
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--disable-pip-version-check"]
    # Ray alone first (its dependencies come from the project's environment), then Zeus and its own
    r = subprocess.run([*pip, "--no-deps", extra.replace("[tune]", "")], capture_output=True, text=True)
    if r.returncode != 0 and "No matching distribution" in r.stderr:
        pytest.skip(f"the package registry holds no {extra}")
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([*pip, "zeus>=0.11", extra], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    joules, source, ip, version = _run(str(py), "zeus", tmp_path)
    assert tuple(map(int, version.split(".")[:2])) < _upper(extra)
    assert joules > 0 and source.startswith(("estimated:", "measured:")) and ip == "127.0.0.1"
