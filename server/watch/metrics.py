"""The cloud's Prometheus metrics, computed at each scrape from the same state as the dashboard.

A custom collector (prometheus_client) rather than counters the training engine bumps: the
ServerApp runs in its own process per run and only writes its status records, so the metrics
are those records, read when Prometheus asks. They describe the newest run (label `run`: its
folder name) and every registered edge (label `edge`: its registered name, else its node id).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from server.watch.cloud_state import CloudState
from shared.errors import UnikdError

ROUND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
PHASE_CODES = {"": 0, "count-query": 1, "teacher": 2, "unikd": 3, "evaluation": 4,
               "delivery": 5}


def round_histogram(seconds: list[float], run: str) -> HistogramMetricFamily:
    h = HistogramMetricFamily("unikd_round_seconds", "UNI-KD round wall time on the cloud",
                              labels=["run"])
    buckets = [(f"{b:g}", sum(1 for s in seconds if s <= b)) for b in ROUND_BUCKETS]
    h.add_metric([run], [*buckets, ("+Inf", len(seconds))], sum(seconds))
    return h


class CloudCollector:
    """Yields the metric families of the newest run and the edges at each collect()."""

    def __init__(self, state: CloudState):
        self.state = state

    def collect(self):
        now = time.time()
        try:
            view = self.state.view("latest")
        except UnikdError:
            view = None
        edges, _ = self.state.edges(view, now)
        yield from self.edge_metrics(edges, now)
        if view is None:
            return
        run = view.name

        def gauge(name: str, doc: str, value: float | None):
            g = GaugeMetricFamily(name, doc, labels=["run"])
            if value is not None:
                g.add_metric([run], float(value))
            return g

        def counter(name: str, doc: str, value: float):
            c = CounterMetricFamily(name, doc, labels=["run"])
            c.add_metric([run], float(value))
            return c

        yield gauge("unikd_run_live", "1 while the run goes on, 0 once it ended",
                    1 if view.state in ("starting", "running") else 0)
        yield gauge("unikd_phase", "the run's phase: 1 count query, 2 teacher, 3 UNI-KD, "
                    "4 evaluation, 5 delivery", PHASE_CODES.get(view.phase, 0))
        yield gauge("unikd_round", "rounds done in the current phase", view.round)
        yield gauge("unikd_rounds_planned", "rounds the current phase has", view.total)
        yield counter("unikd_exchanges", "message round trips so far", view.exchanges)
        last = view.evals[-1] if view.evals else {}
        yield gauge("unikd_mf1", "target macro F1 (%) at the last evaluation", last.get("mf1"))
        yield gauge("unikd_accuracy", "target accuracy (%) at the last evaluation",
                    last.get("acc"))
        yield round_histogram([r["seconds"] for r in view.rounds], run)
        yield counter("unikd_bytes_up", "bytes sent by the edges in applied UNI-KD rounds",
                      sum(r["bytes_up"] for r in view.rounds))
        yield counter("unikd_bytes_down", "bytes sent to the edges in applied UNI-KD rounds",
                      sum(r["bytes_down"] for r in view.rounds))
        yield counter("unikd_rejected_updates", "updates the cloud refused", len(view.rejected))
        eps = GaugeMetricFamily("unikd_epsilon", "DP epsilon each client has spent",
                                labels=["run", "client"])
        for client, value in sorted(view.epsilon.items()):
            eps.add_metric([run, client], value)
        yield eps

    @staticmethod
    def edge_metrics(edges: list[dict], now: float):
        connected = GaugeMetricFamily("unikd_edges_connected", "edges heard from within their "
                                      "heartbeat interval")
        connected.add_metric([], sum(1 for e in edges if e["connected"]))
        yield connected
        up = GaugeMetricFamily("unikd_edge_connected", "1: the edge is connected, 0: gone",
                               labels=["edge"])
        silent = GaugeMetricFamily("unikd_edge_silent_seconds", "seconds since the edge's "
                                   "last heartbeat", labels=["edge"])
        for e in edges:
            label = e["name"] or e["node_id"]
            up.add_metric([label], 1.0 if e["connected"] else 0.0)
            if e["last_contact"] is not None:
                silent.add_metric([label], max(0.0, now - e["last_contact"]))
        yield up
        yield silent


def metrics_text(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def cloud_registry(state: CloudState) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CloudCollector(state))
    return registry
