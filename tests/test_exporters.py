"""Energy on dashboards: the Prometheus endpoint scraped over HTTP during and after a real fit, a
Pushgateway and an OTLP/HTTP collector stood in for by loopback receivers, each checked against
the run's records; a dead endpoint costs one warning and no record."""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest
from helpers.fake_nvml import FakeNvml, gpu_uuid
from helpers.receivers import Points, Receiver, prometheus_samples
from hydra import compose, initialize_config_dir
from lightning import Callback, Trainer
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from lightning_green import EnergyMonitor
from lightning_green.config import CONF_DIR, build_callbacks
from lightning_green.data import DigitsDataModule
from lightning_green.energy.nvml import NvmlMeter
from lightning_green.export import OTLPExporter, PrometheusExporter, PushgatewayExporter
from lightning_green.models import LitClassifier, SimpleCNN
from lightning_green.records import WindowRecord, read_summary, read_windows

NODE = socket.gethostname()
GPU_W = 120.0
LABELS = {"study": "rq2", "trial": "3"}
DOMAIN_KEYS = {"run_id", "stage", "domain", "device", "uuid", "source", "node", *LABELS}


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch):
    """No OTEL_* settings or proxies of the machine's: every request goes to our loopback server."""
    for key in list(os.environ):
        if key.startswith("OTEL_") or key.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


# ---------------------------------------------------------------- a tiny real fit
def _trainer(monitor: EnergyMonitor, *callbacks: Callback, **kw: Any) -> Trainer:
    kw.setdefault("max_epochs", 2)
    return Trainer(
        callbacks=[monitor, *callbacks], logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, **kw,
    )  # fmt: skip


def _fit(monitor: EnergyMonitor, *callbacks: Callback, **kw: Any) -> Trainer:
    trainer = _trainer(monitor, *callbacks, **kw)
    trainer.fit(LitClassifier(SimpleCNN(conv_layers=1)), datamodule=DigitsDataModule())
    return trainer


def _powered_gpu(monkeypatch) -> NvmlMeter:
    """One fake GPU (NVML patched, our real reader) whose counter runs at GPU_W on the wall clock."""
    FakeNvml(monkeypatch, gpus=1)
    t0 = time.monotonic()
    monkeypatch.setattr(
        pynvml, "nvmlDeviceGetTotalEnergyConsumption", lambda h: (time.monotonic() - t0) * GPU_W * 1e3
    )
    return NvmlMeter([0], sync=False, sync_reads=True)


