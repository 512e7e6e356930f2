"""Prometheus metrics of a run: a pull endpoint for long jobs, a Pushgateway push for batch jobs.

Needs ``prometheus_client`` (``pip install lightning-green[prometheus]``); no Lightning here.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lightning_green._checks import check_bool, check_int, check_number
from lightning_green.export._figures import (
    DOMAIN_LABELS,
    RUN_LABELS,
    check_labels,
    default_node,
    domain_figures,
    run_labels,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from lightning_green.ledger import EnergyLedger
    from lightning_green.records import EnergySummary, WindowRecord

#: The default port of the pull endpoint (the one Prometheus's port list gives OpenTelemetry's
#: Prometheus exporter; pass another where it is taken).
DEFAULT_PORT = 9464
#: A push or a connection that takes longer than this many seconds is given up (training waits for it).
DEFAULT_TIMEOUT_S = 5.0


def _prometheus_client() -> Any:
    try:
        import prometheus_client
    except ImportError as err:
        raise ImportError(
            "the Prometheus exporters need prometheus_client: pip install 'lightning-green[prometheus]'"
        ) from err
    return prometheus_client


class _Metrics:
    """A run's figures in a private registry (never the process-wide one, which would mix runs)."""

    def __init__(self, labels: Mapping[str, Any] | None, node: str | None) -> None:
        pc = _prometheus_client()
        self.constant = check_labels(labels)
        self.node = default_node() if node is None else str(node)
        extra = tuple(self.constant)
        dom, run, top = (*DOMAIN_LABELS, *extra), (*RUN_LABELS, *extra), ("run_id", "node", *extra)
        self.registry: CollectorRegistry = pc.CollectorRegistry()
        r = self.registry
        self.energy = pc.Counter(
            "lightning_green_energy_joules",
            "Energy of closed windows, in joules (the job's part where a shared counter was split)",
            dom,
            unit="joules",
            registry=r,
        )
        self.dynamic = pc.Counter(
            "lightning_green_dynamic_energy_joules",
            "Energy above the devices' idle baseline, in joules (absent without a baseline)",
            dom,
            unit="joules",
            registry=r,
        )
        self.node_energy = pc.Counter(
            "lightning_green_node_energy_joules",
            "The devices' whole energy, in joules, before a shared counter was split among jobs",
            dom,
            unit="joules",
            registry=r,
        )
        self.power = pc.Gauge(
            "lightning_green_power_watts",
            "Average power of the last closed window of the stage, in watts",
            dom,
            unit="watts",
            registry=r,
        )
        self.co2e = pc.Counter(
            "lightning_green_co2e_grams",
            "CO2e of closed windows, in grams (each window at the grid intensity when it closed)",
            run,
            unit="grams",
            registry=r,
        )
        self.seconds = pc.Counter(
            "lightning_green_window_time_seconds",
            "Time in closed windows, in seconds",
            run,
            unit="seconds",
            registry=r,
        )
        self.windows = pc.Counter(
            "lightning_green_windows",
            "Closed windows; complete=false: a counter failed or the window was cut short",
            (*run, "complete"),
            registry=r,
        )
        self.forecast = pc.Gauge(
            "lightning_green_forecast_joules",
            "The forecast of the fit's energy, in joules, as of the last summary",
            top,
            unit="joules",
            registry=r,
        )
        self.finished = pc.Gauge(
            "lightning_green_run_finished",
            "1 when the run's last stage ended normally, 0 when it ended by an error or Ctrl-C",
            top,
            registry=r,
        )
        self._lock = threading.Lock()

    def add_window(self, record: WindowRecord) -> None:
        with self._lock:
            for f in domain_figures(record, self.node, self.constant):
                self.energy.labels(**f.labels).inc(f.joules)
                if f.dynamic_j is not None:
                    self.dynamic.labels(**f.labels).inc(f.dynamic_j)
                if f.node_j is not None:
                    self.node_energy.labels(**f.labels).inc(f.node_j)
                if f.watts is not None:
                    self.power.labels(**f.labels).set(f.watts)
            labels = run_labels(record, self.node, self.constant)
            if record.co2e_g is not None:
                self.co2e.labels(**labels).inc(record.co2e_g)
            self.seconds.labels(**labels).inc(record.seconds)
            self.windows.labels(**labels, complete=str(record.complete).lower()).inc()

    def set_forecast(self, run_id: str, joules: float) -> None:
        with self._lock:
            self.forecast.labels(run_id=run_id, node=self.node, **self.constant).set(joules)

    def add_summary(self, summary: EnergySummary, finished: bool) -> None:
        labels = {"run_id": summary.run_id, "node": self.node, **self.constant}
        with self._lock:
            if summary.forecast_fit_j is not None:
                self.forecast.labels(**labels).set(summary.forecast_fit_j)
            self.finished.labels(**labels).set(1.0 if finished else 0.0)


