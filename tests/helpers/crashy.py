"""A network that crashes on purpose, to test Ray Tune's retries (importable by Ray workers)."""

from __future__ import annotations

from pathlib import Path

from lightning_green.models import SimpleCNN


class CrashyCNN(SimpleCNN):
    """hidden_units=65: crashes on every attempt. Otherwise: crashes on a trial's first attempt only
    (a marker in the trial's working folder remembers the attempt)."""

    def __init__(self, **kwargs) -> None:
        marker = Path("crashed_once")
        if kwargs.get("hidden_units") == 65:
            raise RuntimeError("CrashyCNN: this configuration always crashes")
        if not marker.exists():
            marker.write_text("1")
            raise RuntimeError("CrashyCNN: first attempt crashes")
        super().__init__(**kwargs)
