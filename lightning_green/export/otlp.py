"""OpenTelemetry metrics of a run, sent over OTLP/HTTP to a collector or any OTLP backend.

Needs ``opentelemetry-sdk`` and ``opentelemetry-exporter-otlp-proto-http``
(``pip install lightning-green[otlp]``); no Lightning here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from lightning_green._checks import check_number
from lightning_green.export._figures import check_labels, default_node, domain_figures, run_labels

if TYPE_CHECKING:
    from lightning_green.ledger import EnergyLedger
    from lightning_green.records import EnergySummary, WindowRecord

#: Where metrics go when neither an argument nor an OTEL_EXPORTER_OTLP_* variable says (a local collector).
DEFAULT_ENDPOINT = "http://localhost:4318/v1/metrics"
#: Seconds an export may take before it is given up, unless OTEL_EXPORTER_OTLP_(METRICS_)TIMEOUT says.
DEFAULT_TIMEOUT_S = 5.0
SERVICE_NAME = "lightning-green"
_METRICS_PATH = "v1/metrics"


def _otel() -> dict[str, Any]:
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import MetricExportResult, PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
    except ImportError as err:
        raise ImportError(
            "the OpenTelemetry exporter needs opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http: "
            "pip install 'lightning-green[otlp]'"
        ) from err
    return {
        "OTLPMetricExporter": OTLPMetricExporter,
        "MeterProvider": MeterProvider,
        "MetricExportResult": MetricExportResult,
        "PeriodicExportingMetricReader": PeriodicExportingMetricReader,
        "Resource": Resource,
    }


def metrics_endpoint(endpoint: str | None = None) -> str:
    """The URL metrics are posted to, resolved as the OTLP exporter specification says.

    An explicit ``endpoint`` wins: a full URL is used as is, a bare ``http://host:4318`` gets
    ``/v1/metrics``. Else ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` (as is), else
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` plus ``/v1/metrics``, else ``http://localhost:4318/v1/metrics``.

    Example::

        >>> metrics_endpoint("http://collector:4318")
        'http://collector:4318/v1/metrics'
        >>> metrics_endpoint("https://otlp.example.com/otlp/v1/metrics")
        'https://otlp.example.com/otlp/v1/metrics'
    """
    if endpoint:
        return _with_path(endpoint) if urlsplit(endpoint).path in ("", "/") else endpoint
    signal = os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "").strip()
    if signal:
        return signal
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    return _with_path(base) if base else DEFAULT_ENDPOINT


def _with_path(base: str) -> str:
    return base.rstrip("/") + "/" + _METRICS_PATH


class OTLPExporter:
    """Sends the run's energy as OpenTelemetry metrics over OTLP/HTTP (protobuf).

    Pass it to ``EnergyMonitor(exporters=[...])``. Metrics go through the OpenTelemetry SDK's
    ``MeterProvider`` (a private one: the process's global provider is left alone) with the
    OTLP/HTTP exporter, every ``export_interval_s`` in the background and at once when a stage
    ends (fit, test), when the run crashes and at ``close()``, so a batch job's figures arrive
    before it exits. Instruments, in OpenTelemetry's naming style with UCUM units (in brackets,
    the name a Prometheus backend translates them to: the same as :class:`PrometheusExporter`'s,
    so one dashboard serves both):

    - ``lightning_green.energy`` (Counter, ``J``; ``lightning_green_energy_joules_total``):
      energy of closed windows, the job's part where a shared counter was split.
    - ``lightning_green.dynamic_energy`` (Counter, ``J``): energy above the idle baseline.
    - ``lightning_green.node_energy`` (Counter, ``J``): the devices' whole figure before a split.
    - ``lightning_green.power`` (Gauge, ``W``; ``lightning_green_power_watts``): average power of
      the stage's last closed window.
    - ``lightning_green.co2e`` (Counter, ``g``): CO2e of closed windows.
    - ``lightning_green.window.time`` (Counter, ``s``): time in closed windows.
    - ``lightning_green.windows`` (Counter, ``{window}``): closed windows, by ``complete``.
    - ``lightning_green.forecast`` (Gauge, ``J``): the fit's forecast energy, set when a stage ends.
    - ``lightning_green.run_finished`` (Gauge): 1 when the last stage ended normally, 0 after an error.

    Attributes of each point: ``run_id``, ``stage``, ``domain``, ``device``, ``uuid`` (a GPU's,
    where known), ``source``, ``node`` and the constant ``labels`` (a study's ``study`` and
    ``trial``); never epochs or steps. Resource: ``service.name`` (``lightning-green``, or
    ``$OTEL_SERVICE_NAME``), ``service.instance.id`` (the run id: a second fit with the same
    monitor is a new instance), ``host.name`` (the node), and ``$OTEL_RESOURCE_ATTRIBUTES``.

    Only global rank zero exports under DDP: it holds the merged records of every rank. A failed
    export at a stage's end raises (after at most ``timeout_s``); ``EnergyMonitor`` warns once
    and training goes on. Background exports never block training.

    Args:
        endpoint: The OTLP/HTTP metrics URL (``http://collector:4318`` gets ``/v1/metrics``).
            Default: ``$OTEL_EXPORTER_OTLP_METRICS_ENDPOINT``, else ``$OTEL_EXPORTER_OTLP_ENDPOINT``
            plus ``/v1/metrics``, else ``http://localhost:4318/v1/metrics``.
        headers: HTTP headers (an API key). Default: ``$OTEL_EXPORTER_OTLP_METRICS_HEADERS`` or
            ``$OTEL_EXPORTER_OTLP_HEADERS`` (``key=value,key2=value2``).
        labels: Constant attributes on every point, e.g. ``{"study": "rq1", "trial": "7"}``.
        node: The ``node`` attribute and ``host.name`` (default: this host's name).
        service_name: ``service.name`` (default ``$OTEL_SERVICE_NAME`` or ``lightning-green``).
        timeout_s: Seconds one export may take (default ``$OTEL_EXPORTER_OTLP_METRICS_TIMEOUT`` or
            ``$OTEL_EXPORTER_OTLP_TIMEOUT`` if set, else 5).
        export_interval_s: Seconds between background exports (default
            ``$OTEL_METRIC_EXPORT_INTERVAL`` in milliseconds, else 60).

    Raises:
        ImportError: Without the OpenTelemetry packages (``pip install 'lightning-green[otlp]'``).
        ValueError: On a bad label or a non-positive timeout or interval.

    Example::

        >>> exporter = OTLPExporter("http://collector.example:4318", labels={"study": "rq1"})
        >>> exporter.endpoint
        'http://collector.example:4318/v1/metrics'
    """

    def __init__(
        self,
        endpoint: str | None = None,
        headers: Mapping[str, str] | None = None,
        labels: Mapping[str, Any] | None = None,
        node: str | None = None,
        service_name: str | None = None,
        timeout_s: float | None = None,
        export_interval_s: float | None = None,
    ) -> None:
        self._otel = _otel()
        self.endpoint = metrics_endpoint(endpoint)
        self.headers = None if headers is None else {str(k): str(v) for k, v in headers.items()}
        self.constant = check_labels(labels)
        self.node = default_node() if node is None else str(node)
        self.service_name = service_name or os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME
        env_timeout = os.environ.get("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_TIMEOUT"
        )
        self.timeout_s = (
            check_number("timeout_s", timeout_s, above=0.0, unit="seconds")
            if timeout_s is not None
            else (None if env_timeout else DEFAULT_TIMEOUT_S)
        )
        self.export_interval_s = (
            None
            if export_interval_s is None
            else check_number("export_interval_s", export_interval_s, above=0.0, unit="seconds")
        )
        self._provider: Any = None
        self._instruments: dict[str, Any] = {}
        self._run_id: str | None = None
        self._dirty = False
        self._failed = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the SDK
    def _recording_exporter(self) -> Any:
        """The OTLP/HTTP exporter, noting whether its last export failed (the SDK's reader only logs it)."""
        base = self._otel["OTLPMetricExporter"]
        success = self._otel["MetricExportResult"].SUCCESS
        owner = self

        class _Recording(base):  # type: ignore[misc, valid-type]
            def export(self, metrics_data: Any, timeout_millis: float | None = 10_000, **kwargs: Any) -> Any:
                result = super().export(metrics_data, timeout_millis=timeout_millis, **kwargs)
                owner._failed = result is not success
                return result

        return _Recording(endpoint=self.endpoint, headers=self.headers, timeout=self.timeout_s)

    def _start(self, run_id: str) -> None:
        """A provider for ``run_id`` (its resource names the run); a new run id gets a new one."""
        if self._provider is not None and self._run_id == run_id:
            return
        self._stop()
        o = self._otel
        resource = o["Resource"].create(
            {"service.name": self.service_name, "service.instance.id": run_id, "host.name": self.node}
        )
        reader = o["PeriodicExportingMetricReader"](
            self._recording_exporter(),
            export_interval_millis=None if self.export_interval_s is None else self.export_interval_s * 1000,
        )
        self._provider = o["MeterProvider"](resource=resource, metric_readers=[reader])
        self._run_id = run_id
        meter = self._provider.get_meter("lightning_green")
        self._instruments = {
            "energy": meter.create_counter(
                "lightning_green.energy", unit="J", description="Energy of closed windows (the job's part)"
            ),
            "dynamic": meter.create_counter(
                "lightning_green.dynamic_energy", unit="J", description="Energy above the idle baseline"
            ),
            "node": meter.create_counter(
                "lightning_green.node_energy",
                unit="J",
                description="The devices' whole energy, before a shared counter was split among jobs",
            ),
            "power": meter.create_gauge(
                "lightning_green.power",
                unit="W",
                description="Average power of the stage's last closed window",
            ),
            "co2e": meter.create_counter(
                "lightning_green.co2e", unit="g", description="CO2e of closed windows"
            ),
            "time": meter.create_counter(
                "lightning_green.window.time", unit="s", description="Time in closed windows"
            ),
            "windows": meter.create_counter(
                "lightning_green.windows", unit="{window}", description="Closed windows, by completeness"
            ),
            "forecast": meter.create_gauge(
                "lightning_green.forecast", unit="J", description="The forecast of the fit's energy"
            ),
            "finished": meter.create_gauge(
                "lightning_green.run_finished", description="1: the last stage ended normally; 0: by an error"
            ),
        }

    def _stop(self) -> None:
        provider, self._provider = self._provider, None
        if provider is not None:
            provider.shutdown(timeout_millis=self._flush_ms())

    def _flush_ms(self) -> float:
        return ((self.timeout_s or DEFAULT_TIMEOUT_S) + 1.0) * 1000

    def flush(self) -> None:
        """Export everything now; ``ConnectionError`` if the endpoint did not accept it."""
        with self._lock:
            if self._provider is None:
                return
            self._failed = False
            self._provider.force_flush(timeout_millis=self._flush_ms())
            self._dirty = False
            if self._failed:
                raise ConnectionError(
                    f"OTLP export to {self.endpoint} failed (the opentelemetry log says why)"
                )

    # ------------------------------------------------------------------ the hook
    def export_window(self, record: WindowRecord, ledger: EnergyLedger | None) -> None:
        """Add a closed window to the instruments (exported in the background and at the stage's end)."""
        with self._lock:
            self._start(record.run_id)
            ins = self._instruments
            for f in domain_figures(record, self.node, self.constant):
                attributes = {k: v for k, v in f.labels.items() if v != ""}
                ins["energy"].add(f.joules, attributes)
                if f.dynamic_j is not None:
                    ins["dynamic"].add(f.dynamic_j, attributes)
                if f.node_j is not None:
                    ins["node"].add(f.node_j, attributes)
                if f.watts is not None:
                    ins["power"].set(f.watts, attributes)
            labels = run_labels(record, self.node, self.constant)
            if record.co2e_g is not None:
                ins["co2e"].add(record.co2e_g, labels)
            ins["time"].add(record.seconds, labels)
            ins["windows"].add(1, {**labels, "complete": str(record.complete).lower()})
            self._dirty = True

    def export_summary(self, summary: EnergySummary, finished: bool) -> None:
        """Set the forecast and whether the run finished, then export everything now."""
        with self._lock:
            self._start(summary.run_id)
            attributes = {"run_id": summary.run_id, "node": self.node, **self.constant}
            if summary.forecast_fit_j is not None:
                self._instruments["forecast"].set(summary.forecast_fit_j, attributes)
            self._instruments["finished"].set(1 if finished else 0, attributes)
        self.flush()

    def close(self) -> None:
        """Export what closed since the last export; the exporter stays usable (a later stage adds to it)."""
        if self._dirty:
            self.flush()

    def shutdown(self) -> None:
        """Export what is left and stop the background exports for good."""
        with self._lock:
            self._stop()

    def __enter__(self) -> OTLPExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
