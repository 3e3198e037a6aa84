"""The edge service's Prometheus metrics on the device's loopback (`unikd serve --metrics-port`).

Read at each scrape from the running service (a custom collector, prometheus_client): the
windows its store holds, the windows ingested and the predictions answered since it started
(counters: PromQL's rate() gives the ingest and predict rates), and the student in service with
its installed version. Bound to 127.0.0.1 only: a device's numbers stay on the device unless its
operator scrapes them through a tunnel or a local agent.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from client.edge_service.versions import version_of
from shared.errors import UnikdError

LOOPBACK = "127.0.0.1"
DEFAULT_METRICS_PORT = 9096  # `unikd serve --metrics-port`; 0: none


class ServiceCollector:
    """The service's counts at each collect(); `servicer` is the running EdgeServicer."""

    def __init__(self, servicer):
        self.servicer = servicer

    def collect(self):
        s = self.servicer
        stats = s.store.stats()
        stored = GaugeMetricFamily("unikd_edge_windows_stored", "windows the store holds")
        stored.add_metric([], stats.windows)
        yield stored
        ingested = CounterMetricFamily("unikd_edge_windows_ingested", "windows ingested since "
                                       "the service started")
        ingested.add_metric([], s.ingested)
        yield ingested
        predictions = CounterMetricFamily("unikd_edge_predictions", "windows predicted since "
                                          "the service started")
        predictions.add_metric([], s.predictions)
        yield predictions
        loaded = s.slot.current()
        version = GaugeMetricFamily("unikd_edge_model_version", "the installed student version "
                                    "in service (0: a file outside a model directory; absent: "
                                    "no model)")
        generation = GaugeMetricFamily("unikd_edge_model_generation", "models loaded since the "
                                       "service started (each hot swap adds one)")
        if loaded is not None:
            version.add_metric([], version_of(loaded.predictor.meta.path))
            generation.add_metric([], loaded.generation)
        yield version
        yield generation


def start_metrics(servicer, port: int):
    """Serve /metrics on 127.0.0.1:`port` in a thread; (server, thread). A taken port is an
    error naming it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(servicer))
    try:
        return start_http_server(port, addr=LOOPBACK, registry=registry)
    except OSError as err:
        raise UnikdError(f"--metrics-port {port}: cannot listen on {LOOPBACK}:{port} ({err}); "
                         f"give a free port, or 0 for no metrics") from None
