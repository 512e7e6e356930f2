"""Send a run's energy to metrics systems as it happens: Prometheus (pull or Pushgateway) and OpenTelemetry.

Each exporter follows :class:`lightning_green.ledger.Exporter`: ``EnergyMonitor(exporters=[...])``
drives it from Lightning, and anything else (a Ray study) can call it with the same records. No
Lightning, Hydra or Ray here; each client library is an optional extra, imported when an exporter
is built (``pip install 'lightning-green[prometheus]'`` or ``'lightning-green[otlp]'``).

Example::

    from lightning import Trainer
    from lightning_green import EnergyMonitor
    from lightning_green.export import PrometheusExporter

    trainer = Trainer(callbacks=[EnergyMonitor(exporters=[PrometheusExporter(port=9464)])])
"""

from lightning_green.export.otlp import OTLPExporter
from lightning_green.export.prometheus import PrometheusExporter, PushgatewayExporter

__all__ = ["OTLPExporter", "PrometheusExporter", "PushgatewayExporter"]
