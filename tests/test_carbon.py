"""Carbon by place and time: the packaged table, live providers against a loopback HTTP server, and
CO2e as the sum over windows of each window's energy x the intensity in force."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import pytest
from helpers.grid_server import grid_server
from lightning import Trainer

from lightning_green import EnergyMonitor
from lightning_green.carbon import (
    JOULES_PER_KWH,
    CarbonModel,
    ElectricityMapsIntensity,
    IntensityProvider,
    UKCarbonIntensity,
    lookup,
    make_intensity,
)
from lightning_green.carbon.places import TABLE_PATH, table
from lightning_green.data import DigitsDataModule
from lightning_green.models import LitClassifier, SimpleCNN
from lightning_green.records import read_summary, read_windows

DATA = (Path(__file__).resolve().parents[1] / "lightning_green" / TABLE_PATH).parent


def test_every_row_of_the_table_names_its_source_year_scope_and_licence():
    with (DATA / "grid_intensity.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) > 400
    places = [r["place"] for r in rows]
    assert len(set(places)) == len(places)
    for r in rows:
        value = float(r["g_per_kwh"])
        assert math.isfinite(value) and 0 <= value < 1500, r
        assert r["source"] and r["licence"] and r["scope"] and r["name"], r
        # a blank year only where the source gives none, and the row says so
        assert r["year"] or "no year" in r["source"] or r["place"].startswith("gcp:"), r
    kinds = {r["kind"] for r in rows}
    assert kinds == {"world", "country", "region", "cloud"}
    assert "CC BY 4.0" in (DATA / "NOTICE.md").read_text()  # the attribution ships with the data


def test_places_resolve_by_code_alias_name_and_cloud_region():
    assert lookup("DE") == lookup("deu") == lookup("Germany")
    assert lookup("USA").place == "US" and lookup("FR").g_per_kwh < 100 < lookup("PL").g_per_kwh
    assert lookup("CA-QC").g_per_kwh < 100 < lookup("CA-AB").g_per_kwh  # hydro vs gas and coal
    assert lookup("US-CA").year == "2023" and "eGRID" in lookup("US-CA").source
    # AWS / Azure: location-based, the grid of the place the region is in, and the row says which
    assert lookup("aws:eu-west-3").g_per_kwh == lookup("FR").g_per_kwh
    assert "grid of FR" in lookup("aws:eu-west-3").source
    assert lookup("azure:westeurope").g_per_kwh == lookup("NL").g_per_kwh
    assert "Google" in lookup("gcp:europe-west4").source
    world = lookup("WORLD")
    assert world.g_per_kwh == 475.0 and "IEA" in world.source
    assert CarbonModel().current() == world  # the default is the labelled world average
    assert len({r["place"] for r in table().values() if r["kind"] == "cloud"}) >= 60


def test_uk_provider_national_and_regional_from_a_loopback_server():
    with grid_server([120.0]) as (server, url):
        national = UKCarbonIntensity(base_url=url)
        national.start()
        now = national.current()
        assert now.g_per_kwh == 120.0  # the half hour's actual figure, not its forecast (125)
        assert now.method == "live:uk-carbon-intensity" and now.place == "GB" and now.at is not None
        regional = UKCarbonIntensity(region=13, base_url=url)
        regional.start()
        assert regional.current().name == "London" and "forecast" in regional.current().source
        assert server.requests == ["/intensity", "/regional/regionid/13"]
    with pytest.raises(ValueError, match="region must be a GB region id 1-17"):
        UKCarbonIntensity(region=40)


def test_live_values_are_cached_and_refreshed_off_the_calling_thread():
    with grid_server([100.0, 300.0]) as (server, url):
        provider = UKCarbonIntensity(base_url=url, refresh_s=0.2)
        provider.start()
        for _ in range(50):
            assert provider.current().g_per_kwh == 100.0  # fresh: no request
        assert len(server.requests) == 1
        time.sleep(0.3)
        assert provider.current().g_per_kwh == 100.0  # stale: answered at once, refreshed behind
        provider.close()  # waits for the refresh thread
        assert provider.current().g_per_kwh == 300.0 and len(server.requests) == 2


def test_offline_or_failing_provider_falls_back_to_the_table_and_says_so():
    with grid_server([100.0]) as (server, url):
        server.broken = True
        provider = UKCarbonIntensity(base_url=url, timeout_s=2)
        with pytest.warns(UserWarning, match="live carbon intensity from uk-carbon-intensity unavailable"):
            provider.start()
        value = provider.current()
        assert value.g_per_kwh == lookup("GB").g_per_kwh and value.place == "GB"
        assert value.method == "table (live unavailable: HTTP 503 from " + url + "/intensity)"
        server.broken = False  # back: the next refresh is live again
        assert provider.refresh().method == "live:uk-carbon-intensity"
    # nothing listening at all (the server is gone): a clear fallback, within the timeout
    provider = UKCarbonIntensity(base_url=url, timeout_s=1, fallback="DE")
    t0 = time.monotonic()
    with pytest.warns(UserWarning, match="cannot reach"):
        provider.start()
    assert time.monotonic() - t0 < 2 and provider.current().place == "DE"


def test_electricity_maps_sends_its_key_and_needs_one(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("ELECTRICITYMAPS_API_KEY", raising=False)
    with grid_server([250.0], key="k1") as (server, url):
        provider = ElectricityMapsIntensity("DE", api_key="k1", base_url=f"{url}/v3")
        provider.start()
        assert provider.current().g_per_kwh == 250.0 and provider.current().place == "DE"
        wrong = ElectricityMapsIntensity("DE", api_key="nope", base_url=f"{url}/v3")
        with pytest.warns(UserWarning, match="HTTP 401"):
            wrong.start()
        assert wrong.current().g_per_kwh == lookup("DE").g_per_kwh
        keyless = ElectricityMapsIntensity("US-CAL-CISO", base_url=f"{url}/v3")  # not in the table
        with pytest.warns(UserWarning, match="no API key"):
            keyless.start()
        assert keyless.current().place == "WORLD" and len(server.requests) == 2  # keyless sent nothing
        monkeypatch.setenv("ELECTRICITYMAPS_API_KEY", "k1")
        from_env = make_intensity("DE", live="electricitymaps", live_url=f"{url}/v3")
        from_env.start()
        assert from_env.current().method == "live:electricitymaps"


def test_co2e_is_the_sum_over_windows_of_each_windows_intensity(tmp_path: Path):
    values = [100.0, 200.0, 400.0, 800.0]
    with grid_server(values) as (_, url):
        provider = UKCarbonIntensity(base_url=url, refresh_s=1e-6)
        monitor = EnergyMonitor(output_dir=tmp_path, carbon_intensity=provider, pue=1.2, baseline_s=0)
        trainer = Trainer(max_epochs=3, callbacks=[monitor], logger=False, enable_progress_bar=False,
                          enable_checkpointing=False, enable_model_summary=False, limit_train_batches=3,
                          limit_val_batches=2, num_sanity_val_steps=0)  # fmt: skip
        trainer.fit(LitClassifier(SimpleCNN(conv_layers=1)), datamodule=DigitsDataModule())
    windows = read_windows(tmp_path)
    used = {w.carbon["g_per_kwh"] for w in windows}
    assert len(used) >= 2 and used <= set(values)  # the intensity changed during the fit
    for w in windows:
        assert w.co2e_g == pytest.approx(w.energy_j / JOULES_PER_KWH * 1.2 * w.carbon["g_per_kwh"])
        assert w.carbon["method"] == "live:uk-carbon-intensity"
    summary = read_summary(tmp_path)
    assert summary["co2e_g"] == pytest.approx(sum(w.co2e_g for w in windows))
    # not the total x one factor: the effective intensity is the energy-weighted one
    effective = summary["carbon_intensity_g_per_kwh"]
    assert min(used) <= effective <= max(used)
    assert summary["co2e_g"] == pytest.approx(summary["total_kwh"] * 1.2 * effective)
    assert "embodied carbon" in summary["carbon"]["covers"]
    # The logged intensity is the one in force when it was logged: the newest the provider knew,
    # which a background refresh may have brought after the last window closed (the values rise).
    logged = float(trainer.callback_metrics["carbon/intensity_g_per_kwh"])
    assert logged in values and logged >= max(used)


def test_a_fixed_place_labels_every_record():
    monitor = EnergyMonitor(carbon_intensity="aws:eu-west-1", baseline_s=0)
    assert monitor.carbon.current().source.startswith("grid of IE")
    with pytest.deprecated_call():
        old = EnergyMonitor(carbon_intensity_g_per_kwh=56.0, baseline_s=0)
    assert old.carbon.current().g_per_kwh == 56.0 and old.carbon.current().method == "given"


def test_a_failing_provider_of_the_users_never_ends_training(tmp_path: Path):
    class Broken(IntensityProvider):
        def start(self) -> None:
            raise RuntimeError("no route")

        def current(self):
            raise RuntimeError("no route")

    monitor = EnergyMonitor(output_dir=tmp_path, carbon_intensity=Broken(), baseline_s=0)
    trainer = Trainer(max_epochs=1, callbacks=[monitor], logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, limit_train_batches=2,
                      limit_val_batches=1)  # fmt: skip
    with pytest.warns(UserWarning, match="carbon intensity provider failed"):
        trainer.fit(LitClassifier(SimpleCNN(conv_layers=1)), datamodule=DigitsDataModule())
    windows = read_windows(tmp_path)
    assert windows and all(w.carbon["method"].startswith("table (provider failed") for w in windows)
    assert read_summary(tmp_path)["co2e_g"] == pytest.approx(sum(w.co2e_g for w in windows))


def test_carbon_command_prints_places_and_says_when_none_matches(capsys: pytest.CaptureFixture[str]):
    from lightning_green.carbon_cli import main

    assert main(["DE", "aws:eu-west-1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("DE ") and f"{lookup('DE').g_per_kwh:6.1f} g/kWh" in out[0]
    assert out[1].startswith("aws:eu-west-1") and "grid of IE" in out[1]
    assert out[2].startswith("2 of ") and "NOTICE.md" in out[2]
    assert main(["germany"]) == 0 and capsys.readouterr().out.startswith("DE ")  # by name too
    assert (
        main([]) == 0
        and f"of {len({r['place'] for r in table().values()})} places" in capsys.readouterr().out
    )
    assert main(["atlantis"]) == 2
    assert "no place matches atlantis" in capsys.readouterr().err


def test_carbon_command_help_is_a_real_help_and_the_command_starts_fast():
    import subprocess
    import sys

    for flag in ("--help", "-h"):
        r = subprocess.run(
            [sys.executable, "-m", "lightning_green.carbon_cli", flag], capture_output=True, text=True
        )
        assert r.returncode == 0 and r.stdout.startswith("usage: lightning-green carbon [-h] [QUERY ...]"), r
        assert "energy.carbon_intensity" in r.stdout and "no place matches" not in r.stdout + r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "lightning_green.carbon_cli", "--bogus"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr
    # a lookup needs the table, not the training stack, nor the meters
    probe = (
        "import sys, lightning_green.carbon_cli; "
        "print(sorted({'torch', 'lightning', 'ray', 'hydra', 'lightning_green.energy'} & set(sys.modules)))"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_carbon_is_a_package_of_its_own_and_the_old_names_still_answer_with_a_warning():
    import warnings

    import lightning_green.carbon as carbon

    # lightning_green.energy exports meters, not carbon; the old name still answers, with a warning
    import lightning_green.energy as energy

    assert "CarbonModel" not in energy.__all__ and "lookup" not in dir(energy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert energy.CarbonModel is carbon.CarbonModel
    assert "import it from lightning_green.carbon" in str(caught[0].message)
    assert caught[0].category is DeprecationWarning
