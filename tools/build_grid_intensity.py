"""Build ``lightning_green/energy/data/grid_intensity.csv``, the offline carbon-intensity table.

Reads the data files that ship inside three packages' wheels (the newest each registry held on
2026-11-27) and writes one row per place, each with its value, year, scope, source and licence::

    pip download --no-deps codecarbon==3.3.2 carbontracker==2.4.7 eco2ai==0.3.12 -d /tmp/wheels
    for w in /tmp/wheels/*.whl; do unzip -oq "$w" -d /tmp/wheels/x; done
    python tools/build_grid_intensity.py /tmp/wheels/x

Sources (see ``lightning_green/energy/data/NOTICE.md`` for the attributions):

- countries: Our World in Data's "carbon intensity of electricity" (Ember and the Energy
  Institute's Statistical Review; CC BY 4.0), as shipped by carbontracker 2.4.7 (MIT), whose rows
  are the newest (2024 for 86 countries); a country it lacks comes from CodeCarbon 3.3.2's
  ``global_energy_mix.json`` (the same OWID series).
- US states: US EPA eGRID2023 (public domain), via CodeCarbon; Chinese provinces: MEE/NBS 2023
  factors (CO2 only), via CodeCarbon; Swedish and Norwegian bidding zones: ENTSO-E 2025 generation
  mixes, via CodeCarbon; Canadian provinces: CodeCarbon's 2023 provincial generation shares x its
  per-source lifecycle factors; Australian states: eco2ai 0.3.12 (Apache-2.0), which gives no year.
- GCP regions: Google's published grid intensities, via CodeCarbon's ``cloud/impact.csv``. AWS and
  Azure publish no per-region grid figure: their regions take the grid of the place they are in
  (location-based), named in each row.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "lightning_green" / "energy" / "data" / "grid_intensity.csv"
LB_PER_MWH_TO_G_PER_KWH = 0.45359237
OWID = "Our World in Data, carbon intensity of electricity (Ember; Energy Institute Statistical Review)"
CODECARBON = "CodeCarbon 3.3.2 (MIT)"

CANADA = {
    "alberta": "AB", "british columbia": "BC", "manitoba": "MB", "new brunswick": "NB",
    "newfoundland and labrador": "NL", "nova scotia": "NS", "northwest territories": "NT",
    "nunavut": "NU", "ontario": "ON", "prince edward island": "PE", "quebec": "QC",
    "saskatchewan": "SK", "yukon": "YT",
}  # fmt: skip
CANADA_SOURCES = {  # canada_energy_mix.json key -> carbon_intensity_per_source.json key
    "naturalGas": "natural_gas", "nuclear": "nuclear", "petroleum": "petroleum", "biomass": "biomass",
    "coal": "coal", "solar": "solar", "tidal": "hydroelectricity", "wind": "wind",
    "hydro": "hydroelectricity",
}  # fmt: skip
AUSTRALIA = {
    "New South Wales": "NSW", "Victoria": "VIC", "Queensland": "QLD", "South Australia": "SA",
    "Western Australia": "WA", "Tasmania": "TAS", "Northern Territory": "NT",
    "Australian Capital Territory": "ACT",
}  # fmt: skip
# Where each AWS / Azure region is (the providers' public region lists) -> a place of this table.
AWS = {
    "us-east-1": "US-VA", "us-east-2": "US-OH", "us-west-1": "US-CA", "us-west-2": "US-OR",
    "ca-central-1": "CA-QC", "ca-west-1": "CA-AB", "sa-east-1": "BR", "eu-west-1": "IE",
    "eu-west-2": "GB", "eu-west-3": "FR", "eu-central-1": "DE", "eu-central-2": "CH",
    "eu-north-1": "SE3", "eu-south-1": "IT", "eu-south-2": "ES", "ap-northeast-1": "JP",
    "ap-northeast-2": "KR", "ap-northeast-3": "JP", "ap-southeast-1": "SG",
    "ap-southeast-2": "AU-NSW", "ap-southeast-3": "ID", "ap-southeast-4": "AU-VIC",
    "ap-south-1": "IN", "ap-south-2": "IN", "ap-east-1": "HK", "me-south-1": "BH",
    "me-central-1": "AE", "af-south-1": "ZA", "il-central-1": "IL",
}  # fmt: skip
AZURE = {
    "eastus": "US-VA", "eastus2": "US-VA", "centralus": "US-IA", "northcentralus": "US-IL",
    "southcentralus": "US-TX", "westus": "US-CA", "westus2": "US-WA", "westus3": "US-AZ",
    "westcentralus": "US-WY", "canadacentral": "CA-ON", "canadaeast": "CA-QC", "brazilsouth": "BR",
    "northeurope": "IE", "westeurope": "NL", "uksouth": "GB", "ukwest": "GB", "francecentral": "FR",
    "germanywestcentral": "DE", "swedencentral": "SE3", "norwayeast": "NO1",
    "switzerlandnorth": "CH", "italynorth": "IT", "polandcentral": "PL", "spaincentral": "ES",
    "eastasia": "HK", "southeastasia": "SG", "japaneast": "JP", "japanwest": "JP",
    "koreacentral": "KR", "centralindia": "IN", "southindia": "IN", "australiaeast": "AU-NSW",
    "australiasoutheast": "AU-VIC", "uaenorth": "AE", "southafricanorth": "ZA",
    "qatarcentral": "QA", "israelcentral": "IL",
}  # fmt: skip
FIELDS = ["place", "aliases", "name", "kind", "g_per_kwh", "year", "scope", "source", "licence"]


def _row(place: str, name: str, kind: str, value: float, year: object, scope: str, source: str,
         licence: str, aliases: str = "") -> dict[str, str]:  # fmt: skip
    return {
        "place": place, "aliases": aliases, "name": name, "kind": kind, "g_per_kwh": f"{value:.1f}",
        "year": str(year or ""), "scope": scope, "source": source, "licence": licence,
    }  # fmt: skip


def countries(root: Path) -> list[dict[str, str]]:
    tracker = {
        r["Code"]: r
        for r in csv.DictReader((root / "carbontracker/data/carbon-intensities.csv").open(encoding="utf-8"))
    }
    mix = json.loads((root / "codecarbon/data/private_infra/global_energy_mix.json").read_text())
    rows = []
    for iso3 in sorted(set(tracker) | set(mix)):
        t, m = tracker.get(iso3), mix.get(iso3)
        if t is not None and (m is None or int(t["Year"]) >= int(m["year"])):
            value, year, name = (
                float(t["Carbon intensity of electricity (gCO2eq/kWh)"]),
                t["Year"],
                t["Entity"],
            )
            iso2, via = t["alpha-2"], "carbontracker 2.4.7 (MIT)"
        else:
            assert m is not None
            value, year, name = float(m["carbon_intensity"]), m["year"], m["country_name"]
            iso2, via = {"NAM": "NA"}.get(iso3, ""), CODECARBON
        if not iso2:
            print(f"skipped {iso3}: no ISO 3166 alpha-2 code", file=sys.stderr)
            continue
        rows.append(_row(iso2, name, "country", value, year, "lifecycle CO2e", f"{OWID}, via {via}",
                         "CC BY 4.0", aliases=iso3))  # fmt: skip
    return rows


def subnational(root: Path) -> list[dict[str, str]]:
    infra = root / "codecarbon/data/private_infra"
    rows = []
    usa = json.loads((infra / "2023/usa_emissions.json").read_text())
    src = usa["_source"]
    for name, entry in usa.items():
        if not name.startswith("_") and len(entry["regionCode"]) == 2:  # not eGRID's US total
            rows.append(_row(f"US-{entry['regionCode']}", name.title(), "region",
                             entry["emissions"] * LB_PER_MWH_TO_G_PER_KWH, src["year"], "CO2e, generation",
                             f"{src['name']}, via {CODECARBON}", "US public domain"))  # fmt: skip
    china = json.loads((infra / "2023/china_provincial_emissions.json").read_text())
    for code, entry in china["data"].items():
        rows.append(_row(code, entry["description"], "region", entry["emission_factor"], entry["year"],
                         "CO2 only, consumption", f"MEE/NBS China 2025 No. 47, via {CODECARBON}",
                         "official public data"))  # fmt: skip
    nordic = json.loads((infra / "nordic_emissions.json").read_text())
    for code, entry in nordic["data"].items():
        if code != "FI":  # Finland is a country row already
            rows.append(_row(code, entry["description"], "region", entry["emission_factor"], entry["year"],
                             "lifecycle CO2e, production mix",
                             f"ENTSO-E Transparency generation mix x lifecycle factors, via {CODECARBON}",
                             "ENTSO-E terms (reuse allowed with attribution)"))  # fmt: skip
    factors = json.loads((infra / "carbon_intensity_per_source.json").read_text())
    canada = json.loads((infra / "2023/canada_energy_mix.json").read_text())
    for name, shares in canada.items():
        weighted = sum(shares.get(k, 0.0) * factors[v] for k, v in CANADA_SOURCES.items())
        rows.append(_row(f"CA-{CANADA[name]}", name.title(), "region", weighted / shares["total"], 2023,
                         "lifecycle CO2e, production mix",
                         f"provincial generation shares x lifecycle factors, via {CODECARBON}", "MIT"))  # fmt: skip
    with (root / "eco2ai/data/carbon_index.csv").open(encoding="utf-8-sig") as f:
        for r in csv.DictReader(f):
            if r["country"] == "Australia" and r["region"] in AUSTRALIA:
                rows.append(_row(f"AU-{AUSTRALIA[r['region']]}", r["region"], "region",
                                 float(r["Emission intensity, kg/MWh"]), "", "CO2e",
                                 "eco2ai 0.3.12 carbon_index.csv (the file gives no year or primary source)",
                                 "Apache-2.0"))  # fmt: skip
    return rows


def cloud(root: Path, places: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    rows = []
    with (root / "codecarbon/data/cloud/impact.csv").open(encoding="utf-8-sig") as f:
        for r in csv.DictReader(f):
            rows.append(_row(f"{r['provider']}:{r['region']}", f"{r['city']}, {r['country_name']}", "cloud",
                             float(r["impact"]), "", "location-based grid intensity",
                             f"Google Cloud region carbon data ({r['source']}), via {CODECARBON}", "MIT"))  # fmt: skip
    for provider, regions in (("aws", AWS), ("azure", AZURE)):
        for region, where in regions.items():
            p = places[where]
            rows.append(_row(f"{provider}:{region}", f"{p['name']} grid", "cloud", float(p["g_per_kwh"]),
                             p["year"], p["scope"] + ", location-based",
                             f"grid of {where} ({p['source']})", p["licence"]))  # fmt: skip
    return rows


def main(root: Path) -> None:
    rows = [
        _row("WORLD", "World average", "world", 475.0, 2019, "CO2e",
             "IEA Global Energy & CO2 Status Report 2019 (CodeCarbon's world default)", "cited figure"),
        *countries(root),
        *subnational(root),
    ]  # fmt: skip
    places = {r["place"]: r for r in rows}
    rows += cloud(root, places)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
