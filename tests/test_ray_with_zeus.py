"""Ray and Zeus in one environment: Zeus pulls in amdsmi, whose import raises KeyError without
ROCm; Ray 2.60 imports it in every raylet agent and dies. Our Ray pin must start beside it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from conftest import PYTHON, run_in_loopback_netns

SCRIPT = textwrap.dedent(
    """
    import zeus, ray
    from lightning_green.energy import make_meter

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)

    @ray.remote
    def measure():
        import zeus.monitor  # the import that breaks raylets beside Ray 2.60
        m = make_meter("auto", gpu_indices=[])
        m.start()
        sum(i * i for i in range(200_000))
        r = m.stop()
        return r.joules, r.sources, ray.util.get_node_ip_address()

    joules, sources, ip = ray.get(measure.remote())
    ray.shutdown()
    print("RESULT", joules, sources["cpu"], ip, zeus.__version__, ray.__version__)
    """
)


@pytest.mark.slow
def test_ray_starts_beside_zeus_on_loopback(tmp_path: Path):
    script = tmp_path / "ray_zeus.py"
    script.write_text(SCRIPT)
    r = run_in_loopback_netns([PYTHON, str(script)], timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    joules, source, ip, *_ = r.stdout.split("RESULT")[1].split()
    assert float(joules) > 0 and source.startswith(("estimated:", "measured:"))
    assert ip == "127.0.0.1"
