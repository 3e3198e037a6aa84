"""The edge node's Prometheus metrics on the device's loopback (`unikd edge --metrics-port`).

Which process sees what, and how it reaches the one exporter:

- The join check runs in the `unikd edge` process itself (client/node/commands.py), before the
  SuperNode exists, and that process outlives everything it starts. So the exporter lives
  there: it answers while the edge still cannot join (the moment an operator most needs it)
  and keeps answering for the node's whole life. Join state is set in-process (`JoinState`).
- The ClientApp runs in a task process forked per message by the executor (or by its warm
  process), two process levels below. Each task, in our own code around Flower's runner
  (supernode_internals.run_clientapp_checked, never in the signed bundle), reports its outcome
  as one JSON line on the pipe the executor already reads for installs (`task_report`). The
  executor folds the lines into a `NodeTally` and rewrites a small status file after each task
  (`<edge home>/node-metrics.json`, atomic rename); the exporter reads it at each scrape.
  A file rather than a second pipe or shared memory: the SuperNode and the executor are in
  another session, started after the exporter, and a file needs no protocol between them;
  rewritten a few times per round, read only when scraped, so a round never waits on it.
- The privacy ledger (client/node/budget.py) and the model directory are files already: read
  at each scrape, so ε and the installed version are what the device actually holds.

Counters start at 0 with each `unikd edge` start (the status file is removed then), as
Prometheus counters do. Nothing here carries a secret: no key, path or address, only counts,
times, round numbers and enum codes.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from shared.errors import UnikdError

LOOPBACK = "127.0.0.1"
DEFAULT_NODE_METRICS_PORT = 9097  # `unikd edge --metrics-port`; 0: none (cloud 9095, serve 9096)
STATUS_FILE = "node-metrics.json"  # in the edge's home, written by the executor

# message type -> phase label (a small fixed set: wire.MESSAGE_TYPES, by prefix)
PHASES = {"query": "query", "train": "unikd", "train.teacher": "teacher",
          "evaluate": "evaluate", "train.deliver": "deliver"}
PHASE_NAMES = ("query", "teacher", "unikd", "evaluate", "deliver", "secagg", "other")
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# join state and cause: label-free enum gauges (HELP names each code); checks of join_check.py
JOIN_STATES = {"checking": 0, "joined": 1, "failing": 2, "stopped": 3}
JOIN_CAUSES = {"none": 0, "address": 1, "port": 2, "tls": 3, "node key": 4, "app key": 5}


def phase_of(message_type: str) -> str:
    if message_type in PHASES:
        return PHASES[message_type]
    return "secagg" if message_type.startswith("train.secagg") else "other"


def _codes(table: dict[str, int]) -> str:
    return ", ".join(f"{code} {name}" for name, code in table.items())


# ---------------------------------------------------------------- in the task process


def task_report(message_type: str, ok: bool, round_: int | None, received: float,
                seconds: float, bytes_down: int, bytes_up: int, windows: int | None,
                model_version: int | None) -> bytes:
    """One task's outcome as the line the executor reads (well under PIPE_BUF: one write)."""
    return (json.dumps({"task": {"type": message_type, "ok": ok, "round": round_,
                                 "received": received, "seconds": seconds, "down": bytes_down,
                                 "up": bytes_up, "windows": windows,
                                 "version": model_version}}) + "\n").encode()


# ---------------------------------------------------------------- in the executor


