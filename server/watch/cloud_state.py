"""The cloud as an operator watches it: its run folders and its edges' liveness.

One source for the dashboard, /metrics and `unikd watch`: the run folders the ServerApp writes
(STATE_DIR/runs, status records: run_view.py) and the SuperLink's node state (its Control API on
loopback, addressed by STATE_DIR/cloud.json). Nothing here talks to the training engine.

An edge is *connected* while the SuperLink holds it online and its last heartbeat is at most
one heartbeat interval old; a node sends one every ~0.8 x (interval - 5 s) (Flower's
HeartbeatSender), so a silent interval means at least one beat lost. Otherwise it is *gone*: a
killed edge shows as gone one interval after its last heartbeat, and the SuperLink itself marks
it offline after two (HEARTBEAT_PATIENCE).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path

from server.watch.run_view import LIVE_STATES, RunView
from shared.errors import UnikdError

log = logging.getLogger(__name__)
NODE_CACHE_SECONDS = 0.5  # several viewers and scrapes share one Control API call
RUN_CHECK_SECONDS = 5.0  # how often a live run's status is asked of the SuperLink


def iso_seconds(text: str) -> float | None:
    """An ISO time text of the SuperLink as epoch seconds (None when empty or unreadable)."""
    try:
        return datetime.fromisoformat(text).timestamp() if text else None
    except ValueError:
        return None


def edge_liveness(node: dict, now: float) -> dict:
    """connected / gone and the last contact of one node of control_internals.node_states."""
    interval = node["heartbeat-interval"] or 30.0
    beat = node["online-until"] - node["patience"] * interval if node["online-until"] else None
    left = iso_seconds(node["last-deactivated-at"])
    online = str(node["status"]).lower() == "online"
    last = beat if online else max((x for x in (beat, left) if x is not None), default=None)
    connected = online and beat is not None and now - beat <= interval
    return {"connected": connected, "last_contact": last, "heartbeat_interval": interval,
            "superlink_status": node["status"]}


class CloudState:
    """The runs under `runs_root` and, when `state_dir` holds a cloud.json, its edges."""

    def __init__(self, runs_root: Path, state_dir: Path | None = None):
        self.runs_root, self.state_dir = Path(runs_root), state_dir
        self.views: dict[str, RunView] = {}
        self._cli = None
        self._nodes: tuple[float, list[dict] | None, str] = (0.0, None, "")
        self._run_checks: dict[str, float] = {}

    @classmethod
    def of_cloud(cls, state_dir: Path) -> CloudState:
        return cls(Path(state_dir) / "runs", Path(state_dir))

    # ------------------------------------------------------------------ runs
    def run_dirs(self) -> list[Path]:
        """Run folders, newest first (their names start with a timestamp): RUNS/NAME, or
        RUNS/submit-TOKEN/NAME where `unikd submit` had the ServerApp write it."""
        if not self.runs_root.is_dir():
            return []
        dirs = [c.parent for pattern in ("*/config.yaml", "*/*/config.yaml")
                for c in self.runs_root.glob(pattern)]
        return sorted(dirs, key=lambda p: p.name, reverse=True)

    def view(self, name: str, dirs: dict[str, Path] | None = None) -> RunView:
        """One run's view, refreshed; `latest` is the newest run. Unknown: a UnikdError.
        `dirs`: run_dirs() by name, when the caller has them already."""
        dirs = dirs if dirs is not None else {p.name: p for p in self.run_dirs()}
        if name == "latest":
            if not dirs:
                raise UnikdError(f"{self.runs_root}: no runs yet")
            name = max(dirs)
        if name not in dirs:
            raise UnikdError(f"{self.runs_root}: no run folder {name!r}")
        view = self.views.get(name) or self.views.setdefault(name, RunView(dirs[name]))
        if view.state in LIVE_STATES:  # an ended run writes nothing more
            view.refresh()
        self.check_with_superlink(view)
        return view

    def runs(self) -> list[dict]:
        """Every run: name, state, phase, round of total, MF1 so far, start."""
        out = []
        found = self.run_dirs()
        dirs = {p.name: p for p in found}
        for p in found:
            try:
                v = self.view(p.name, dirs)
            except UnikdError as err:  # a damaged status file: say so, list the others
                out.append({"name": p.name, "state": "unreadable", "error": str(err)})
                continue
            out.append({"name": v.name, "state": v.state, "phase": v.phase, "round": v.round,
                        "total": v.total, "started": v.started, "run_id": v.run_id,
                        "mf1": v.evals[-1]["mf1"] if v.evals else None})
        return out

    def check_with_superlink(self, view: RunView) -> None:
        """A run whose ServerApp died without its end record: the SuperLink knows it ended."""
        if view.state not in LIVE_STATES or not view.run_id or self.cli() is None:
            return
        now = time.monotonic()
        if now - self._run_checks.get(view.name, 0.0) < RUN_CHECK_SECONDS:
            return
        self._run_checks[view.name] = now
        try:
            status = self.cli().status(view.run_id)
        except UnikdError as err:
            log.debug("run %s: %s", view.run_id, err)
            return
        if status.startswith("finished") and view.state in LIVE_STATES:
            view.refresh()  # its end record may have landed meanwhile
            if view.state in LIVE_STATES:
                view.state = "completed" if status == "finished:completed" else "failed"
                view.error = view.error or f"the SuperLink says {status}"

    # ------------------------------------------------------------------ edges
    def cli(self):
        """The Control API on loopback, from cloud.json; None without a cloud."""
        if self._cli is None and self.state_dir is not None:
            info_file = Path(self.state_dir) / "cloud.json"
            if not info_file.is_file():
                return None
            from server.deploy.flwr_cli import FlwrCli

            info = json.loads(info_file.read_text())
            self._cli = FlwrCli(info["address"], Path(info["ca"]) if info.get("ca") else None,
                                Path(self.state_dir) / "watch-home")
        return self._cli

    def node_states(self) -> tuple[list[dict] | None, str]:
        """The SuperLink's nodes (None with the reason when it cannot be read)."""
        at, nodes, why = self._nodes
        if time.monotonic() - at < NODE_CACHE_SECONDS:
            return nodes, why
        cli = self.cli()
        if cli is None:
            nodes, why = None, "no cloud.json: not a cloud's state dir"
        else:
            try:
                nodes, why = cli.node_states(), ""
            except UnikdError as err:
                nodes, why = None, str(err)
        self._nodes = (time.monotonic(), nodes, why)
        return nodes, why

    def edges(self, run: RunView | None, now: float) -> tuple[list[dict], str]:
        """Per edge: name, liveness and last contact; with `run`, its client id, windows, last
        round latency and installed student version in that run."""
        nodes, why = self.node_states()
        out = []
        for n in nodes or []:
            edge = {"node_id": n["node-id"], "name": n["name"], **edge_liveness(n, now)}
            if run is not None:
                client = run.node_clients.get(n["node-id"])
                edge.update({"client": client,
                             "windows": run.windows.get(str(client)) if client is not None
                             else None,
                             "latency": run.latency.get(n["node-id"]),
                             "version": run.versions.get(str(client)) if client is not None
                             else None})
            out.append(edge)
        return out, why

    def snapshot(self, name: str = "latest") -> dict:
        """The page's data: the run (None before any), its edges, and the runs list."""
        now = time.time()
        try:
            view = self.view(name)
        except UnikdError as err:
            if name != "latest":
                raise
            view, _ = None, err
        edges, why = self.edges(view, now)
        return {"now": now, "run": view.snapshot(now) if view else None, "edges": edges,
                "edges_error": why, "runs": self.runs()}
