"""One run as the dashboard, /metrics and `unikd watch` show it, folded from its status records.

A RunView reads its run folder's status.jsonl incrementally (server/fed/live_status.py): each
refresh costs only the lines written since the last one, so watching a long run stays cheap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from server.fed import live_status as ls

LIVE_STATES = ("starting", "running")


@dataclass
class RunView:
    """What a run's status records say so far."""

    run_dir: Path
    run_id: int = 0
    dataset: str = ""
    dp: str = "off"
    clients: int = 0
    state: str = "starting"  # starting, running, completed, failed
    error: str = ""
    started: float | None = None
    ended: float | None = None
    updated: float | None = None  # the last record's time
    phase: str = ""
    phase_started: float | None = None
    phase_first_round: int = 0  # rounds of the phase done when this view first saw it
    member: int | None = None
    members: int = 1
    round: int = 0
    total: int = 0
    exchanges: int = 0
    node_clients: dict[str, int] = field(default_factory=dict)  # node id -> client id
    windows: dict[str, int] = field(default_factory=dict)  # client id -> windows
    rounds: list[dict] = field(default_factory=list)  # UNI-KD rounds applied (not skipped)
    skipped: list[int] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)  # {round, reason}
    latency: dict[str, float] = field(default_factory=dict)  # node id -> last round's seconds
    epsilon: dict[str, float] = field(default_factory=dict)  # client id -> spent so far
    versions: dict[str, int] = field(default_factory=dict)  # client id -> installed version

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self._reader = ls.RecordReader(self.run_dir / ls.STATUS_FILE)

    @property
    def name(self) -> str:
        return self.run_dir.name

    def refresh(self) -> RunView:
        """Fold in the records written since the last refresh."""
        for t, record in self._reader.new_records():
            self.apply(t, record)
        return self

    def apply(self, t: float, record) -> None:
        self.updated = t
        if isinstance(record, ls.Start):
            self.run_id, self.clients = record.run_id, record.clients
            self.dataset, self.dp, self.state = record.dataset, record.dp, "running"
            self.started = self.started or t  # a resumed run keeps its first start
            self.ended, self.error = None, ""
        elif isinstance(record, ls.Phase):
            if record.phase == "evaluation" and self.phase == "unikd":
                return  # an evaluation inside the UNI-KD phase: the phase goes on
            self.phase, self.phase_started = record.phase, t
            self.member, self.members = record.member, record.members
            if record.total:  # a phase of rounds; delivery keeps showing the last round's count
                self.round, self.total, self.phase_first_round = 0, record.total, 0
        elif isinstance(record, ls.Nodes):
            self.node_clients, self.windows = dict(record.clients), dict(record.windows)
        elif isinstance(record, ls.Progress):
            self.note_round(record.round, record.total, record.exchanges)
        elif isinstance(record, ls.Round):
            self.apply_round(t, record)
        elif isinstance(record, ls.Eval):
            self.exchanges = max(self.exchanges, record.exchanges)
            if record.mf1 is not None:
                self.evals.append({"round": record.round, "mf1": record.mf1,
                                   "acc": record.acc, "per_client": record.per_client, "t": t})
        elif isinstance(record, ls.Delivered):
            self.versions = dict(record.versions)
        elif isinstance(record, ls.End):
            self.state, self.error, self.ended = record.state, record.error, t

    def note_round(self, rnd: int, total: int, exchanges: int) -> None:
        if self.round == 0 and self.phase_first_round == 0:
            self.phase_first_round = rnd - 1  # a resumed run starts mid-phase
        self.round, self.total, self.exchanges = rnd, total, max(self.exchanges, exchanges)

    def apply_round(self, t: float, record: ls.Round) -> None:
        self.note_round(record.round, record.total, record.exchanges)
        self.rejected += [{"round": record.round, "reason": r} for r in record.rejected]
        self.latency.update(record.latency)
        self.epsilon.update(record.epsilon)
        if record.skipped:
            self.skipped.append(record.round)
            return
        self.rounds.append({"round": record.round, "seconds": record.seconds,
                            "clients": record.clients, "bytes_up": record.bytes_up,
                            "bytes_down": record.bytes_down, "t": t})

    def eta(self, now: float) -> float | None:
        """Seconds left in the current phase at its rate so far (None: not known yet)."""
        done = self.round - self.phase_first_round
        if self.state not in LIVE_STATES or self.phase_started is None or done <= 0 \
                or not self.total:
            return None
        per_round = (now - self.phase_started) / done
        return max(0.0, per_round * (self.total - self.round))

    def snapshot(self, now: float | None = None) -> dict:
        """Everything the page and the terminal show, as plain JSON."""
        now = time.time() if now is None else now
        end = self.ended or now
        per_client: dict[str, list] = {}
        for i, e in enumerate(self.evals):
            for c, v in e["per_client"].items():
                per_client.setdefault(c, [None] * len(self.evals))[i] = v
        return {
            "name": self.name, "run_id": self.run_id, "state": self.state, "error": self.error,
            "dataset": self.dataset, "dp": self.dp, "clients": self.clients,
            "phase": self.phase, "member": self.member, "members": self.members,
            "round": self.round, "total": self.total, "exchanges": self.exchanges,
            "started": self.started, "updated": self.updated,
            "elapsed": None if self.started is None else end - self.started,
            "eta": self.eta(now),
            "rounds": {k: [r[k] for r in self.rounds]
                       for k in ("round", "seconds", "bytes_up", "bytes_down", "clients")},
            "skipped": self.skipped,
            "evals": {"round": [e["round"] for e in self.evals],
                      "mf1": [e["mf1"] for e in self.evals],
                      "acc": [e["acc"] for e in self.evals], "per_client": per_client},
            "rejected": self.rejected[-50:], "rejected_total": len(self.rejected),
            "epsilon": self.epsilon, "windows": self.windows, "node_clients": self.node_clients,
            "latency": self.latency, "versions": self.versions,
        }


def run_files(run_dir: Path) -> list[dict]:
    """The run folder's files (path relative to it, bytes), temporary files left out."""
    out = []
    for p in sorted(Path(run_dir).rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            out.append({"path": p.relative_to(run_dir).as_posix(), "bytes": p.stat().st_size})
    return out