#: Which exporter of this process serves each (address, port): a later one takes a closed one's port
#: (sequential Hydra jobs in one process each build their own exporter on the same port).
_SERVING: dict[tuple[str, int], PrometheusExporter] = {}
_SERVING_LOCK = threading.Lock()


class PrometheusExporter:
    """A Prometheus pull endpoint (``GET /metrics``) with the run's energy, for long-running jobs.

    Pass it to ``EnergyMonitor(exporters=[...])``; Prometheus scrapes ``http://<node>:<port>/metrics``.
    Metrics (every figure of a closed window, labelled as below):

    - ``lightning_green_energy_joules_total`` (counter, J): energy of closed windows; the job's
      part where a shared counter was split. Summed over ``domain`` and ``device``, a stage's
      series is the sum of its records' ``energy_j``.
    - ``lightning_green_dynamic_energy_joules_total`` (counter, J): energy above the idle
      baseline (absent without one).
    - ``lightning_green_node_energy_joules_total`` (counter, J): the devices' whole figure,
      before a shared counter was split among jobs (equal to the energy where nothing was split).
    - ``lightning_green_power_watts`` (gauge, W): average power of the stage's last closed window.
    - ``lightning_green_co2e_grams_total`` (counter, g): CO2e, each window at the intensity in force.
    - ``lightning_green_window_time_seconds_total`` (counter, s): time in closed windows.
    - ``lightning_green_windows_total`` (counter): closed windows, ``complete="false"`` for one
      with a failed counter or cut short.
    - ``lightning_green_forecast_joules`` (gauge, J): the fit's forecast energy, set when a stage ends.
    - ``lightning_green_run_finished`` (gauge): 1 when the run's last stage ended normally, 0 after
      an error.

    Labels: ``run_id``, ``stage`` (``train``, ``validate``, ``test``, ...), ``domain`` (``gpu``,
    ``cpu``, ``dram``), ``device`` (as the records name it; ``rank1/0`` under DDP), ``uuid`` (a
    GPU's UUID where the meter named it), ``source`` (``measured:nvml``, ``estimated:cpu-time``),
    ``node`` (this host), and the constant ``labels`` (a study's ``study`` and ``trial``). Epochs
    and steps are not labels: a label's values must stay few. ``job`` and ``instance`` are
    Prometheus's own, from the scrape.

    The server starts with the first closed window (not in the constructor: under DDP every rank
    builds the callback, and only global rank zero exports: it holds the merged records of every
    rank, so one endpoint has the whole job). It keeps serving after the monitor's ``close()``, so
    the last figures can be scraped and a later stage (``trainer.test``) adds to the same series;
    :meth:`shutdown` stops it. A later exporter of this process on the same address and port (the
    next job of a sequential Hydra multirun) takes the port over from a closed one.

    A pull endpoint loses what happened after the last scrape when the process exits; for a job
    that ends, push at its end with :class:`PushgatewayExporter` (or use both).

    Args:
        port: TCP port of the endpoint (0: a free one, see :attr:`port`). Default 9464.
        addr: Address to bind. Default ``"0.0.0.0"``, every interface: Prometheus scrapes a
            cluster node from another machine. ``"127.0.0.1"`` serves this machine only.
        labels: Constant labels on every series, e.g. ``{"study": "rq1", "trial": "7"}``.
        node: The ``node`` label (default: this host's name).

    Raises:
        ImportError: Without ``prometheus_client`` (``pip install 'lightning-green[prometheus]'``).
        ValueError: On a port outside 0-65535 or a label that is not a Prometheus label name, or
            that the exporter sets itself.

    Example::

        >>> import urllib.request
        >>> from lightning_green.energy.reading import DomainEnergy, Reading
        >>> from lightning_green.records import WindowRecord
        >>> exporter = PrometheusExporter(port=0, addr="127.0.0.1", labels={"study": "demo"})
        >>> reading = Reading(0.0, 2.0, 2.0, (DomainEnergy("cpu", "process", 30.0, "estimated:cpu-time"),))
        >>> record = WindowRecord.from_reading(reading, run_id="abc", stage="train", epoch=0, global_step=5)
        >>> exporter.export_window(record, ledger=None)
        >>> text = urllib.request.urlopen(exporter.url, timeout=5).read().decode()
        >>> [line for line in text.splitlines() if line.startswith("lightning_green_power_watts")]
        ['lightning_green_power_watts{device="process",domain="cpu",node="...",run_id="abc",source="estimated:cpu-time",stage="train",study="demo",uuid=""} 15.0']
        >>> exporter.shutdown()
    """

    def __init__(
        self,
        port: int = DEFAULT_PORT,
        addr: str = "0.0.0.0",
        labels: Mapping[str, Any] | None = None,
        node: str | None = None,
    ) -> None:
        self._requested_port = check_int("port", port, 0)
        if self._requested_port > 65535:
            raise ValueError(f"port must be an integer from 0 to 65535, got {port!r}")
        self.addr = str(addr)
        self._metrics = _Metrics(labels, node)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def registry(self) -> CollectorRegistry:
        """This exporter's private registry (what the endpoint serves)."""
        return self._metrics.registry

    @property
    def port(self) -> int | None:
        """The port the endpoint listens on (``None`` until it has started)."""
        return None if self._server is None else int(self._server.server_port)

    @property
    def url(self) -> str | None:
        """``http://<addr>:<port>/metrics`` once the endpoint has started, else ``None``."""
        if self._server is None:
            return None
        host = "127.0.0.1" if self.addr in ("0.0.0.0", "") else self.addr
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> None:
        """Start serving now (the first closed window does it otherwise); ``OSError`` if the port is taken."""
        self._closed = False
        if self._server is not None:
            return
        pc = _prometheus_client()
        key = (self.addr, self._requested_port)
        with _SERVING_LOCK:
            holder = _SERVING.get(key) if self._requested_port else None
            if holder is not None and holder is not self and holder._closed:
                del _SERVING[key]
                holder._stop_server()
            self._server, self._thread = pc.start_http_server(
                self._requested_port, addr=self.addr, registry=self.registry
            )
            if self._requested_port:
                _SERVING[key] = self

    def export_window(self, record: WindowRecord, ledger: EnergyLedger | None) -> None:
        """Add a closed window to the series, then make sure the endpoint serves them."""
        self._metrics.add_window(record)
        if ledger is not None and ledger.forecast_fit_j is not None:
            self._metrics.set_forecast(record.run_id, ledger.forecast_fit_j)
        self.start()

    def export_summary(self, summary: EnergySummary, finished: bool) -> None:
        """Set the forecast and whether the run finished (the windows are in already)."""
        self._metrics.add_summary(summary, finished)

    def close(self) -> None:
        """The monitor is done for now: keep serving the last figures until :meth:`shutdown`, or
        until a later exporter of this process takes the port."""
        self._closed = True

    def shutdown(self) -> None:
        """Stop the endpoint and free its port."""
        self._closed = True
        with _SERVING_LOCK:
            for key, holder in list(_SERVING.items()):
                if holder is self:
                    del _SERVING[key]
        self._stop_server()

    def _stop_server(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=DEFAULT_TIMEOUT_S)

    def __enter__(self) -> PrometheusExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class PushgatewayExporter:
    """Pushes the run's metrics to a Prometheus Pushgateway, for batch jobs (a fit that ends).

    The same metrics and labels as :class:`PrometheusExporter`. Following Prometheus's advice for
    batch jobs, it pushes when a stage ends (fit, test) or the run crashes, and at ``close()`` if
    windows closed since; ``push_every_window=True`` also pushes after every closed window (a live
    view of a long job, at the cost of one HTTP request per window on the training thread).

    Each push replaces the group (``PUT /metrics/job/<job>/instance/<node>/...``): by default one
    group per node and constant labels, so the last run on a node (or each trial of a study, given
    ``labels={"study": ..., "trial": ...}``) stays on the gateway until the next replaces it; the
    gateway never forgets a group by itself. Pass ``grouping_key`` to group otherwise.

    Only global rank zero pushes under DDP: it holds the merged records of every rank. A push that
    fails (a dead gateway) raises after at most ``timeout_s``; ``EnergyMonitor`` warns once and
    training goes on.

    Args:
        gateway: The Pushgateway's address, e.g. ``"http://pushgateway:9091"``.
        job: The ``job`` label of the group. Default ``"lightning-green"``.
        grouping_key: The group's other labels. Default ``{"instance": node, **labels}``.
        push_every_window: Push after every closed window too.
        labels: Constant labels on every series, e.g. ``{"study": "rq1", "trial": "7"}``.
        node: The ``node`` label (default: this host's name).
        timeout_s: Seconds a push may take before it is given up. Default 5.

    Raises:
        ImportError: Without ``prometheus_client`` (``pip install 'lightning-green[prometheus]'``).
        ValueError: On a bad label name or a non-positive timeout.
    """

    def __init__(
        self,
        gateway: str,
        job: str = "lightning-green",
        grouping_key: Mapping[str, Any] | None = None,
        push_every_window: bool = False,
        labels: Mapping[str, Any] | None = None,
        node: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if not isinstance(gateway, str) or not gateway:
            raise ValueError(f"gateway must be the Pushgateway's address (http://host:9091), got {gateway!r}")
        self.gateway = gateway
        self.job = str(job)
        self.push_every_window = check_bool("push_every_window", push_every_window)
        self.timeout_s = check_number("timeout_s", timeout_s, above=0.0, unit="seconds")
        self._metrics = _Metrics(labels, node)
        if grouping_key is None:
            grouping_key = {"instance": self._metrics.node, **self._metrics.constant}
        self.grouping_key = {str(k): str(v) for k, v in grouping_key.items()}
        self._dirty = False

    @property
    def registry(self) -> CollectorRegistry:
        """This exporter's private registry (what each push sends)."""
        return self._metrics.registry

    def push(self) -> None:
        """Push every series now (replacing the group); raises if the gateway cannot be reached."""
        _prometheus_client().push_to_gateway(
            self.gateway,
            job=self.job,
            registry=self.registry,
            grouping_key=self.grouping_key,
            timeout=self.timeout_s,
        )
        self._dirty = False

    def export_window(self, record: WindowRecord, ledger: EnergyLedger | None) -> None:
        self._metrics.add_window(record)
        if ledger is not None and ledger.forecast_fit_j is not None:
            self._metrics.set_forecast(record.run_id, ledger.forecast_fit_j)
        self._dirty = True
        if self.push_every_window:
            self.push()

    def export_summary(self, summary: EnergySummary, finished: bool) -> None:
        self._metrics.add_summary(summary, finished)
        self.push()

    def close(self) -> None:
        if self._dirty:
            self.push()