def _by_stage(records: list[WindowRecord], field: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for r in records:
        out[r.stage] += getattr(r, field)
    return dict(out)


def _sum_by_stage(samples: Points) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for labels, value in samples:
        out[labels["stage"]] += value
    return dict(out)


def _approx(expected: dict[str, float]) -> Any:
    return pytest.approx(expected, rel=1e-9, abs=1e-9)


# ---------------------------------------------------------------- Prometheus text
def _scrape(url: str, openmetrics: bool = False) -> str:
    accept = "application/openmetrics-text; version=1.0.0" if openmetrics else "text/plain"
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.read().decode()


def _samples(text: str) -> dict[str, Points]:
    return prometheus_samples(text)


def _check_prometheus(text: str, records: list[WindowRecord]) -> dict[str, Points]:
    """Every series equals what the records add up to, stage by stage; the labels are bounded."""
    got = _samples(text)
    energy = got["lightning_green_energy_joules_total"]
    assert _sum_by_stage(energy) == _approx(_by_stage(records, "energy_j"))
    assert _sum_by_stage(got["lightning_green_node_energy_joules_total"]) == _approx(
        _by_stage(records, "energy_j")
    )
    assert _sum_by_stage(got["lightning_green_co2e_grams_total"]) == _approx(_by_stage(records, "co2e_g"))
    assert _sum_by_stage(got["lightning_green_window_time_seconds_total"]) == _approx(
        _by_stage(records, "seconds")
    )
    windows = {s: float(n) for s, n in _count_by_stage(records).items()}
    assert _sum_by_stage(got["lightning_green_windows_total"]) == windows
    for labels, _ in energy:
        assert set(labels) == DOMAIN_KEYS  # never an epoch or a step
        assert labels["node"] == NODE and labels["study"] == "rq2" and labels["trial"] == "3"
    for labels, _ in got["lightning_green_co2e_grams_total"]:
        assert set(labels) == {"run_id", "stage", "node", *LABELS}
    return got


def _count_by_stage(records: list[WindowRecord]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for r in records:
        out[r.stage] += 1
    return dict(out)


class Scraper(Callback):
    """Scrapes the endpoint at the start of the second epoch and keeps the records as they were then."""

    def __init__(self, exporter: PrometheusExporter, out: Path) -> None:
        self.exporter, self.out = exporter, out
        self.text = ""
        self.records: list[WindowRecord] = []

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            self.text = _scrape(self.exporter.url)
            self.records = read_windows(self.out)


def test_prometheus_endpoint_scraped_during_and_after_a_fit_equals_the_records(tmp_path: Path, monkeypatch):
    exporter = PrometheusExporter(port=0, addr="127.0.0.1", labels=LABELS)
    monitor = EnergyMonitor(
        output_dir=tmp_path, meter=_powered_gpu(monkeypatch), idle_w={"gpu:0": 50.0}, exporters=[exporter]
    )
    scraper = Scraper(exporter, tmp_path)
    trainer = _fit(monitor, scraper)
    try:
        # During the fit: the sanity check, the first epoch and its validation, as recorded then.
        assert {r.stage for r in scraper.records} == {"sanity_check", "train", "validate"}
        _check_prometheus(scraper.text, scraper.records)

        # After it (the monitor has closed its meter; the endpoint still serves the last figures).
        records = read_windows(tmp_path)
        got = _check_prometheus(_scrape(exporter.url), records)
        assert _sum_by_stage(got["lightning_green_dynamic_energy_joules_total"]) == _approx(
            _by_stage(records, "dynamic_j")
        )
        [(labels, _)] = [e for e in got["lightning_green_energy_joules_total"] if e[0]["stage"] == "train"]
        assert labels == {
            "run_id": monitor.run_id, "stage": "train", "domain": "gpu", "device": "0",
            "uuid": gpu_uuid(0), "source": "measured:nvml", "node": NODE, **LABELS,
        }  # fmt: skip
        last_train = [r for r in records if r.stage == "train"][-1]
        power = {lab["stage"]: v for lab, v in got["lightning_green_power_watts"]}
        assert power["train"] == pytest.approx(last_train.energy_j / last_train.seconds, rel=1e-9)
        summary = read_summary(tmp_path)
        assert summary["forecast_fit_j"] is not None
        [(labels, forecast)] = got["lightning_green_forecast_joules"]
        assert forecast == pytest.approx(summary["forecast_fit_j"], rel=1e-9)
        assert labels == {"run_id": monitor.run_id, "node": NODE, **LABELS}
        assert [v for _, v in got["lightning_green_run_finished"]] == [1.0]

        # Units and types, as OpenMetrics states them.
        families = {f.name: f for f in parse_openmetrics(_scrape(exporter.url, openmetrics=True))}
        expected = {
            "lightning_green_energy_joules": ("counter", "joules"),
            "lightning_green_dynamic_energy_joules": ("counter", "joules"),
            "lightning_green_node_energy_joules": ("counter", "joules"),
            "lightning_green_power_watts": ("gauge", "watts"),
            "lightning_green_co2e_grams": ("counter", "grams"),
            "lightning_green_window_time_seconds": ("counter", "seconds"),
            "lightning_green_windows": ("counter", ""),
            "lightning_green_forecast_joules": ("gauge", "joules"),
            "lightning_green_run_finished": ("gauge", ""),
        }
        assert {n: (f.type, f.unit) for n, f in families.items()} == expected

        # A later stage adds its own series to the same endpoint.
        trainer.test(trainer.lightning_module, datamodule=DigitsDataModule(), verbose=False)
        records = read_windows(tmp_path)
        assert "test" in {r.stage for r in records}
        _check_prometheus(_scrape(exporter.url), records)
        url = exporter.url
    finally:
        exporter.shutdown()
    with pytest.raises(urllib.error.URLError):
        _scrape(url)  # shut down: the port is free again


# ---------------------------------------------------------------- loopback receivers
@pytest.fixture
def pushgateway() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def collector() -> Iterator[Receiver]:
    receiver = Receiver(ExportMetricsServiceResponse().SerializeToString(), "application/x-protobuf")
    yield receiver
    receiver.close()


@pytest.mark.parametrize("every_window", [False, True])
def test_pushgateway_receives_the_run_at_its_end(tmp_path: Path, pushgateway: Receiver, every_window: bool):
    exporter = PushgatewayExporter(pushgateway.url, labels=LABELS, push_every_window=every_window)
    monitor = EnergyMonitor(output_dir=tmp_path, backend="estimate", exporters=[exporter])
    _fit(monitor, limit_train_batches=6)
    records = read_windows(tmp_path)
    # Prometheus's advice for batch jobs: one push as the job ends (or one per window, asked for).
    assert len(pushgateway.requests) == (len(records) + 1 if every_window else 1)
    for request in pushgateway.requests:
        assert request.method == "PUT"
        assert request.path == f"/metrics/job/lightning-green/instance/{NODE}/study/rq2/trial/3"
    got = _check_prometheus(pushgateway.requests[-1].body.decode(), records)
    assert {lab["source"] for lab, _ in got["lightning_green_energy_joules_total"]} == {"estimated:cpu-time"}
    assert {lab["run_id"] for lab, _ in got["lightning_green_energy_joules_total"]} == {monitor.run_id}
    assert [v for _, v in got["lightning_green_run_finished"]] == [1.0]


class Crash(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 2:
            raise RuntimeError("node lost")


def test_a_crashed_run_is_pushed_as_unfinished_with_its_energy(tmp_path: Path, pushgateway: Receiver):
    monitor = EnergyMonitor(
        output_dir=tmp_path, backend="estimate", exporters=[PushgatewayExporter(pushgateway.url)]
    )
    with pytest.raises(RuntimeError, match="node lost"):
        _fit(monitor, Crash(), limit_train_batches=4, limit_val_batches=2)
    records = read_windows(tmp_path)
    assert records[-1].interrupted is not None  # the epoch cut short is recorded, and sent
    [push] = pushgateway.requests
    assert push.path == f"/metrics/job/lightning-green/instance/{NODE}"
    got = _samples(push.body.decode())
    assert _sum_by_stage(got["lightning_green_energy_joules_total"]) == _approx(
        _by_stage(records, "energy_j")
    )
    assert [v for _, v in got["lightning_green_run_finished"]] == [0.0]
    incomplete = [v for lab, v in got["lightning_green_windows_total"] if lab["complete"] == "false"]
    assert incomplete == [1.0]


def _points(request: ExportMetricsServiceRequest) -> dict[str, tuple[str, Points]]:
    """Each metric's unit and points (attributes, value) in one OTLP request."""
    out: dict[str, tuple[str, Points]] = {}
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                data = m.sum if m.HasField("sum") else m.gauge
                points = [
                    ({a.key: a.value.string_value for a in p.attributes}, p.as_double or float(p.as_int))
                    for p in data.data_points
                ]
                out[m.name] = (m.unit, points)
    return out


def test_otlp_collector_receives_the_run_with_its_resource(tmp_path: Path, collector: Receiver, monkeypatch):
    # Endpoint and headers from the standard variables, as a cluster's job script sets them.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20t0k3n")
    exporter = OTLPExporter(labels=LABELS, export_interval_s=3600)
    assert exporter.endpoint == f"{collector.url}/v1/metrics"
    monitor = EnergyMonitor(output_dir=tmp_path, backend="estimate", exporters=[exporter])
    try:
        _fit(monitor)
    finally:
        exporter.shutdown()
    records = read_windows(tmp_path)
    assert collector.requests, "nothing reached the collector"
    for request in collector.requests:
        assert request.method == "POST" and request.path == "/v1/metrics"
        assert request.headers["content-type"] == "application/x-protobuf"
        assert request.headers["authorization"] == "Bearer t0k3n"
    # Cumulative temporality: the last request holds the whole fit.
    sent = ExportMetricsServiceRequest.FromString(collector.requests[-1].body)
    [resource_metrics] = sent.resource_metrics
    resource = {a.key: a.value.string_value for a in resource_metrics.resource.attributes}
    assert resource["service.name"] == "lightning-green"
    assert resource["service.instance.id"] == monitor.run_id
    assert resource["host.name"] == NODE
    got = _points(sent)
    units = {name: unit for name, (unit, _) in got.items()}
    assert units == {
        "lightning_green.energy": "J",
        "lightning_green.dynamic_energy": "J",
        "lightning_green.node_energy": "J",
        "lightning_green.power": "W",
        "lightning_green.co2e": "g",
        "lightning_green.window.time": "s",
        "lightning_green.windows": "{window}",
        "lightning_green.forecast": "J",
        "lightning_green.run_finished": "",
    }
    energy = got["lightning_green.energy"][1]
    assert _sum_by_stage(energy) == _approx(_by_stage(records, "energy_j"))
    assert _sum_by_stage(got["lightning_green.co2e"][1]) == _approx(_by_stage(records, "co2e_g"))
    assert _sum_by_stage(got["lightning_green.window.time"][1]) == _approx(_by_stage(records, "seconds"))
    for attributes, _ in energy:
        assert set(attributes) == DOMAIN_KEYS - {"uuid"}  # no GPU here: no uuid
        assert attributes["run_id"] == monitor.run_id and attributes["trial"] == "3"
    [(_, forecast)] = got["lightning_green.forecast"][1]
    assert forecast == pytest.approx(read_summary(tmp_path)["forecast_fit_j"], rel=1e-9)
    assert [v for _, v in got["lightning_green.run_finished"][1]] == [1.0]


# ---------------------------------------------------------------- failing endpoints
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dead(kind: str, holder: list[socket.socket]) -> Any:
    if kind == "pushgateway":
        return PushgatewayExporter(f"http://127.0.0.1:{_closed_port()}", push_every_window=True, timeout_s=1)
    if kind == "otlp":
        return OTLPExporter(f"http://127.0.0.1:{_closed_port()}", timeout_s=0.5)
    taken = socket.socket()  # the endpoint's port is held by another program
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    holder.append(taken)
    return PrometheusExporter(port=taken.getsockname()[1], addr="127.0.0.1")


@pytest.mark.parametrize("kind", ["pushgateway", "otlp", "prometheus"])
def test_a_dead_endpoint_costs_one_warning_and_no_record(tmp_path: Path, kind: str):
    holder: list[socket.socket] = []
    exporter = _dead(kind, holder)
    monitor = EnergyMonitor(output_dir=tmp_path, backend="estimate", exporters=[exporter])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = _fit(monitor, limit_train_batches=4, limit_val_batches=2)
    finally:
        for s in holder:
            s.close()
        if not isinstance(exporter, PushgatewayExporter):  # it holds nothing open
            exporter.shutdown()
    assert trainer.state.finished and trainer.current_epoch == 2
    failures = [w for w in caught if "exporter" in str(w.message)]
    assert len(failures) == 1, [str(w.message) for w in failures]
    assert type(exporter).__name__ in str(failures[0].message)
    records = read_windows(tmp_path)
    summary = read_summary(tmp_path)
    assert summary["finished"] and summary["complete"]
    assert summary["windows"] == len(records) and summary["total_j"] == pytest.approx(
        sum(r.energy_j for r in records), rel=1e-12
    )


# ---------------------------------------------------------------- from the config tree and Python
def test_exporters_from_the_config_tree(tmp_path: Path):
    override = (
        "callbacks.energy_monitor.exporters=[{_target_:lightning_green.export.PrometheusExporter,"
        "port:0,addr:127.0.0.1,labels:{study:rq2,trial:3}}]"
    )
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        plain = compose("config")
        cfg = compose("config", overrides=[override])
    plain.output_dir = cfg.output_dir = str(tmp_path)
    assert plain.callbacks.energy_monitor.exporters == []
    [monitor] = [c for c in build_callbacks(cfg.callbacks) if isinstance(c, EnergyMonitor)]
    [exporter] = monitor.exporters
    assert isinstance(exporter, PrometheusExporter) and exporter.port is None  # serves from the first window
    try:
        _fit(monitor, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
        got = _samples(_scrape(exporter.url))
    finally:
        exporter.shutdown()
    [(labels, _)] = [e for e in got["lightning_green_energy_joules_total"] if e[0]["stage"] == "train"]
    assert labels["run_id"] == monitor.run_id and labels["study"] == "rq2" and labels["trial"] == "3"


def test_a_later_exporter_takes_the_port_of_a_closed_one():
    """Sequential jobs in one process (a Hydra multirun) each build an exporter on the same port."""
    port = _closed_port()
    record = WindowRecord(
        run_id="job1", stage="train", epoch=0, global_step=1, start_time=0.0, end_time=1.0, seconds=1.0,
        energy_j=5.0, domains=[{"domain": "cpu", "device": "process", "joules": 5.0,
                                "source": "estimated:cpu-time", "complete": True}],
        sources={"cpu": "estimated:cpu-time"}, complete=True,
    )  # fmt: skip
    first = PrometheusExporter(port=port, addr="127.0.0.1")
    second = PrometheusExporter(port=port, addr="127.0.0.1")
    try:
        first.export_window(record, ledger=None)
        with pytest.raises(OSError):
            second.start()  # the first job is still running
        first.close()
        assert "job1" in _scrape(first.url)  # still served after close()
        record.run_id = "job2"
        second.export_window(record, ledger=None)
        text = _scrape(second.url)
        assert 'run_id="job2"' in text and "job1" not in text
        assert first.port is None
    finally:
        first.shutdown()
        second.shutdown()


def test_bad_labels_and_a_missing_extra_fail_early(monkeypatch):
    with pytest.raises(ValueError, match="'stage' is set by the exporter"):
        PrometheusExporter(labels={"stage": "x"})
    with pytest.raises(ValueError, match="not a label name"):
        OTLPExporter(labels={"trial-id": "3"})
    with pytest.raises(ValueError, match="string or a number"):
        PushgatewayExporter("http://127.0.0.1:9", labels={"trial": [1, 2]})
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"lightning-green\[prometheus\]"):
        PrometheusExporter()