class NodeTally:
    """The executor's running counts of its tasks, written to `path` after each."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data: dict = {"started": time.time(), "ok": {}, "failed": {},
                           "bytes_down": {}, "bytes_up": {}, "last_round": None,
                           "last_message": None, "windows": None, "delivered_version": None,
                           "latency": {}}
        self.write()

    def add(self, task: dict) -> None:
        d, phase = self.data, phase_of(str(task["type"]))
        outcome = d["ok"] if task["ok"] else d["failed"]
        outcome[phase] = outcome.get(phase, 0) + 1
        for key, field in (("bytes_down", "down"), ("bytes_up", "up")):
            d[key][phase] = d[key].get(phase, 0) + int(task[field])
        d["last_message"] = max(d["last_message"] or 0.0, float(task["received"]))
        if task["round"] is not None and phase in ("teacher", "unikd", "evaluate"):
            d["last_round"] = int(task["round"])
        if task["ok"] and task["windows"] is not None and phase in ("teacher", "unikd"):
            d["windows"] = int(task["windows"])
        if task["ok"] and phase == "deliver" and task["version"] is not None:
            d["delivered_version"] = int(task["version"])
        if task["ok"]:
            h = d["latency"].setdefault(phase, {"buckets": [0] * len(LATENCY_BUCKETS),
                                                "count": 0, "sum": 0.0})
            seconds = float(task["seconds"])
            for i, bound in enumerate(LATENCY_BUCKETS):
                h["buckets"][i] += seconds <= bound
            h["count"] += 1
            h["sum"] += seconds
        self.write()

    def write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)  # the exporter reads the old file or the new one


# ---------------------------------------------------------------- in `unikd edge`


class JoinState:
    """The join checks' outcome so far, set by `unikd edge`'s wait loop (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state, self.cause = "checking", "none"
        self.attempts = self.failures = 0
        self.last_failure: float | None = None

    def checked(self, results) -> None:
        """One attempt's join_check results (the last one failed, or all passed)."""
        with self.lock:
            self.attempts += 1
            if results[-1].ok:
                self.state = "joined"
            else:
                self.state, self.failures = "failing", self.failures + 1
                self.cause = results[-1].check if results[-1].check in JOIN_CAUSES else "none"
                self.last_failure = time.time()

    def stopped(self) -> None:
        with self.lock:
            self.state = "stopped"


class NodeCollector:
    """The node's metrics at each collect(): join state, the executor's status file, the
    privacy ledger, the model directory, and whether the SuperNode process is running."""

    def __init__(self, join: JoinState, status_file: Path, ledger: Path | None = None,
                 max_epsilon: float = 0.0, delta: float = 1e-5, model_dir: Path | None = None,
                 supernode_alive=None):
        self.join, self.status_file = join, Path(status_file)
        self.ledger, self.max_epsilon, self.delta = ledger, max_epsilon, delta
        self.model_dir, self.supernode_alive = model_dir, supernode_alive

    def status(self) -> dict | None:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return None  # not started yet (or between a rename): the tallies are absent

    def collect(self):
        yield from self.join_metrics()
        up = GaugeMetricFamily("unikd_node_supernode_up", "1 while this device's SuperNode "
                               "process runs (after the join checks passed)")
        alive = self.supernode_alive() if self.supernode_alive is not None else False
        up.add_metric([], 1.0 if alive else 0.0)
        yield up
        status = self.status()
        if status is not None:
            yield from self.task_metrics(status)
        yield from self.budget_metrics()
        if self.model_dir is not None:
            from client.edge_service.versions import current_version

            version = GaugeMetricFamily("unikd_node_model_version", "the student version the "
                                        "device's model directory serves (0: none installed)")
            version.add_metric([], current_version(self.model_dir))
            yield version

    def join_metrics(self):
        j = self.join
        with j.lock:
            state, cause, attempts, failures, last = (j.state, j.cause, j.attempts, j.failures,
                                                      j.last_failure)
        g = GaugeMetricFamily("unikd_node_join_state", f"the join checks: {_codes(JOIN_STATES)}")
        g.add_metric([], JOIN_STATES[state])
        yield g
        g = GaugeMetricFamily("unikd_node_join_failure_cause", "the last failed join check's "
                              f"cause: {_codes(JOIN_CAUSES)}")
        g.add_metric([], JOIN_CAUSES[cause])
        yield g
        c = CounterMetricFamily("unikd_node_join_attempts", "join check attempts")
        c.add_metric([], attempts)
        yield c
        c = CounterMetricFamily("unikd_node_join_failures", "join check attempts that failed")
        c.add_metric([], failures)
        yield c
        if last is not None:
            g = GaugeMetricFamily("unikd_node_last_join_failure_timestamp_seconds",
                                  "when a join check last failed (Unix time)")
            g.add_metric([], last)
            yield g

    def task_metrics(self, s: dict):
        rounds = CounterMetricFamily("unikd_node_rounds", "messages this node answered, by "
                                     "phase (query, teacher, unikd, evaluate, deliver, secagg)",
                                     labels=["phase"])
        failed = CounterMetricFamily("unikd_node_failed_tasks", "messages answered with an "
                                     "error (a refused bundle, a refused budget, a crash)",
                                     labels=["phase"])
        for name in PHASE_NAMES:
            rounds.add_metric([name], s["ok"].get(name, 0))
            failed.add_metric([name], s["failed"].get(name, 0))
        yield rounds
        yield failed
        for key, what in (("bytes_down", "received from the cloud"),
                          ("bytes_up", "sent to the cloud")):
            c = CounterMetricFamily(f"unikd_node_{key}", f"message bytes {what} by phase "
                                    "(serialized records as they travel, packed)",
                                    labels=["phase"])
            for name in PHASE_NAMES:
                c.add_metric([name], s[key].get(name, 0))
            yield c
        for key, name, help_ in (
                ("last_round", "unikd_node_last_round", "the round number of the last "
                 "teacher, UNI-KD or evaluation message"),
                ("last_message", "unikd_node_last_message_timestamp_seconds", "when the cloud "
                 "last sent this node a message (Unix time)"),
                ("windows", "unikd_node_windows", "local windows the last training round used "
                 "(the released count under record DP)"),
                ("delivered_version", "unikd_node_delivered_version", "the student version "
                 "the last delivery installed (0: the node has no model directory)")):
            if s.get(key) is not None:
                g = GaugeMetricFamily(name, help_)
                g.add_metric([], s[key])
                yield g
        h = HistogramMetricFamily("unikd_node_round_seconds", "seconds from a message's arrival "
                                  "to its reply, by phase", labels=["phase"])
        for phase, v in sorted(s["latency"].items()):
            buckets = [(str(b), n) for b, n in zip(LATENCY_BUCKETS, v["buckets"])]
            h.add_metric([phase], buckets + [("+Inf", v["count"])], v["sum"])
        yield h

    def budget_metrics(self):
        if self.ledger is None or self.max_epsilon <= 0:
            return
        from client.node.budget import read_ledger
        from shared.privacy.accounting import epsilon_from_rdp

        budget = GaugeMetricFamily("unikd_node_dp_epsilon_budget", "the operator's privacy "
                                   "budget (unikd edge --max-epsilon)")
        budget.add_metric([], self.max_epsilon)
        yield budget
        try:
            data = read_ledger(self.ledger)
        except UnikdError:
            return  # a damaged ledger: the node refuses to train, its log says why
        eps = epsilon_from_rdp(tuple(data["rdp"]), self.delta) if data["entries"] else 0.0
        spent = GaugeMetricFamily("unikd_node_dp_epsilon_spent", "epsilon this device's ledger "
                                  "has spent, across runs, at the budget's delta")
        spent.add_metric([], eps if math.isfinite(eps) else float("inf"))
        yield spent
        charges = GaugeMetricFamily("unikd_node_dp_charges", "releases charged to the ledger "
                                    "(count queries and training rounds), across runs")
        charges.add_metric([], len(data["entries"]))
        yield charges
        steps = GaugeMetricFamily("unikd_node_dp_steps", "DP-SGD steps charged to the ledger, "
                                  "across runs")
        steps.add_metric([], sum(int(e.get("steps", 0)) for e in data["entries"]))
        yield steps


def check_port(port: int) -> int:
    if not 0 <= port <= 65535:
        raise UnikdError(f"--metrics-port {port}: give a port 1..65535, or 0 for no metrics")
    return port


def start_node_metrics(collector: NodeCollector, port: int):
    """Serve /metrics on 127.0.0.1:`port` in a thread; (server, thread). A taken port is an
    error naming it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        return start_http_server(port, addr=LOOPBACK, registry=registry)
    except OSError as err:
        raise UnikdError(f"--metrics-port {port}: cannot listen on {LOOPBACK}:{port} ({err}); "
                         f"give a free port, or 0 for no metrics") from None
